"""The batch-size study's command line: run a sweep config's grid, or report on it.

    python -m reasonclip_jax.sweep --config configs/sweeps/tiny.py:/tmp/scenes \
        --workdir /tmp/study \
        [--config.samples=... --config.base.input.shuffle_seed=...]
    python -m reasonclip_jax.sweep --report /tmp/study
    python -m reasonclip_jax.sweep --workdir gs://BUCKET/studies/NAME --config ...   (a bucket)
    reasonclip-sweep ...    (the same, once the package is installed)

Running the grid writes the report at the end too. Relaunching the same command skips
finished runs and resumes the interrupted one (`scaling/sweep.py`); `--report DIR` reads the
run directories alone (`scaling/report.py`).
"""

from __future__ import annotations

import logging
from typing import Any

from absl import flags
from ml_collections import config_flags

from reasonclip_jax.errors import UserError, exit_on_user_error
from reasonclip_jax.parallel import distributed
from reasonclip_jax.scaling import report, sweep
from reasonclip_jax.tools import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config file (configs/sweeps/).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the study: one subdirectory per run.")
_REPORT = flags.DEFINE_string("report", None, "Write the report of the study in this directory.")

log = logging.getLogger("reasonclip_jax.sweep")


@exit_on_user_error
def main(argv: Any) -> None:
    del argv
    if _REPORT.value:
        if _CONFIG.value is not None or _WORKDIR.value:
            raise UserError("--report DIR takes no --config or --workdir")
        for path in report.write_report(_REPORT.value).values():
            print(path)
        return
    if _CONFIG.value is None or not _WORKDIR.value:
        raise UserError("give --config configs/sweeps/FILE.py and --workdir DIR, or --report DIR")
    distributed.initialize(auto=_CONFIG.value.base.distributed)
    trained = sweep.run_sweep(_CONFIG.value, _WORKDIR.value)
    log.info("trained %d runs this launch", len(trained))
    import jax

    if jax.process_index() == 0:
        for path in report.write_report(_WORKDIR.value).values():
            print(path)


def run() -> None:
    """`python -m reasonclip_jax.sweep ...`, and the `reasonclip-sweep` command."""
    cli.run_absl_main(main)


if __name__ == "__main__":
    run()
