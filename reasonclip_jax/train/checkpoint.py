"""Model checkpoints: an orbax directory with the parameters and the model config.

Layout (the same as one step of the trainer's CheckpointManager, which adds more items):

    CKPT_DIR/params/        orbax PyTree (StandardSave) of the parameters, float32
    CKPT_DIR/model_config/  JSON of `ModelConfig`

`load_model` accepts such a directory, a run's `best/` (its best finished step), a trainer
workdir (its latest finished step under `checkpoints/`) or a CheckpointManager directory.
Any of them can be in a bucket (`gs://...`): orbax writes and reads there itself.

A step is taken only once orbax has finished it: on a local disk orbax writes a step under
a temporary name and renames it when complete; on an object store, which cannot rename,
it writes the step in place and adds a commit marker last. `finished` asks orbax which,
so a half-written step is never resumed from, loaded, exported or kept as the best.

    python -c "from reasonclip_jax.train import checkpoint; print(checkpoint.load_model('CKPT')[1])"
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from reasonclip_jax import paths
from reasonclip_jax.errors import UserError
from reasonclip_jax.models.clip import ModelConfig

log = logging.getLogger(__name__)

PARAMS = "params"
MODEL_CONFIG = "model_config"
TRAIN_STATE = "train_state"
DATA_ITER = "data_iter"
BEST = "best_metric"  # the item of a best/ step: which step, by which metric, its value
BEST_METRIC = "best_metric.json"  # its file (best/STEP/best_metric/best_metric.json)


def _handlers() -> dict[str, Any]:
    """Every item a checkpoint of this project can hold, with its orbax handler."""
    import grain

    return {
        PARAMS: ocp.StandardCheckpointHandler(),
        TRAIN_STATE: ocp.StandardCheckpointHandler(),
        MODEL_CONFIG: ocp.JsonCheckpointHandler(),
        DATA_ITER: grain.checkpoint.CheckpointHandler(),
        BEST: ocp.JsonCheckpointHandler(filename=BEST_METRIC),
    }


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(**_handlers()))


def save_model(path: str, params: Any, config: ModelConfig,
               best: dict[str, Any] | None = None, overwrite: bool = False) -> None:
    """Writes params (any pytree of arrays) and the config to a new directory `path`
    (`overwrite`: replacing what is there); `best` adds a best-weights record."""
    path = paths.absolute(path)
    if not overwrite and paths.Path(path).exists():
        raise UserError(f"{path} already exists; choose a new checkpoint directory")
    items = {PARAMS: ocp.args.StandardSave(params),
             MODEL_CONFIG: ocp.args.JsonSave(config.to_dict())}
    if best is not None:
        items[BEST] = ocp.args.JsonSave(best)
    with _checkpointer() as ckptr:
        ckptr.save(path, ocp.args.Composite(**items), force=overwrite)


def finished(step_dir: str) -> bool:
    """Whether orbax finished writing this checkpoint directory (renamed into place on a
    disk, committed on an object store)."""
    return ocp.utils.is_checkpoint_finalized(paths.absolute(step_dir))


def finished_steps(directory: str) -> dict[int, str]:
    """{step: directory} of the finished steps (digit-named children) of `directory`."""
    root = paths.Path(directory)
    if not root.is_dir():
        return {}
    steps = {int(p.name): os.fspath(p) for p in root.iterdir() if p.name.isdigit()}
    return {s: d for s, d in sorted(steps.items()) if finished(d)}


def best_step_dir(directory: str) -> str | None:
    """The best finished step of a best-weights directory by its recorded value (the later
    of equal ones), or None when it holds none."""
    records = {s: (d, _record(d)) for s, d in finished_steps(directory).items()}
    ranked = [(_rank(record), step, d) for step, (d, record) in records.items() if record]
    return max(ranked)[2] if ranked else None


def _rank(record: dict[str, Any]) -> float:
    """Higher is better, whatever the record's mode."""
    _, value = selection(record)
    return float(value) if record.get("mode", "max") == "max" else -float(value)


def resolve_step_dir(path: str) -> str:
    """A finished directory holding `params/` and `model_config/`: the best step of a run's
    `best/`, `path` itself (a model checkpoint, or a best/ written before best/ held steps),
    or the latest step of a CheckpointManager directory (`path` or `path/checkpoints`)."""
    path = paths.absolute(path)
    if not paths.Path(path).is_dir():
        raise UserError(f"checkpoint {path} does not exist or is not a directory")
    best = best_step_dir(path)
    if best is not None:
        return best
    if paths.Path(path, MODEL_CONFIG).is_dir():
        if not finished(path):
            raise UserError(f"checkpoint {path} was not finished (a save cut short); write "
                            "it again")
        return path
    for root in (path, paths.join(path, "checkpoints")):
        steps = finished_steps(root)
        if steps:
            return steps[max(steps)]
    raise UserError(f"{path} is not a reasonclip checkpoint (no finished '{MODEL_CONFIG}' "
                    "item found)")


def describe(step_dir: str) -> str:
    """Which weights a resolved checkpoint directory holds, for a log line."""
    best = read_best_metric(step_dir)
    if best is not None:
        metric, value = selection(best)
        return f"{step_dir}: step {best['step']}, best by {metric}={value:.6g}"
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
    with ocp.CheckpointManager(paths.absolute(directory), options=options) as manager:
        return manager.latest_step()


def train_manager(directory: str, keep: int, async_save: bool = True
                  ) -> ocp.CheckpointManager:
    """The trainer's CheckpointManager: each step holds params, train_state (optimizer state,
    step, counters), model_config and the input iterator's state (one file per process).

    Incomplete steps (a save killed half-way) are never listed (see `finished`), and are
    deleted when the manager opens.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(paths.absolute(directory), options=options,
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
    item = paths.Path(step_dir) / DATA_ITER
    names = [p.name for p in item.iterdir()] if item.is_dir() else []
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
    value so far is read back when a run resumes, so a worse value after a restart never
    replaces a better one. An empty `metric`, or evaluations that lack it, keep nothing.

    Each new best is a new checkpoint `directory/STEP/` holding the weights and a record of
    its step, metric, value and mode (one orbax checkpoint, finished as a whole); once it is
    finished every other entry of `directory` is deleted. Readers (`resolve_step_dir`) take
    the finished step with the best recorded value, so a run killed at any point, on a disk
    or on an object store, leaves the previous best or the new one readable, never a part.
    """

    def __init__(self, directory: str, metric: str, mode: str) -> None:
        if mode not in ("max", "min"):
            raise UserError(f"checkpoint.best_mode '{mode}': use 'max' or 'min'")
        self.directory, self.metric, self.mode = paths.absolute(directory), metric, mode
        self.value: float | None = None
        saved = read_best_metric(self.directory)
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
        step_dir = paths.join(self.directory, str(step))
        record = {"step": step, self.metric: value, "mode": self.mode}
        save_model(step_dir, params, config, best=record, overwrite=True)
        if jax.process_index() == 0:
            # Older bests, saves cut short, and the items of a best/ written before best/
            # held steps (model_config/ first: readers stop taking the directory itself).
            entries = sorted(paths.Path(self.directory).iterdir(),
                             key=lambda p: p.name != MODEL_CONFIG)
            for entry in entries:
                if entry.name == str(step):
                    continue
                if entry.is_dir():
                    paths.rmtree(entry)
                else:
                    entry.unlink()
        return True


def read_best_metric(directory: str) -> dict[str, Any] | None:
    """The best-weights record (step, metric value, mode) of a checkpoint directory, or of
    the best step of a run's `best/`; None if it has none. A best/ written before best/
    held steps kept it in `best/best_metric.json`."""
    return _record(best_step_dir(directory) or directory)


def _record(step_dir: str) -> dict[str, Any] | None:
    for path in (paths.Path(step_dir, BEST, BEST_METRIC), paths.Path(step_dir, BEST_METRIC)):
        if path.is_file():
            return json.loads(path.read_text())
    return None


def selection(record: dict[str, Any]) -> tuple[str, float]:
    """(metric, value) of a best-weights record."""
    return next((k, v) for k, v in record.items() if k not in ("step", "mode"))
