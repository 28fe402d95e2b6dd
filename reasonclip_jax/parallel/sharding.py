"""Device mesh and the logical-axis rules that map model axis names to mesh axes.

The mesh has three axes: `data` (pure data parallel), `fsdp` (data parallel with parameters
and optimizer state sharded, ZeRO-3 style) and `tensor` (Megatron-style tensor parallel for
attention heads and MLP). The global batch is split over ("data", "fsdp"). Layers only name
their axes (`embed`, `mlp`, `heads`, `vocab`, `act_batch`, ...); `LOGICAL_RULES` below is
the one table that decides where each goes, so changing topology is a config change:

    python -m reasonclip_jax.train --config configs/demo.py --workdir /tmp/w \
        --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.tensor=2
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from reasonclip_jax.errors import UserError

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


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all devices of all processes (GSPMD-style Auto axes)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(sizes, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


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
