"""Running a batch-size study: every run of the grid, one after another, each resumable.

    python -m reasonclip_jax.sweep --config configs/sweeps/tiny.py:/tmp/scenes --workdir /tmp/study
    python -m reasonclip_jax.sweep --report /tmp/study

Each run trains in its own subdirectory `WORKDIR/RUN` (`grid.Run.name`) with
`trainer.train(run.config, WORKDIR/RUN)` over all devices of the job (on a pod, every process
runs the same command). Relaunching the command skips the finished runs (their last
checkpoint is at total_steps), resumes the interrupted one from its checkpoint, and starts
the rest. A SIGTERM saves the running run and stops the sweep; relaunch to go on.

Before a run trains, its update step is compiled ahead of time on the job's devices
(`scaling/compiled_memory.py`): XLA's peak bytes per device go into `RUN/run.json` (the
report's memory column), and with `device_memory` set, a batch the sweep config gives no
micro-batches gets the fewest GradCache micro-batches whose step fits (`scaling/plan.py`).
`RUN/run.json` also holds the grid point and a fingerprint of the run's config: a workdir
made by a different sweep config is refused rather than mixed.

The workdir may be a bucket (`--workdir gs://BUCKET/studies/NAME`): the run records go through
`reasonclip_jax.paths`, and each run's checkpoints, metrics and `best/` through the trainer's
own bucket support.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import jax
import ml_collections

from reasonclip_jax import paths
from reasonclip_jax.errors import UserError
from reasonclip_jax.scaling import compiled_memory, grid, plan
from reasonclip_jax.train import checkpoint, trainer

log = logging.getLogger("reasonclip_jax.sweep")

RUN_RECORD = "run.json"


def fingerprint(config: ml_collections.ConfigDict) -> str:
    """A short hash of everything a run's result depends on (its whole config)."""
    return hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:16]


def finished(run_dir: str, total_steps: int) -> bool:
    """Whether the run in `run_dir` has saved its last step."""
    directory = paths.join(run_dir, "checkpoints")
    return (paths.Path(directory).is_dir()
            and checkpoint.latest_train_step(directory) == total_steps)


def read_record(run_dir: str) -> dict[str, Any] | None:
    path = paths.Path(run_dir, RUN_RECORD)
    return json.loads(path.read_text()) if path.exists() else None


def write_record(run_dir: str, record: dict[str, Any]) -> None:
    """`RUN/run.json`, written whole (a reader sees the old record or the new one)."""
    if jax.process_index() != 0:
        return
    paths.makedirs(run_dir)
    paths.write_text(paths.join(run_dir, RUN_RECORD), json.dumps(record, indent=1) + "\n")


def fit_and_measure(sweep: ml_collections.ConfigDict, run: grid.Run
                    ) -> compiled_memory.CompiledMemory:
    """XLA's memory of the run's step on the job's devices. With `sweep.device_memory` and no
    micro-batches named for its batch, the run first gets the fewest GradCache micro-batches
    whose step fits. Compiled into the persistent cache, where the trainer finds the step."""
    with trainer.persistent_compilation_cache(run.config.compilation_cache_dir):
        if sweep.device_memory and str(run.batch_size) not in dict(sweep.micro_batches):
            target = compiled_memory.local_target(plan.parse_bytes(sweep.device_memory))
            micro, fitted = plan.fewest_micro_batches(run.config, target)
            run.config.grad_accum = dict(micro_batches=micro, mode="gradcache")
            return fitted.compiled
        return compiled_memory.compile_step(run.config, jax.devices())


def prepare(sweep: ml_collections.ConfigDict, run: grid.Run, run_dir: str) -> dict[str, Any]:
    """The run's record: new, or the one a previous launch wrote (which must match)."""
    record = read_record(run_dir)
    if record is not None:
        if str(run.batch_size) not in dict(sweep.micro_batches):  # fitted at its first launch
            run.config.grad_accum = dict(micro_batches=record["point"]["micro_batches"],
                                         mode="gradcache")
        if record["fingerprint"] != fingerprint(run.config):
            raise UserError(f"{run_dir} holds a run of a different sweep config; use a new "
                            "--workdir, or remove that run's directory to train it again")
        return record
    memory = fit_and_measure(sweep, run)
    if memory.out_of_memory:
        raise UserError(f"{run.name}: the step needs more than the devices' memory (XLA: "
                        f"{memory.temp_bytes / 2**30:.1f} GiB of temporaries); give it "
                        "micro_batches or set device_memory to fit it")
    record = dict(name=run.name, point=run.point(), fingerprint=fingerprint(run.config),
                  compiled_peak_bytes=memory.peak_bytes, devices=jax.device_count(),
                  device_kind=jax.devices()[0].device_kind)
    write_record(run_dir, record)
    return record


def run_sweep(sweep: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Trains every unfinished run of `sweep` under `workdir`; returns the names trained.

    Stops after a run that did not reach its last step (SIGTERM saved it)."""
    runs = grid.make_runs(sweep)
    jax.config.update("jax_threefry_partitionable", True)  # as the trainer compiles
    workdir = paths.absolute(workdir)  # a local directory, or a bucket's gs://...
    if jax.process_index() == 0:
        paths.makedirs(workdir)
        paths.write_text(paths.join(workdir, "sweep_config.json"),
                         sweep.to_json_best_effort(indent=1) + "\n")
    trained = []
    for i, run in enumerate(runs):
        run_dir = paths.join(workdir, run.name)
        prepare(sweep, run, run_dir)
        if finished(run_dir, run.config.total_steps):
            log.info("[%d/%d] %s: finished, skipped", i + 1, len(runs), run.name)
            continue
        log.info("[%d/%d] %s: batch %d, %d steps, %d micro-batches, lr x %.3g", i + 1,
                 len(runs), run.name, run.batch_size, run.config.total_steps,
                 run.config.grad_accum.micro_batches, run.learning_rate_scale)
        trainer.train(run.config, run_dir)
        trained.append(run.name)
        if not finished(run_dir, run.config.total_steps):
            log.warning("%s stopped before its last step; relaunch the sweep to resume it",
                        run.name)
            break
    return trained
