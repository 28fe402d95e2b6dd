"""The trainer's update step compiled ahead of time for a target, and XLA's memory analysis.

The target is this machine's devices, or a TPU topology compiled for without TPU hardware:
`libtpu` (from the package registry, `pip install libtpu`) describes the topology's chips
through `jax.experimental.topologies.get_topology_desc`, as MaxText's `train_compile` does,
and XLA's TPU compiler lowers and compiles for them. The step is the trainer's own
(`trainer.build_program`: the same `train_step`, shardings and donation), lowered on
abstract arrays (`jax.ShapeDtypeStruct`s), so nothing is allocated or run.

Peak bytes per device = arguments + outputs - aliased (the donated params and optimizer state
are written in place) + temporaries. On TPUs XLA's own peak (`peak_memory_in_bytes`, from the
heap simulation of the buffer assignment) instead: that is the figure the TPU compiler holds
against the chip's HBM, and its `temp_size_in_bytes` counts more than the program holds at
once. ViT-B-32 without remat on v5e 2x2 (per chip): 192 examples compile with 17.0 GiB of
"temporaries" on a chip with 15.75 GiB available (XLA's peak 14.67 GiB), and 208 are refused
for needing 15.95 GiB; at 64 examples the temporaries are 6.51 GiB, the buffer assignment's
temporary allocation 4.60 GiB, XLA's peak 6.84 GiB.

    python -m reasonclip_jax.plan --config configs/stage1.py:backbone=B-32 --topology v5e:2x2
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reasonclip_jax.errors import UserError
from reasonclip_jax.parallel import sharding
from reasonclip_jax.train import trainer

# Topology name prefixes -> (libtpu's name for the chip, chip config, HBM bytes per chip).
# Chips per host are 2 x 2 x 1 on all of them (MaxText's accelerator_to_spec_map).
GiB = 2**30
TPU_CHIPS = {
    "v4": ("v4", "megacore", 32 * GiB),
    "v5e": ("v5e", "default", 16 * GiB),
    "v5p": ("v5", "megacore", 95 * GiB),
    "v6e": ("v6e", "default", 32 * GiB),
}
_OUT_OF_MEMORY = re.compile(r"memory required for HLO temporaries \(([0-9.]+)([KMGT])\)")
_SUFFIX = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")


@dataclasses.dataclass(frozen=True)
class CompiledMemory:
    """XLA's memory analysis of one compiled program, bytes per device."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    # XLA's TPU compiler refuses a program whose peak exceeds the chip's HBM; then only the
    # memory it needed is known (temp_bytes, a lower bound of the peak).
    out_of_memory: bool = False
    # The compiler's own peak where it computes one (TPUs); 0: none.
    compiler_peak_bytes: int = 0

    @property
    def peak_bytes(self) -> int:
        if self.compiler_peak_bytes:
            return self.compiler_peak_bytes
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


@dataclasses.dataclass(frozen=True)
class Target:
    """Devices to compile for (none: the analytic model only), and the memory each has."""

    name: str
    devices: tuple[Any, ...]
    device_memory: int | None  # bytes per device; None: unknown
    platform: str  # "cpu" | "gpu" | "tpu": how the analytic model counts bytes
    num_devices: int
    num_slices: int = 1  # TPU slices joined by DCN (`mesh.dcn`); processes off TPU


def analytic_target(num_devices: int, device_memory: int, platform: str = "gpu") -> Target:
    """Devices this machine cannot compile for (GPUs from a CPU-only machine)."""
    return Target(f"{num_devices} {platform} devices", (), device_memory, platform,
                  num_devices)


def tpu_target(topology: str, num_slices: int = 1) -> Target:
    """The chips of a TPU topology such as "v5e:4x4" or "v5p:2x2x2", from libtpu;
    `num_slices` such slices joined by the data-centre network (a multi-slice job)."""
    match = _TOPOLOGY.match(topology)
    if not match:
        raise UserError(f"topology '{topology}': use CHIP:AxB[xC] with CHIP one of "
                        f"{sorted(TPU_CHIPS)}, e.g. v5e:4x4 or v5p:2x2x2")
    chip, shape = match.groups()
    libtpu_name, chip_config, memory = TPU_CHIPS[chip]
    dims = shape.split("x")
    if chip in ("v4", "v5p") and len(dims) == 2:
        dims.append("1")
    # Compiling needs no chip: skip libtpu's one-process-per-machine lock, which a process
    # that merely imported it (JAX probes for TPUs at start) would otherwise hold.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=f"{libtpu_name}:{'x'.join(dims)}",
            chip_config_name=chip_config, chips_per_host_bounds=(2, 2, 1), num_slices=num_slices)
    except Exception as e:  # libtpu missing, or a topology it does not know
        raise UserError(f"cannot describe TPU topology '{topology}' ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); it needs libtpu "
                        "(pip install libtpu, see requirements.txt)") from None
    name = topology if num_slices == 1 else f"{num_slices} x {topology}"
    return Target(name, tuple(desc.devices), memory, "tpu", len(desc.devices), num_slices)


def local_target(device_memory: int | None = None) -> Target:
    """This process's view of the job's devices; their memory as the runtime reports it."""
    devices = tuple(jax.devices())
    if device_memory is None:
        stats = devices[0].memory_stats() or {}
        device_memory = stats.get("bytes_limit")
    by_process = sharding.processes_are_slices(devices)
    slices = len({sharding.slice_of(d, by_process) for d in devices})
    return Target(f"{len(devices)} {devices[0].platform} devices", devices, device_memory,
                  devices[0].platform, len(devices), slices)


def abstract_batch(program: trainer.Program, input_cfg: ml_collections.ConfigDict,
                   mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch the update function takes (what `pipeline.make_global_batch` makes
    of the input pipeline's batches), sharded over the batch axes."""
    n, size, length = input_cfg.batch_size, input_cfg.image_size, input_cfg.context_length
    batch_sharding = sharding.batch_sharding(mesh)
    image_dtype = jnp.uint8 if input_cfg.image_dtype == "uint8" else jnp.float32
    shapes = {"image": ((n, size, size, 3), image_dtype)}
    shapes.update({k: ((n, length), jnp.int32) for k in program.objective.text_keys})
    shapes.update({k: ((n, *np.shape(v)), np.asarray(v).dtype)
                   for k, v in program.objective.view.label_zeros().items()})
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
            for k, (shape, dtype) in shapes.items()}


def out_of_memory_bytes(message: str) -> int | None:
    """The temporaries XLA's TPU compiler needed when it refused a program for the chip's
    HBM ("... memory required for HLO temporaries (20.94G) exceeds available HBM ..."), else
    None."""
    match = _OUT_OF_MEMORY.search(message)
    return None if match is None else int(float(match.group(1)) * _SUFFIX[match.group(2)])


def make_mesh(config: ml_collections.ConfigDict, devices: Sequence[Any]) -> jax.sharding.Mesh:
    return sharding.make_mesh(config.mesh, list(devices))


def compile_step(config: ml_collections.ConfigDict, devices: Sequence[Any]) -> CompiledMemory:
    """Compiles the trainer's update step of `config` for `devices` (none is used)."""
    mesh = make_mesh(config, devices)
    sharding.batch_size_per_shard(mesh, config.input.batch_size)
    program = trainer.build_program(config, mesh)
    batch = abstract_batch(program, config.input, mesh)
    with sharding.activation_sharding(mesh):  # as the trainer traces its steps
        lowered = program.update.lower(program.abstract_params(), program.abstract_state(),
                                       batch)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        required = out_of_memory_bytes(str(e))
        if required is None:
            raise
        return CompiledMemory(0, 0, 0, required, out_of_memory=True)
    stats = compiled.memory_analysis()
    # CPU backends report the arguments alone as their peak; only TPUs' is a heap simulation.
    on_tpu = devices[0].platform == "tpu"
    return CompiledMemory(int(stats.argument_size_in_bytes), int(stats.output_size_in_bytes),
                          int(stats.alias_size_in_bytes), int(stats.temp_size_in_bytes),
                          compiler_peak_bytes=int(stats.peak_memory_in_bytes) if on_tpu else 0)
