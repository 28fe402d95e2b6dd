"""Device mesh and the logical-axis rules that map model axis names to mesh axes.

The mesh has three axes: `data` (pure data parallel), `fsdp` (data parallel with parameters
and optimizer state sharded, ZeRO-3 style) and `tensor` (Megatron-style tensor parallel for
attention heads and MLP). The global batch is split over ("data", "fsdp"). Layers only name
their axes (`embed`, `mlp`, `heads`, `vocab`, `act_batch`, ...); `LOGICAL_RULES` below is
the one table that decides where each goes, so changing topology is a config change:

    python -m reasonclip_jax.train --config configs/demo.py --workdir /tmp/w \
        --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.tensor=2

Several TPU slices (multi-slice, joined by the data-centre network, DCN): `mesh.dcn.data=S`
splits the data axis over the S slices, and `mesh.data/fsdp/tensor` then give the mesh of one
slice (its chips joined by ICI), so only the data-parallel gradient reduction crosses the
slower network. A TPU device's `slice_index` says which slice it is on; on other platforms
(CPU, GPU) each process stands in for a slice:

    python -m reasonclip_jax.launch --processes 2 --devices-per-process 4 -- \
        python -m reasonclip_jax.train --config configs/demo.py --workdir /tmp/w \
        --config.mesh.dcn.data=2 --config.mesh.fsdp=2
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from reasonclip_jax.errors import UserError

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (logical name, mesh axes). Parameters: embed -> fsdp (ZeRO-3), heads/mlp/vocab -> tensor.
# Activations: batch over data+fsdp, the tensor-parallel dims over tensor.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("act_batch", BATCH_AXES),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("norm", None),
    ("layers", None),
)


def activation_sharding(mesh: Mesh) -> contextlib.AbstractContextManager:
    """Functions traced inside this context (`jax.set_mesh`) apply the model's activation
    constraints (`constrain`); outside it they are no-ops (single device, tests, export)."""
    return jax.set_mesh(mesh)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """`with_sharding_constraint` by logical axis names (`LOGICAL_RULES`) over the mesh set
    by `activation_sharding`. Flax's rules context is not used: under it, flax would also
    constrain the parameters as it unboxes them, which the trainer's shardings already do."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return nn.with_logical_constraint(x, names, rules=LOGICAL_RULES)


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Sizes per axis of MESH_AXES; one -1 takes the remaining devices."""
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise UserError(f"unknown mesh axes {sorted(unknown)}; the axes are {MESH_AXES}")
    shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
    if shape.count(-1) > 1:
        raise UserError(f"mesh {dict(zip(MESH_AXES, shape, strict=True))}: at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise UserError(f"mesh {dict(sizes)} does not divide {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) > num_devices:
        raise UserError(
            f"mesh {dict(zip(MESH_AXES, shape, strict=True))} needs {math.prod(shape)} devices, "
            f"only {num_devices} are available"
        )
    if math.prod(shape) != num_devices:
        raise UserError(f"mesh {dict(zip(MESH_AXES, shape, strict=True))} uses "
                        f"{math.prod(shape)} of {num_devices} devices; use -1 for the rest")
    return tuple(shape)


DCN_AXES = ("data",)  # the axes that may span slices; the others stay within one


def processes_are_slices(devices: Sequence[Any]) -> bool:
    """TPU devices know their slice; elsewhere (CPU, GPU) each process stands in for one."""
    return devices[0].platform != "tpu"


def slice_of(device: Any, by_process: bool) -> int:
    return device.process_index if by_process else device.slice_index


def make_mesh(sizes: Mapping[str, Any], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all devices of all processes (GSPMD-style Auto axes); with `sizes["dcn"]`
    a multi-slice mesh (the module docstring)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = dict(sizes)
    dcn = {a: int(s) for a, s in dict(sizes.pop("dcn", None) or {}).items()}
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if all(s == 1 for s in dcn.values()):
        shape = mesh_shape(sizes, len(devices))
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    by_process = processes_are_slices(devices)
    grid = multi_slice_grid(sizes, dcn, devices, by_process)
    log.info("mesh %s over %d slices: data crosses them, fsdp and tensor stay within one",
             dict(zip(MESH_AXES, grid.shape, strict=True)),
             len({slice_of(d, by_process) for d in devices}))
    return Mesh(grid, MESH_AXES, axis_types=auto)


def multi_slice_grid(sizes: Mapping[str, int], dcn: Mapping[str, int],
                     devices: Sequence[Any], by_process: bool) -> np.ndarray:
    """The devices arranged for a multi-slice mesh: `sizes` within each slice, `dcn` across
    slices (`mesh_utils.create_hybrid_device_mesh`); `by_process`: processes are the slices."""
    crossing = sorted(a for a, s in dcn.items() if s != 1 and a not in DCN_AXES)
    if crossing:
        raise UserError(f"mesh.dcn: only {DCN_AXES} may span slices; {crossing} must stay "
                        "within a slice (set them in mesh.data/fsdp/tensor)")
    slices = sorted({slice_of(d, by_process) for d in devices})
    per_slice = len(devices) // len(slices)
    if any(sum(slice_of(d, by_process) == s for d in devices) != per_slice for s in slices):
        raise UserError(f"mesh.dcn: the {len(slices)} slices hold different numbers of devices")
    try:
        dcn_shape = mesh_shape(dcn, len(slices))
    except UserError as e:
        raise UserError(f"mesh.dcn across {len(slices)} slices: {e}") from None
    try:
        ici_shape = mesh_shape(sizes, per_slice)
    except UserError as e:
        raise UserError(f"mesh within a slice of {per_slice} devices: {e}") from None
    return mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices,
                                                process_is_granule=by_process)


def job_mesh_shape(sizes: Mapping[str, Any], num_devices: int,
                   num_slices: int | None = None) -> tuple[int, ...]:
    """Sizes per axis of MESH_AXES of the mesh `make_mesh` builds over `num_devices` devices
    in `num_slices` slices, without devices (the memory planner's analytic model): with
    `sizes["dcn"]`, the sizes within a slice times those across slices. `num_slices` None:
    as many as `mesh.dcn` names (a `-1` there needs it)."""
    sizes = dict(sizes)
    dcn = {a: int(s) for a, s in dict(sizes.pop("dcn", None) or {}).items()}
    if all(s == 1 for s in dcn.values()):
        return mesh_shape(sizes, num_devices)
    if num_slices is None:
        if -1 in dcn.values():
            raise UserError("mesh.dcn.data=-1 takes every slice: give the number of slices")
        num_slices = math.prod(dcn.values())
    if num_devices % num_slices:
        raise UserError(f"{num_devices} devices do not split into {num_slices} slices")
    try:
        across = mesh_shape(dcn, num_slices)
    except UserError as e:
        raise UserError(f"mesh.dcn across {num_slices} slices: {e}") from None
    within = mesh_shape(sizes, num_devices // num_slices)
    return tuple(a * w for a, w in zip(across, within, strict=True))


def batch_size_per_shard(mesh: Mesh, global_batch: int) -> int:
    """Examples per batch shard; the global batch must split evenly over data x fsdp."""
    shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if global_batch % shards:
        raise UserError(f"global batch {global_batch} is not divisible by the data-parallel "
                        f"size {shards} (mesh data x fsdp)")
    return global_batch // shards


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _fit(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes from dims they do not divide (e.g. a 5-way head on tensor=2)."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh.shape[a] for a in names)
        out.append(axes if names and dim % size == 0 else None)
    return PartitionSpec(*out)


def logical_shardings(boxed_abstract: Any, mesh: Mesh,
                      rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> Any:
    """NamedShardings (unboxed tree) from logically partitioned abstract parameters."""
    specs = nn.get_partition_spec(boxed_abstract)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    shapes = nn.unbox(boxed_abstract)
    return jax.tree.map(
        lambda spec, x: NamedSharding(mesh, _fit(spec, x.shape, mesh)), mesh_specs, shapes,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def abstract_arrays(tree: Any, shardings: Any) -> Any:
    """`jax.ShapeDtypeStruct`s of `tree`'s leaves carrying `shardings` (restore targets)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def shardings_like_params(tree: Any, params_sharding: Any, mesh: Mesh) -> Any:
    """Shardings for a tree (e.g. optimizer state) whose subtrees mirror the parameters.

    Every subtree with the parameters' structure (Adam moments, initial weights; masked
    entries `optax.MaskedNode` count as leaves) takes the parameters' shardings, leaf by
    leaf; anything else (step counts) is replicated.
    """
    is_masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    params_def = jax.tree.structure(params_sharding)

    def mirrors_params(x: Any) -> bool:
        return not is_masked(x) and jax.tree.structure(x, is_leaf=is_masked) == params_def

    def shard(subtree: Any) -> Any:
        if not mirrors_params(subtree):
            return replicated(mesh)
        return jax.tree.map(lambda leaf, s: leaf if is_masked(leaf) else s, subtree,
                            params_sharding, is_leaf=is_masked)

    return jax.tree.map(shard, tree, is_leaf=mirrors_params)
