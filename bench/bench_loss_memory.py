"""Per-device temporary memory of the contrastive loss, forward + backward: gather vs ring.

Compiles (never runs) `jit(value_and_grad(contrastive_loss))` on simulated CPU devices and
reads XLA's `memory_analysis().temp_size_in_bytes` of the per-device program. Two tables:
the global batch growing on 8 devices (gather ~ n x N, ring ~ n^2 + n*D, n = N / 8), and a
fixed local batch n while the world size grows (gather grows with it, ring stays flat).

    python bench/bench_loss_memory.py [--kind softmax|sigmoid] [--dim 512]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from reasonclip_jax.parallel.losses import contrastive_loss  # noqa: E402

BATCH_AXES = ("data", "fsdp")
MiB = 2**20


def batch_mesh(world: int) -> Mesh:
    """A (world, 1, 1) mesh over the first `world` devices, Auto axes as in the trainer."""
    devices = np.asarray(jax.devices()[:world]).reshape(world, 1, 1)
    auto = (jax.sharding.AxisType.Auto,) * 3
    return Mesh(devices, ("data", "fsdp", "tensor"), axis_types=auto)


def temp_bytes(impl: str, kind: str, mesh: Mesh, global_batch: int, dim: int) -> int:
    """Compiled per-device temporary bytes of the loss's value and gradients."""

    def loss(img, txt, log_scale, bias):
        return contrastive_loss(
            img, txt, log_scale, bias, kind=kind, impl=impl, mesh=mesh, batch_axes=BATCH_AXES
        )[0]

    emb = jax.ShapeDtypeStruct(
        (global_batch, dim), jnp.float32, sharding=NamedSharding(mesh, P(BATCH_AXES))
    )
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
    compiled = step.lower(emb, emb, scalar, scalar).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def print_table(title: str, rows: list[tuple[int, int, int, int, int]], dim: int) -> None:
    print(title)
    header = (
        f"{'world':>5} {'N':>7} {'n':>6} | {'gather MiB':>10} {'ring MiB':>9} {'ratio':>6} | "
        f"{'n*N*4 MiB':>9} {'(n^2+n*D)*4 MiB':>15}"
    )
    print(header)
    print("-" * len(header))
    for world, n_global, n_local, gather, ring in rows:
        print(
            f"{world:>5} {n_global:>7} {n_local:>6} | {gather / MiB:>10.1f} {ring / MiB:>9.1f} "
            f"{gather / ring:>6.1f} | {n_local * n_global * 4 / MiB:>9.1f} "
            f"{(n_local**2 + n_local * dim) * 4 / MiB:>15.1f}"
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="softmax", choices=("softmax", "sigmoid"))
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--local-batch", type=int, default=2048)
    args = parser.parse_args()
    if len(jax.devices()) < 8:
        raise SystemExit("needs 8 devices: run with XLA_FLAGS unset or with a device count of 8")

    def row(world: int, global_batch: int) -> tuple[int, int, int, int, int]:
        mesh = batch_mesh(world)
        gather = temp_bytes("gather", args.kind, mesh, global_batch, args.dim)
        ring = temp_bytes("ring", args.kind, mesh, global_batch, args.dim)
        return world, global_batch, global_batch // world, gather, ring

    print(f"{args.kind} contrastive loss, forward + backward, D={args.dim}, float32 embeddings;")
    print("compiled per-device temp_size_in_bytes (XLA memory_analysis), CPU backend.\n")
    growing_batch = [row(8, n) for n in (4096, 8192, 16384, 32768, 65536)]
    print_table("Global batch N grows on 8 devices (n = N / 8):", growing_batch, args.dim)
    growing_world = [row(w, args.local_batch * w) for w in (2, 4, 8)]
    print_table(
        f"Local batch n = {args.local_batch} fixed, world size grows:", growing_world, args.dim
    )


if __name__ == "__main__":
    main()
