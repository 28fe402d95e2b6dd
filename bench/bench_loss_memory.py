"""Per-device temporary memory of the contrastive loss, forward + backward: gather, ring and
tiled ring; and the tiled ring's step time beside the untiled ring's.

Compiles (never runs) `jit(value_and_grad(contrastive_loss))` on simulated CPU devices and
reads XLA's `memory_analysis().temp_size_in_bytes` of the per-device program. Two tables:
the global batch growing on 8 devices (gather ~ n x N, ring ~ n^2 + n*D, tiled ring
~ t^2 + n*D, n = N / 8, t the tile), and a fixed local batch n while the world size grows
(gather grows with it, the rings stay flat). Then the untiled and the tiled ring run
value_and_grad side by side, interleaved round by round, at moderate batches N with tiles
smaller than n (`--time N:TILE,...`, several tiles of one N interleaved with one ring).

    python bench/bench_loss_memory.py [--kind softmax|sigmoid] [--dim 512] [--tile-size 1024]
        [--time 8192:256,8192:512,16384:1024 --rounds 5]   (--rounds 0: memory only)
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from reasonclip_jax.parallel.losses import contrastive_loss  # noqa: E402

BATCH_AXES = ("data", "fsdp")
IMPLS = ("gather", "ring", "tiled_ring")
MiB = 2**20


def batch_mesh(world: int) -> Mesh:
    """A (world, 1, 1) mesh over the first `world` devices, Auto axes as in the trainer."""
    devices = np.asarray(jax.devices()[:world]).reshape(world, 1, 1)
    auto = (jax.sharding.AxisType.Auto,) * 3
    return Mesh(devices, ("data", "fsdp", "tensor"), axis_types=auto)


def loss_step(impl: str, kind: str, mesh: Mesh, tile_size: int):
    """`jit(value_and_grad)` of the loss w.r.t. img, txt, log_scale and bias."""

    def loss(img, txt, log_scale, bias):
        return contrastive_loss(
            img, txt, log_scale, bias, kind=kind, impl=impl, mesh=mesh, batch_axes=BATCH_AXES,
            tile_size=tile_size,
        )[0]

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))


def temp_bytes(impl: str, kind: str, mesh: Mesh, global_batch: int, dim: int,
               tile_size: int) -> int:
    """Compiled per-device temporary bytes of the loss's value and gradients."""
    emb = jax.ShapeDtypeStruct(
        (global_batch, dim), jnp.float32, sharding=NamedSharding(mesh, P(BATCH_AXES))
    )
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
    compiled = loss_step(impl, kind, mesh, tile_size).lower(emb, emb, scalar, scalar).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def print_table(title: str, rows: list[tuple[int, int, dict[str, int]]], dim: int,
                tile_size: int) -> None:
    print(title)
    header = (
        f"{'world':>5} {'N':>7} {'n':>6} | {'gather MiB':>10} {'ring MiB':>9} "
        f"{'tiled MiB':>9} | {'gather/ring':>11} {'tiled/gather':>12} | {'n*N*4 MiB':>9} "
        f"{'(n^2+n*D)*4 MiB':>15}"
    )
    print(header)
    print("-" * len(header))
    for world, n_global, mem in rows:
        n_local = n_global // world
        print(
            f"{world:>5} {n_global:>7} {n_local:>6} | {mem['gather'] / MiB:>10.1f} "
            f"{mem['ring'] / MiB:>9.1f} {mem['tiled_ring'] / MiB:>9.1f} | "
            f"{mem['gather'] / mem['ring']:>11.1f} {mem['tiled_ring'] / mem['gather']:>11.2%} | "
            f"{n_local * n_global * 4 / MiB:>9.1f} {(n_local**2 + n_local * dim) * 4 / MiB:>15.1f}"
        )
    print(f"(tiled: tile_size {tile_size}, or n where n is smaller)\n")


def time_rings(kind: str, global_batch: int, dim: int, tiles: list[int], rounds: int
               ) -> dict[str, list[float]]:
    """Seconds per value_and_grad call of the untiled ring ("ring") and the tiled ring in each
    of `tiles` ("tiled T") on 8 devices, interleaved so that machine noise hits all alike
    (after one warm-up call each)."""
    mesh = batch_mesh(8)
    rng = np.random.default_rng(0)
    pairs = rng.standard_normal((2, global_batch, dim)).astype(np.float32)
    pairs /= np.linalg.norm(pairs, axis=-1, keepdims=True)
    batch = NamedSharding(mesh, P(BATCH_AXES))
    args = (jax.device_put(pairs[0], batch), jax.device_put(pairs[1], batch),
            jnp.float32(np.log(10.0)), jnp.float32(-4.0))
    steps = {"ring": loss_step("ring", kind, mesh, 0)}
    steps.update({f"tiled {t}": loss_step("tiled_ring", kind, mesh, t) for t in tiles})
    for step in steps.values():
        jax.block_until_ready(step(*args))
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(step(*args))
            seconds[name].append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="softmax", choices=("softmax", "sigmoid"))
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--local-batch", type=int, default=2048)
    parser.add_argument("--tile-size", type=int, default=1024, help="tiled ring, memory tables")
    parser.add_argument("--time", default="8192:256,8192:512,16384:1024",
                        help="step time: global batch N and tiled ring tile, N:TILE,...")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if len(jax.devices()) < 8:
        raise SystemExit("needs 8 devices: run with XLA_FLAGS unset or with a device count of 8")

    def row(world: int, global_batch: int) -> tuple[int, int, dict[str, int]]:
        mesh = batch_mesh(world)
        return world, global_batch, {
            impl: temp_bytes(impl, args.kind, mesh, global_batch, args.dim, args.tile_size)
            for impl in IMPLS}

    print(f"{args.kind} contrastive loss, forward + backward, D={args.dim}, float32 embeddings;")
    print("compiled per-device temp_size_in_bytes (XLA memory_analysis), CPU backend.\n")
    growing_batch = [row(8, n) for n in (4096, 8192, 16384, 32768, 65536)]
    print_table("Global batch N grows on 8 devices (n = N / 8):", growing_batch, args.dim,
                args.tile_size)
    growing_world = [row(w, args.local_batch * w) for w in (2, 4, 8)]
    print_table(f"Local batch n = {args.local_batch} fixed, world size grows:", growing_world,
                args.dim, args.tile_size)

    mem = {n: m for _, n, m in growing_batch}
    print(f"tiled / gather at N=65536: {mem[65536]['tiled_ring'] / mem[65536]['gather']:.2%} "
          "(target <= 1%)")
    print(f"tiled growth N=32768 -> 65536: "
          f"x{mem[65536]['tiled_ring'] / mem[32768]['tiled_ring']:.2f} (target <= x2.2)\n")

    if not args.rounds:
        return
    tiles_by_batch: dict[int, list[int]] = {}
    for pair in args.time.split(","):
        global_batch, tile = (int(x) for x in pair.split(":"))
        tiles_by_batch.setdefault(global_batch, []).append(tile)
    print(f"Step time (value_and_grad) on 8 devices, {args.rounds} interleaved rounds; "
          "tiled / untiled ring as the median of per-round ratios:")
    for global_batch, tiles in tiles_by_batch.items():
        n_local = global_batch // 8
        seconds = time_rings(args.kind, global_batch, args.dim, tiles, args.rounds)
        ring = np.asarray(seconds["ring"])
        print(f"  N={global_batch} (n={n_local}): ring median {np.median(ring):.3f} s")
        for tile in tiles:
            tiled = np.asarray(seconds[f"tiled {tile}"])
            print(f"    tiled {tile} x {tile} ({(n_local // tile) ** 2} tiles per block): "
                  f"median {np.median(tiled):.3f} s, tiled / ring "
                  f"{np.median(tiled / ring):.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
