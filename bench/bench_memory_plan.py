"""The analytic memory model against XLA's compiled peak of the trainer's update step.

Compiles (never runs) the step of each case ahead of time, on 8 simulated CPU devices or for
a TPU topology through libtpu, and prints XLA's peak bytes per device (arguments + outputs -
aliased + temporaries; on TPUs XLA's own peak, with that sum in the last column) beside the
analytic breakdown (`reasonclip_jax/scaling/memory_model.py`)
as a Markdown table. A case is PRESET:GLOBAL_BATCH:IMPL:REMAT:MICRO_BATCHES[:sigmoid].

    python bench/bench_memory_plan.py [--target cpu | v5e:2x2] [--cases tiny:512:gather:none:1]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import time  # noqa: E402

from configs import common  # noqa: E402
from reasonclip_jax.models.clip import get_preset  # noqa: E402
from reasonclip_jax.scaling import compiled_memory, memory_model  # noqa: E402

DEFAULT_CASES = (
    "tiny:512:gather:none:1,tiny:2048:ring:none:1,tiny:2048:tiled_ring:none:1:sigmoid,"
    "tiny:2048:gather:full:4,tiny:2048:ring:dots_no_batch:2,ViT-B-32:256:gather:none:1,"
    "ViT-B-32:256:tiled_ring:full:2,ViT-B-32:512:gather:dots_no_batch:1"
)
MiB = 2**20


def case_config(case: str):
    preset, batch, impl, remat, micro, *kind = case.split(":")
    c = common.base_config()
    c.model.preset, c.model.remat_policy = preset, remat
    model = get_preset(preset)
    c.input.image_size, c.input.context_length = model.image_size, model.context_length
    c.input.batch_size = int(batch)
    c.loss.impl, c.loss.kind, c.loss.tile_size = impl, (kind or ["softmax"])[0], 64
    if c.loss.kind == "sigmoid":
        c.model.overrides = {"logit_bias_init": -10.0}
    c.grad_accum = dict(micro_batches=int(micro), mode="gradcache")
    return c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="cpu", help="cpu (8 simulated devices) or a TPU "
                        "topology such as v5e:2x2")
    parser.add_argument("--cases", default=DEFAULT_CASES)
    args = parser.parse_args()
    target = (compiled_memory.local_target() if args.target == "cpu"
              else compiled_memory.tpu_target(args.target))
    print(f"{target.name}, {target.num_devices} devices; bf16 model, stage 1, MiB per device\n")
    print("| case | compiled peak | analytic | analytic / compiled | params + state | "
          "gradients | activations | recompute | loss | update | compile s | "
          "args + out - aliased + temp |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in args.cases.split(","):
        c = case_config(case)
        start = time.perf_counter()
        compiled = compiled_memory.compile_step(c, target.devices)
        seconds = time.perf_counter() - start
        e = memory_model.estimate(c, target.num_devices, target.platform, target.num_slices)
        by_sum = (compiled.argument_bytes + compiled.output_bytes - compiled.alias_bytes
                  + compiled.temp_bytes)
        print(f"| {case} | {compiled.peak_bytes / MiB:,.0f} | {e.peak / MiB:,.0f} | "
              f"{e.peak / compiled.peak_bytes:.3f} | "
              f"{(e.params + e.optimizer_state) / MiB:,.0f} | {e.gradients / MiB:,.0f} | "
              f"{e.activations / MiB:,.0f} | {e.recomputation / MiB:,.0f} | "
              f"{e.loss / MiB:,.0f} | {e.update / MiB:,.0f} | {seconds:.0f} | "
              f"{by_sum / MiB:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
