"""The trainer's command line: a config file plus overrides, and a workdir.

    python -m reasonclip_jax.train --config configs/demo.py:/tmp/scenes --workdir /tmp/demo \
        [--config.total_steps=200 --config.mesh.fsdp=2 ...] [--verbose]
    reasonclip-train ...    (the same, once the package is installed)

A mistyped `--config.KEY` stops at once with one line naming the closest key.
"""

from __future__ import annotations

from typing import Any

from absl import flags
from ml_collections import config_flags

from reasonclip_jax.errors import UserError, exit_on_user_error
from reasonclip_jax.tools import cli
from reasonclip_jax.train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")


@exit_on_user_error
def main(argv: Any) -> None:
    del argv
    if _CONFIG.value is None or not _WORKDIR.value:
        raise UserError("give --config configs/FILE.py and --workdir DIR")
    try:
        trainer.train(_CONFIG.value, _WORKDIR.value)
    except trainer.NonFiniteError as e:
        raise UserError(str(e)) from None


def run() -> None:
    """`python -m reasonclip_jax.train ...`, and the `reasonclip-train` command."""
    cli.run_absl_main(main)


if __name__ == "__main__":
    run()
