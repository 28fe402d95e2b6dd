"""Model checkpoints: an orbax directory with the parameters and the model config.

Layout (the same as one step of the trainer's CheckpointManager, which adds more items):

    CKPT_DIR/params/        orbax PyTree (StandardSave) of the parameters, float32
    CKPT_DIR/model_config/  JSON of `ModelConfig`

`load_model` accepts such a directory, a trainer workdir (its latest complete step under
`checkpoints/`) or a CheckpointManager directory.

    python -c "from reasonclip_jax.train import checkpoint; print(checkpoint.load_model('CKPT')[1])"
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from reasonclip_jax.errors import UserError
from reasonclip_jax.models.clip import ModelConfig

log = logging.getLogger(__name__)

PARAMS = "params"
MODEL_CONFIG = "model_config"
TRAIN_STATE = "train_state"
DATA_ITER = "data_iter"
BEST_METRIC = "best_metric.json"


def _handlers() -> dict[str, Any]:
    """Every item a checkpoint of this project can hold, with its orbax handler."""
    import grain

    return {
        PARAMS: ocp.StandardCheckpointHandler(),
        TRAIN_STATE: ocp.StandardCheckpointHandler(),
        MODEL_CONFIG: ocp.JsonCheckpointHandler(),
        DATA_ITER: grain.checkpoint.CheckpointHandler(),
    }


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(**_handlers()))


def save_model(path: str, params: Any, config: ModelConfig) -> None:
    """Writes params (any pytree of arrays) and the config to a new directory `path`."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        raise UserError(f"{path} already exists; choose a new checkpoint directory")
    with _checkpointer() as ckptr:
        ckptr.save(
            path,
            ocp.args.Composite(**{
                PARAMS: ocp.args.StandardSave(params),
                MODEL_CONFIG: ocp.args.JsonSave(config.to_dict()),
            }),
        )


def resolve_step_dir(path: str) -> str:
    """A directory holding `params/` and `model_config/`: `path` itself (a model checkpoint,
    e.g. a run's `best/`), or the latest step of a CheckpointManager directory (`path` or
    `path/checkpoints`)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path) and os.path.isdir(f"{path}.old"):
        return f"{path}.old"  # a replacement of best/ cut short: the previous best
    if not os.path.isdir(path):
        raise UserError(f"checkpoint {path} does not exist or is not a directory")
    if os.path.isdir(os.path.join(path, MODEL_CONFIG)):
        return path
    for root in (path, os.path.join(path, "checkpoints")):
        steps = [int(d) for d in os.listdir(root) if d.isdigit()] if os.path.isdir(root) else []
        # Only finalised steps: orbax writes to a temporary name and renames when complete.
        steps = [s for s in steps if os.path.isdir(os.path.join(root, str(s), MODEL_CONFIG))]
        if steps:
            return os.path.join(root, str(max(steps)))
    raise UserError(f"{path} is not a reasonclip checkpoint (no '{MODEL_CONFIG}' item found)")


def describe(step_dir: str) -> str:
    """Which weights a resolved checkpoint directory holds, for a log line."""
    best = read_best_metric(step_dir)
    if best is not None:
        metric = ", ".join(f"{k}={v:.6g}" for k, v in best.items() if k != "step")
        return f"{step_dir}: step {best['step']}, best by {metric}"
    name = os.path.basename(step_dir)
    if name.isdigit():
        return f"{step_dir}: step {name} (the latest)"
    return f"{step_dir}: a model checkpoint (imported or exported weights)"


def load_model_config(path: str) -> ModelConfig:
    step_dir = resolve_step_dir(path)
    with _checkpointer() as ckptr:
        restored = ckptr.restore(
            step_dir, ocp.args.Composite(**{MODEL_CONFIG: ocp.args.JsonRestore()})
        )
    return ModelConfig.from_dict(dict(restored[MODEL_CONFIG]))


def load_model(path: str, target: Any = None) -> tuple[Any, ModelConfig]:
    """(params, config). Without `target`, params come back as numpy arrays on the host;
    with a pytree of `jax.ShapeDtypeStruct`s carrying shardings, as sharded `jax.Array`s."""
    step_dir = resolve_step_dir(path)
    log.info("loading %s", describe(step_dir))
    config = load_model_config(step_dir)
    if target is None:
        meta = _params_metadata(step_dir)
        target = jax.tree.map(
            lambda m: np.zeros(m.shape, m.dtype), meta, is_leaf=lambda x: hasattr(x, "shape")
        )
    with _checkpointer() as ckptr:
        restored = ckptr.restore(
            step_dir, ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(target)})
        )
    return restored[PARAMS], config


def _params_metadata(step_dir: str) -> Any:
    with _checkpointer() as ckptr:
        return ckptr.metadata(step_dir).item_metadata[PARAMS]


# ------------------------------------------------------------------------- training runs


def latest_train_step(directory: str) -> int | None:
    """The last committed step of a trainer's checkpoint directory, without touching it.

    Unlike `train_manager`, it never deletes torn temporary steps, so it can look at a run
    that another process is about to resume.
    """
    options = ocp.CheckpointManagerOptions(create=False, cleanup_tmp_directories=False)
    with ocp.CheckpointManager(os.path.abspath(directory), options=options) as manager:
        return manager.latest_step()


def train_manager(directory: str, keep: int, async_save: bool = True
                  ) -> ocp.CheckpointManager:
    """The trainer's CheckpointManager: each step holds params, train_state (optimizer state,
    step, counters), model_config and the input iterator's state (one file per process).

    Incomplete steps (a save killed half-way) are never listed: orbax writes to a temporary
    directory and renames it when the save is committed.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_handlers=_handlers())


def save_train(manager: ocp.CheckpointManager, step: int, params: Any, train_state: Any,
               config: ModelConfig, data_iter: Any, force: bool = False) -> bool:
    import grain

    return manager.save(step, force=force, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(params),
        TRAIN_STATE: ocp.args.StandardSave(train_state),
        MODEL_CONFIG: ocp.args.JsonSave(config.to_dict()),
        DATA_ITER: grain.checkpoint.CheckpointSave(data_iter),
    }))


def saved_process_count(step_dir: str) -> int | None:
    """How many processes wrote the input iterator's state of a training step."""
    names = os.listdir(os.path.join(step_dir, DATA_ITER)) if os.path.isdir(
        os.path.join(step_dir, DATA_ITER)) else []
    counts = {int(n.split("-of-")[1].split(".")[0]) for n in names if "-of-" in n}
    return counts.pop() if len(counts) == 1 else None


def restore_train(manager: ocp.CheckpointManager, step: int, abstract_params: Any,
                  abstract_train_state: Any, data_iter: Any | None) -> tuple[Any, Any]:
    """(params, train_state) restored into the given shardings; sets `data_iter`'s state
    when given (pass None to position the iterator some other way)."""
    import grain

    items = {
        PARAMS: ocp.args.StandardRestore(abstract_params),
        TRAIN_STATE: ocp.args.StandardRestore(abstract_train_state),
    }
    if data_iter is not None:
        items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored[PARAMS], restored[TRAIN_STATE]


# ------------------------------------------------------------------------- best weights


class BestCheckpoint:
    """Keeps `directory` holding the weights of the best value of `metric` in the run.

    `mode` "max" or "min": a value replaces the best one only if strictly better. The best
    value so far is read back from `directory/best_metric.json` when a run resumes, so a
    worse value after a restart never replaces a better `best/`. An empty `metric`, or
    evaluations that lack it, keep nothing.

    Replacing is atomic for a reader of `directory`: the new weights are written to
    `directory.tmp-STEP`, the old ones renamed to `directory.old`, the new ones renamed into
    place, then the old ones deleted. A run killed between the two renames leaves
    `directory.old`, which the next `BestCheckpoint` of the run (or `resolve_step_dir`) puts
    back.
    """

    def __init__(self, directory: str, metric: str, mode: str) -> None:
        if mode not in ("max", "min"):
            raise UserError(f"checkpoint.best_mode '{mode}': use 'max' or 'min'")
        self.directory, self.metric, self.mode = directory, metric, mode
        recover_best(directory)
        self.value: float | None = None
        saved = read_best_metric(directory)
        if metric and saved is not None and metric in saved:
            self.value = float(saved[metric])

    def update(self, step: int, scalars: dict[str, float], params: Any,
               config: ModelConfig) -> bool:
        """Saves `params` if `scalars[metric]` beats the best so far; True if it did."""
        if not self.metric or self.metric not in scalars:
            return False
        value = scalars[self.metric]
        if self.value is not None and (value <= self.value if self.mode == "max"
                                       else value >= self.value):
            return False
        self.value = value
        tmp, old = f"{self.directory}.tmp-{step}", f"{self.directory}.old"
        save_model(tmp, params, config)
        if jax.process_index() == 0:
            with open(os.path.join(tmp, BEST_METRIC), "w") as f:
                json.dump({"step": step, self.metric: value}, f)
            shutil.rmtree(old, ignore_errors=True)
            if os.path.exists(self.directory):
                os.replace(self.directory, old)
            os.replace(tmp, self.directory)
            shutil.rmtree(old, ignore_errors=True)
        return True


def recover_best(directory: str) -> None:
    """Puts `directory.old` back when a replacement of `directory` was cut short."""
    old = f"{directory}.old"
    if jax.process_index() == 0 and os.path.isdir(old):
        if os.path.isdir(directory):
            shutil.rmtree(old)
        else:
            os.replace(old, directory)


def read_best_metric(directory: str) -> dict[str, Any] | None:
    """`best_metric.json` of a best-weights directory (step and metric value), or None."""
    path = os.path.join(directory, BEST_METRIC)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
