"""The memory planner: how many GradCache micro-batches a global batch needs on a target,
and the largest global batch that fits.

    python -m reasonclip_jax.plan --config configs/stage1.py:backbone=L-14-336 \
        --topology v5p:4x4x4 [--batch-sizes 16384,32768,65536]
    python -m reasonclip_jax.plan --config configs/stage1.py:backbone=B-32 \
        --device-memory 80GiB --devices 64        (a GPU cluster: the analytic model only)

For each global batch: the trainer's update step compiled ahead of time for the target
(`compiled_memory.py`; this machine's devices, or a TPU topology through libtpu), XLA's peak
bytes per device, and beside it the analytic breakdown (`memory_model.py`) that explains the
figure and stands in for it where nothing can be compiled (GPUs from a CPU-only machine).
Micro-batches are GradCache's (every negative kept), the fewest whose step fits; the largest
global batch is searched with the analytic model among multiples of the batch shards and
checked by a compile.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re

import ml_collections

from reasonclip_jax.errors import UserError
from reasonclip_jax.parallel import sharding
from reasonclip_jax.scaling import compiled_memory, memory_model
from reasonclip_jax.scaling.compiled_memory import CompiledMemory, Target

log = logging.getLogger("reasonclip_jax.plan")

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
# The analytic model is within 20% of XLA's figure in the cases the tests compile (0.83 to
# 1.17 on the v5e 2x2 grid, 0.83 to 0.97 on the pod plans, README); a micro-batch count
# whose estimate exceeds the memory by more than this margin is not worth a compile.
_ESTIMATE_MARGIN = 1.25


def parse_bytes(text: str) -> int:
    """"80GiB" -> 85899345920; "16 GB", "512MiB", "1e9" too."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).upper() not in _UNITS:
        raise UserError(f"memory '{text}': give a number and a unit, e.g. 16GiB, 80GB, 512MiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def with_batch(config: ml_collections.ConfigDict, batch_size: int, micro_batches: int
               ) -> ml_collections.ConfigDict:
    """`config` at a global batch, split into GradCache micro-batches."""
    c = copy.deepcopy(config)
    c.input.batch_size = batch_size
    c.grad_accum = dict(micro_batches=micro_batches, mode="gradcache")
    return c


def batch_shards(config: ml_collections.ConfigDict, num_devices: int,
                 num_slices: int | None = None) -> int:
    shape = dict(zip(sharding.MESH_AXES,
                     sharding.job_mesh_shape(config.mesh, num_devices, num_slices), strict=True))
    return math.prod(shape[a] for a in sharding.BATCH_AXES)


def micro_batch_choices(config: ml_collections.ConfigDict, num_devices: int,
                        num_slices: int | None = None) -> list[int]:
    """GradCache micro-batch counts K: each micro-batch spreads over every batch shard, so K
    divides the per-device batch."""
    local = config.input.batch_size // batch_shards(config, num_devices, num_slices)
    return [k for k in range(1, local + 1) if local % k == 0]


@dataclasses.dataclass(frozen=True)
class Plan:
    """One global batch on a target: micro-batches, compiled and analytic peaks."""

    batch_size: int
    micro_batches: int
    compiled: CompiledMemory | None  # None: nothing compiled (no devices of the target)
    estimate: memory_model.Breakdown
    fits: bool | None  # None: the target's memory is unknown


def _fits(peak: float, memory: int | None) -> bool | None:
    return None if memory is None else peak <= memory


def evaluate(config: ml_collections.ConfigDict, target: Target, batch_size: int,
             micro_batches: int, compile_step: bool = True) -> Plan:
    """Compiled (when the target has devices) and analytic peaks of one setting."""
    c = with_batch(config, batch_size, micro_batches)
    estimate = memory_model.estimate(c, target.num_devices, target.platform,
                                     target.num_slices)
    compiled = (compiled_memory.compile_step(c, target.devices)
                if compile_step and target.devices else None)
    peak = compiled.peak_bytes if compiled else estimate.peak
    fits = False if compiled and compiled.out_of_memory else _fits(peak, target.device_memory)
    return Plan(batch_size, micro_batches, compiled, estimate, fits)


def fewest_micro_batches(config: ml_collections.ConfigDict, target: Target,
                         batch_size: int | None = None) -> tuple[int, Plan]:
    """The fewest GradCache micro-batches whose step fits the target's memory at
    `batch_size` (default: the config's), with its plan. Compiles from the smallest count
    the analytic model does not rule out; without a known memory, the config's own."""
    batch_size = batch_size or config.input.batch_size
    if target.device_memory is None:
        micro = config.grad_accum.micro_batches
        return micro, evaluate(config, target, batch_size, micro)
    c = with_batch(config, batch_size, 1)
    num_devices = target.num_devices
    # Unrolled towers: XLA keeps far fewer residuals than autodiff saves (README: the
    # estimate reads 1.36 to 5.4 of the compiled peak), so it rules nothing out.
    prune = config.model.get("scan_unroll", 1) == 1
    for micro in micro_batch_choices(c, num_devices, target.num_slices):
        estimate = memory_model.estimate(with_batch(config, batch_size, micro), num_devices,
                                         target.platform, target.num_slices)
        if prune and estimate.peak > _ESTIMATE_MARGIN * target.device_memory:
            continue
        plan = evaluate(config, target, batch_size, micro)
        if plan.fits:
            return micro, plan
    raise UserError(f"global batch {batch_size} does not fit {target.device_memory / 2**30:.1f} "
                    f"GiB per device even in micro-batches of one example per device; use "
                    "more devices, fsdp, remat or a smaller batch")


def largest_batch(config: ml_collections.ConfigDict, target: Target, micro_batches: int = 1,
                  limit: int = 2**24) -> Plan | None:
    """The largest global batch (a multiple of the batch shards, doubling then bisecting on
    the analytic model) whose step fits in `micro_batches`, checked by a compile."""
    if target.device_memory is None:
        return None
    num_devices = target.num_devices
    unit = batch_shards(config, num_devices, target.num_slices) * micro_batches

    def fits(multiple: int) -> bool:
        c = with_batch(config, multiple * unit, micro_batches)
        return memory_model.estimate(c, num_devices, target.platform,
                                     target.num_slices).peak <= target.device_memory

    if not fits(1):
        return None
    low = 1
    while fits(low * 2) and low * 2 * unit <= limit:
        low *= 2
    high = low * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    # The compiled figure has the last word: step down while it does not fit.
    low = loss_rows(config, low)
    while low >= 1:
        plan = evaluate(config, target, low * unit, micro_batches)
        if plan.fits is not False:
            return plan
        low = loss_rows(config, int(low * 0.9))
    return None


def loss_rows(config: ml_collections.ConfigDict, rows: int) -> int:
    """The most rows per device, at most `rows`, that the loss takes: the tiled ring wants
    whole tiles once a device holds more than one."""
    tile = config.loss.tile_size
    if config.loss.impl != "tiled_ring" or rows <= tile:
        return rows
    return rows - rows % tile
