"""The GPU check, one command on one GPU in under 8 minutes: the attention implementations
side by side, train-step MFU of ViT-B-16 and ViT-L-14 in bf16, and the largest global batch
each contrastive loss implementation (gather, ring, tiled ring) fits on the device.

    python bench/gpu_check.py [--batch-b16 256] [--batch-l14 128] [--steps 10]
        [--attention-impl cudnn] [--loss-impls gather,ring,tiled_ring]
    python bench/gpu_check.py --presets tiny --loss-impls ''     (a CPU dry run)

Attention: forward + backward of one layer's attention at each tower's shapes, einsum /
xla / cudnn (`models/layers.py`), bf16, median of 20
(`bench/bench_attention.py`); an implementation that cannot run prints its error.
The train step is the trainer's: stage-1 objective (one image, two captions), AdamW groups,
clipping, remat of dots, bf16 compute over fp32 parameters, `--attention-impl` (cudnn by
default; xla, with the reason printed, where cuDNN refuses), on synthetic inputs. MFU is the
analytic model FLOPs (flops.train_flops_per_example) per second over the device's peak
dense bf16 FLOP/s. The loss-size search compiles each loss implementation (forward +
backward, D=768; the tiled ring in 1,024 x 1,024 tiles) for growing N and reads XLA's memory
analysis against the device's memory. Each section prints its elapsed time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from bench_attention import compare_impls, print_table  # noqa: E402

from configs import common  # noqa: E402
from reasonclip_jax.models import flops  # noqa: E402
from reasonclip_jax.models.clip import CLIP, get_preset, init_params  # noqa: E402
from reasonclip_jax.parallel import losses, sharding  # noqa: E402
from reasonclip_jax.train import mfu, optimizer, stages  # noqa: E402


def peak_flops(device: jax.Device) -> float:
    """The trainer's peak dense bf16 FLOP/s for this device kind (NaN: not in the table)."""
    return mfu.peak_flops_per_device(device.device_kind) or float("nan")


def train_step_mfu(preset: str, batch: int, steps: int, mesh, attention_impl: str
                   ) -> dict[str, float]:
    config = common.base_config()
    config.total_steps = 1000
    model = CLIP(get_preset(preset), dtype=jnp.bfloat16, remat_policy="dots_no_batch",
                 attention_impl=attention_impl)
    objective = stages.Objective("stage1", model, config.loss, mesh, sharding.BATCH_AXES,
                                 config.total_steps)
    opt = optimizer.make_optimizer(config, config.total_steps)
    params = jax.jit(lambda r: nn.unbox(init_params(model, r)))(jax.random.key(0))
    opt_state = jax.jit(opt.tx.init)(params)
    c = model.config
    rng = np.random.default_rng(0)
    batch_arrays = {
        "image": jnp.asarray(rng.standard_normal((batch, c.image_size, c.image_size, 3)),
                             jnp.float32),
        "text_desc": jnp.asarray(rng.integers(1, 49406, (batch, 77)), jnp.int32),
        "text_reason": jnp.asarray(rng.integers(1, 49406, (batch, 77)), jnp.int32),
    }

    @jax.jit
    def step(params, opt_state, batch_arrays, i):
        def loss_fn(p):
            return objective.loss(p, objective.embed(p, batch_arrays), batch_arrays, i)

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params, opt_state, loss = step(params, opt_state, batch_arrays, 0)  # compile
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, batch_arrays, i)
    jax.block_until_ready(loss)
    seconds = (time.perf_counter() - start) / steps
    model_flops = flops.train_flops_per_example(c, 77, texts=2) * batch
    return dict(step_s=seconds, samples_per_s=batch / seconds,
                mfu=model_flops / seconds / (peak_flops(jax.devices()[0]) * jax.device_count()))


def largest_loss_batch(impl: str, mesh, dim: int = 768, tile_size: int = 1024) -> int:
    """Largest N (powers of two, then a bisection in steps of `tile_size`) whose loss
    compiles within memory; -1 where the device reports no memory limit (CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit", 0)
    if not limit:
        return -1

    def fits(n: int) -> bool:
        x = jax.ShapeDtypeStruct((n, dim), jnp.float32)
        s = jax.ShapeDtypeStruct((), jnp.float32)
        fn = jax.jit(jax.value_and_grad(
            lambda a, b, t: losses.contrastive_loss(a, b, t, impl=impl, mesh=mesh,
                                                    tile_size=tile_size)[0],
            argnums=(0, 1)))
        try:
            m = fn.lower(x, x, s).compile().memory_analysis()
        except Exception:  # noqa: BLE001 (a compile that runs out of memory)
            return False
        return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes < limit

    n = 4096
    while fits(n * 2) and n < 2**22:
        n *= 2
    lo, hi = n, n * 2
    while hi - lo > tile_size:
        mid = (lo + hi) // 2 // tile_size * tile_size
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-b16", type=int, default=256)
    parser.add_argument("--batch-l14", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--presets", default="ViT-B-16,ViT-L-14", help="tiny: a CPU dry run")
    parser.add_argument("--attention-impl", default="cudnn",
                        help="the train steps' attention (models/layers.py ATTENTION_IMPLS)")
    parser.add_argument("--loss-impls", default="gather,ring,tiled_ring")
    args = parser.parse_args()
    device = jax.devices()[0]
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
    print(f"device: {device.device_kind} x{jax.device_count()}, peak bf16 "
          f"{peak_flops(device) / 1e12:.0f} TFLOP/s, jax {jax.__version__}")
    batches = {"ViT-B-16": args.batch_b16, "ViT-L-14": args.batch_l14}
    presets = args.presets.split(",")
    start = time.perf_counter()

    def elapsed() -> str:
        return f"[{time.perf_counter() - start:5.0f} s]"

    for preset in presets:
        print(f"\nattention, {preset}, batch {batches.get(preset, 8)}, one layer, bf16, "
              f"forward + backward, median of 20 {elapsed()}")
        impls = ["einsum", "xla", "cudnn"]
        print_table(compare_impls(get_preset(preset), batches.get(preset, 8), impls,
                                  jnp.dtype(jnp.bfloat16), 20, stack_layers=False), impls)
    print(flush=True)
    for preset in presets:
        batch = batches.get(preset, 8)
        impl = args.attention_impl
        try:
            r = train_step_mfu(preset, batch, args.steps, mesh, impl)
        except Exception as e:  # noqa: BLE001 (cuDNN refusing a shape or dtype)
            print(f"{preset}: attention '{impl}' failed ({type(e).__name__}: "
                  f"{str(e).splitlines()[0][:100]}); train step with 'xla'")
            impl = "xla"
            r = train_step_mfu(preset, batch, args.steps, mesh, impl)
        print(f"{preset:9s} batch {batch:4d}, attention {impl:6s}: "
              f"{r['step_s'] * 1e3:8.1f} ms/step {r['samples_per_s']:8.1f} samples/s  "
              f"MFU {100 * r['mfu']:5.1f}% {elapsed()}", flush=True)
    for impl in filter(None, args.loss_impls.split(",")):
        print(f"largest softmax loss batch ({impl}, D=768, fwd+bwd): "
              f"{largest_loss_batch(impl, mesh)} {elapsed()}", flush=True)


if __name__ == "__main__":
    main()
