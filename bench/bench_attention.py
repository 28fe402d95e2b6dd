"""Attention implementations side by side (`models/layers.py` ATTENTION_IMPLS): forward and
backward of one attention at a tower's shapes, each implementation timed in turn, interleaved,
median per implementation and its time over the einsum one's.

    python bench/bench_attention.py [--preset ViT-B-32] [--batch 32] [--repeats 20]
    python bench/bench_attention.py --impls einsum,xla,cudnn --dtype bfloat16   (GPU)

Rows: the image tower's self-attention, the text tower's (causal for CLIP), and for SigLIP
its pooling head's one query; each tower's layers stacked on the batch axis (one call with
the tower's attention FLOPs). `cudnn` runs on NVIDIA GPUs in bf16/fp16 only; an
implementation that cannot run on this device prints its error instead of a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from reasonclip_jax.models import layers  # noqa: E402
from reasonclip_jax.models.clip import get_preset  # noqa: E402
from reasonclip_jax.models.config import ModelConfig  # noqa: E402


def attention_shapes(config: ModelConfig, batch: int, stack_layers: bool = True
                     ) -> dict[str, tuple[int, int, int, int, bool]]:
    """Name -> (batch, queries, keys, heads, causal) of each attention of the model; with
    `stack_layers`, a tower's layers are stacked on the batch axis (its FLOPs, one call)."""
    patches = (config.image_size // config.patch_size) ** 2
    siglip = config.family == "siglip"
    image_len = patches if siglip else patches + 1  # CLIP has a class token
    vision, text = ((config.vision_layers, config.text_layers) if stack_layers else (1, 1))
    shapes = {
        "image": (batch * vision, image_len, image_len, config.vision_heads, False),
        "text": (batch * text, config.context_length, config.context_length,
                 config.text_heads, not siglip),
    }
    if siglip:
        shapes["pool head"] = (batch, 1, patches, config.vision_heads, False)
    return shapes


def attention_step(impl: str, shape: tuple[int, int, int, int, bool], head_dim: int,
                   dtype: jnp.dtype) -> Callable[[], None]:
    """A jitted forward + backward of one attention call, compiled; returns a timed call."""
    b, t, s, heads, causal = shape
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((b, t, heads, head_dim)), dtype)
    k, v = (jnp.asarray(rng.standard_normal((b, s, heads, head_dim)), dtype) for _ in "kv")

    @jax.jit
    def fwd_bwd(q, k, v):
        def loss(q, k, v):
            out = layers.dot_product_attention(q, k, v, impl=impl, causal=causal)
            return jnp.sum(out.astype(jnp.float32) ** 2)
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    jax.block_until_ready(fwd_bwd(q, k, v))  # compile; raises where the impl cannot run
    return lambda: jax.block_until_ready(fwd_bwd(q, k, v))


def compare_impls(config: ModelConfig, batch: int, impls: list[str], dtype: jnp.dtype,
                  repeats: int, stack_layers: bool = True
                  ) -> dict[str, dict[str, float | str]]:
    """Row -> impl -> median seconds of forward + backward (or the error's first line)."""
    results: dict[str, dict[str, float | str]] = {}
    for row, shape in attention_shapes(config, batch, stack_layers).items():
        width = config.vision_width if row != "text" else config.text_width
        heads = shape[3]
        calls, out = {}, {}
        for impl in impls:
            try:
                calls[impl] = attention_step(impl, shape, width // heads, dtype)
            except Exception as e:  # noqa: BLE001 (reported in the table)
                out[impl] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
        times: dict[str, list[float]] = {impl: [] for impl in calls}
        for _ in range(repeats):  # interleaved
            for impl, call in calls.items():
                start = time.perf_counter()
                call()
                times[impl].append(time.perf_counter() - start)
        out.update({impl: statistics.median(t) for impl, t in times.items()})
        results[row] = out
    return results


def print_table(results: dict[str, dict[str, float | str]], impls: list[str]) -> None:
    base = impls[0]
    print(f"{'':10s} " + " ".join(f"{impl + ' (ms)':>12s}" for impl in impls)
          + "".join(f"  {impl + '/' + base:>12s}" for impl in impls[1:]))
    for row, out in results.items():
        cells = [f"{out[i] * 1e3:12.2f}" if isinstance(out[i], float) else f"{'error':>12s}"
                 for i in impls]
        ratios = [f"  {out[i] / out[base]:12.3f}"
                  if isinstance(out[i], float) and isinstance(out[base], float)
                  else f"  {'-':>12s}" for i in impls[1:]]
        print(f"{row:10s} " + " ".join(cells) + "".join(ratios))
        for impl in impls:
            if isinstance(out[impl], str):
                print(f"{'':10s} {impl}: {out[impl]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--impls", default="einsum,xla", help="the first is the baseline")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    impls = args.impls.split(",")
    config = get_preset(args.preset)
    print(f"{args.preset}, batch {args.batch}, {args.dtype}, forward + backward, "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}, median of {args.repeats}")
    print_table(compare_impls(config, args.batch, impls, jnp.dtype(args.dtype), args.repeats),
                impls)


if __name__ == "__main__":
    main()
