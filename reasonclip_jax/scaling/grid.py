"""A batch-size study's grid: the sweep config -> one trainer config per run.

A sweep config (`configs/sweeps/*.py`) holds a trainer config (`base`) and the grid over it.
Every run of the grid is `base` with one global batch size B (crossed, optionally, with a
loss kind, a loss implementation and a stage), and what a fair comparison over B needs:

- the same examples in the same order: one shuffle seed, one data stream, one budget of
  `samples` training examples, so total_steps = samples / B (the stream is read in order:
  batch t of a run at B holds examples [tB, (t + 1)B) of it, `data/pipeline.py`);
- the learning rate of every optimizer group set by `lr_rule` from its value in `base`, which
  is taken to be right at `reference_batch_size`: lr(B) = lr_ref * (B / B_ref)^p with p = 0
  ("constant"), 1 ("linear") or 1/2 ("sqrt");
- warmup, evaluation, logging and checkpoints kept in samples (`warmup_samples`, ...),
  converted to steps of each run;
- the held-out loss at one contrastive batch for every run (`eval_batch_size`, the
  `validation.batch_size` of every run), so its values compare across B;
- a batch too large for device memory split into GradCache micro-batches (every negative
  kept; `micro_batches`, e.g. from `python -m reasonclip_jax.plan`), never into plain
  accumulation, which would change the contrastive batch.

Sweep config keys:
    base                  the trainer config every run starts from
    batch_sizes           global batch sizes
    losses                loss.kind values ("softmax", "sigmoid"); [] keeps base's
    loss_impls            loss.impl values ("gather", "ring", "tiled_ring"); [] keeps base's
    stages                stage values; [] keeps base's
    settings              per grid value, a nested dict merged into the run's config:
                          dict(loss=dict(sigmoid=dict(model=dict(overrides=dict(
                          logit_bias_init=-10.0)))), stage=dict(stage2=dict(input=...)))
    samples               training examples per run
    warmup_samples        linear warmup length in examples
    lr_rule               "constant" | "linear" | "sqrt"
    reference_batch_size  the batch base's learning rates are for
    eval_batch_size       global batch of the held-out loss (validation.batch_size)
    eval_every_samples    evaluation interval in examples; 0: only at the end
    log_every_samples     metric logging interval in examples (at least one step)
    checkpoint_every_samples  checkpoint interval in examples; 0: at evaluations and the end
    micro_batches         {"B": K}: GradCache micro-batches of the global batch B
    device_memory         e.g. "16GiB": a batch without an entry in micro_batches gets the
                          fewest micro-batches whose compiled step fits (`scaling/plan.py`);
                          "": one micro-batch

    python -c "from configs.sweeps import tiny; from reasonclip_jax.scaling import grid; \\
print([r.name for r in grid.make_runs(tiny.get_config('/tmp/scenes'))])"
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Mapping
from typing import Any

import ml_collections

from reasonclip_jax.errors import UserError
from reasonclip_jax.parallel import losses
from reasonclip_jax.train import stages

LR_RULES = {"constant": 0.0, "linear": 1.0, "sqrt": 0.5}
SWEEP_KEYS = {
    "base", "batch_sizes", "losses", "loss_impls", "stages", "settings", "samples",
    "warmup_samples", "lr_rule", "reference_batch_size", "eval_batch_size",
    "eval_every_samples", "log_every_samples", "checkpoint_every_samples", "micro_batches",
    "device_memory",
}
# The keys of `settings`: one per dimension of the grid besides the batch.
SETTINGS = ("stage", "loss", "loss_impl")


@dataclasses.dataclass(frozen=True)
class Run:
    """One point of the grid and its trainer config."""

    name: str  # its subdirectory, e.g. "stage1-softmax-gather-b256"
    batch_size: int
    stage: str
    loss: str
    loss_impl: str
    learning_rate_scale: float  # lr(B) / lr_ref
    config: ml_collections.ConfigDict

    def point(self) -> dict[str, Any]:
        """The grid point, as the report's columns name it."""
        return dict(batch_size=self.batch_size, stage=self.stage, loss=self.loss,
                    loss_impl=self.loss_impl, lr_scale=self.learning_rate_scale,
                    micro_batches=int(self.config.grad_accum.micro_batches))


def learning_rate_scale(rule: str, batch_size: int, reference_batch_size: int) -> float:
    """lr(B) / lr(B_ref) under `rule`: (B / B_ref)^p, p = 0, 1 or 1/2."""
    if rule not in LR_RULES:
        raise UserError(f"unknown lr_rule '{rule}'; choose one of {sorted(LR_RULES)}")
    return (batch_size / reference_batch_size) ** LR_RULES[rule]


def _is_dict(x: Any) -> bool:
    return isinstance(x, (Mapping, ml_collections.ConfigDict))


def merge(config: ml_collections.ConfigDict, patch: Mapping[str, Any], where: str = "") -> None:
    """Merges the nested dict `patch` into `config` in place, dicts key by key. Only a
    `model.overrides` dict takes keys it lacks; elsewhere an unknown key is an error."""
    for key, value in patch.items():
        if _is_dict(value) and key in config and _is_dict(config[key]):
            merge(config[key], value, f"{where}{key}.")
        elif key in config or where.endswith("overrides."):
            config[key] = value
        else:
            raise UserError(f"settings: the run config has no key '{where}{key}'")


def _steps(samples: int, batch_size: int, what: str) -> int:
    if samples % batch_size:
        raise UserError(f"{what} {samples} is not a multiple of the batch size {batch_size}: "
                        "every run must see the same examples; choose batch sizes that "
                        f"divide {what}")
    return samples // batch_size


def check_sweep_config(sweep: ml_collections.ConfigDict) -> None:
    """Unknown keys, empty grids and impossible values stop here, before any run starts."""
    unknown = set(sweep.keys()) - SWEEP_KEYS
    if unknown:
        raise UserError(f"unknown sweep config keys {sorted(unknown)}; known: "
                        f"{sorted(SWEEP_KEYS)}")
    missing = SWEEP_KEYS - set(sweep.keys())
    if missing:
        raise UserError(f"the sweep config lacks {sorted(missing)}")
    if not sweep.batch_sizes or min(sweep.batch_sizes) < 1:
        raise UserError(f"batch_sizes {list(sweep.batch_sizes)}: give positive batch sizes")
    for kind in sweep.losses:
        if kind not in losses.KINDS:
            raise UserError(f"losses: unknown kind '{kind}'; choose from {losses.KINDS}")
    for impl in sweep.loss_impls:
        if impl not in losses.IMPLS:
            raise UserError(f"loss_impls: unknown '{impl}'; choose from {losses.IMPLS}")
    for stage in sweep.stages:
        stages.get_stage(stage)
    if sweep.base.grad_accum.mode != "gradcache" and sweep.base.grad_accum.micro_batches > 1:
        raise UserError("base.grad_accum is plain accumulation, which changes the contrastive "
                        "batch with the micro-batches; a sweep fits batches with gradcache")
    if sweep.eval_batch_size < 1:
        raise UserError("eval_batch_size must be positive: the held-out loss at one fixed "
                        "contrastive batch is what makes runs at different batches compare")


def micro_batches_of(sweep: ml_collections.ConfigDict, batch_size: int) -> int:
    """The GradCache micro-batches the sweep config gives `batch_size` (1: none given)."""
    table = {int(k): int(v) for k, v in dict(sweep.micro_batches).items()}
    k = table.get(batch_size, 1)
    if k < 1 or batch_size % k:
        raise UserError(f"micro_batches {k} does not divide the batch size {batch_size}")
    return k


def make_run(sweep: ml_collections.ConfigDict, batch_size: int, stage: str, loss: str,
             loss_impl: str) -> Run:
    """The trainer config of one grid point (see the module docstring)."""
    c = copy.deepcopy(sweep.base)
    c.unlock()  # the command line locks configs; a run adds warmup_steps and overrides
    for dimension, value in zip(SETTINGS, (stage, loss, loss_impl), strict=True):
        merge(c, dict(sweep.settings).get(dimension, {}).get(value, {}))
    c.stage, c.loss.kind, c.loss.impl = stage, loss, loss_impl
    c.input.batch_size = batch_size
    c.total_steps = _steps(sweep.samples, batch_size, "samples")
    c.optim.warmup_steps = round(sweep.warmup_samples / batch_size)
    c.optim.warmup_fraction = None
    scale = learning_rate_scale(sweep.lr_rule, batch_size, sweep.reference_batch_size)
    for group in c.optim.groups:
        if not group.get("frozen") and group.get("lr") is not None:
            group["lr"] = group["lr"] * scale
    c.validation.batch_size = sweep.eval_batch_size
    c.eval_every = (_steps(sweep.eval_every_samples, batch_size, "eval_every_samples")
                    if sweep.eval_every_samples else 0)
    c.log_every = max(1, sweep.log_every_samples // batch_size)
    every = sweep.checkpoint_every_samples or sweep.eval_every_samples or sweep.samples
    c.checkpoint.every_steps = _steps(every, batch_size, "checkpoint_every_samples")
    c.grad_accum = dict(micro_batches=micro_batches_of(sweep, batch_size), mode="gradcache")
    name = f"{stage}-{loss}-{loss_impl}-b{batch_size}"
    return Run(name, batch_size, stage, loss, loss_impl, scale, c)


def make_runs(sweep: ml_collections.ConfigDict) -> list[Run]:
    """Every run of the grid, in the order the sweep trains them (batch sizes ascending
    within each stage x loss x implementation)."""
    check_sweep_config(sweep)
    unknown = set(dict(sweep.settings)) - set(SETTINGS)
    if unknown:
        raise UserError(f"settings: unknown dimensions {sorted(unknown)}; use {SETTINGS}")
    base = sweep.base
    axes = [list(sweep.stages) or [base.stage], list(sweep.losses) or [base.loss.kind],
            list(sweep.loss_impls) or [base.loss.impl]]
    return [make_run(sweep, b, stage, loss, impl)
            for stage, loss, impl in itertools.product(*axes)
            for b in sorted(set(sweep.batch_sizes))]
