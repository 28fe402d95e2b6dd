"""Flax CLIP (or SigLIP) against transformers' PyTorch CLIPModel (or SiglipModel) on this CPU:
the forward, and with `--train` the trainer's own update step against an eager PyTorch step.

    python bench/bench_model.py --train [--preset ViT-B-32] [--batch 32] [--repeats 7]
    python bench/bench_model.py --train --profile /tmp/step_profile   (per-part breakdown)
    python bench/bench_model.py --preset ViT-B-16-SigLIP --batch 8 --train

Both sides get the same weights (converted), the same inputs, fp32 and the same thread count
(`--threads`, default 2; PyTorch through `torch.set_num_threads`, XLA through its host
thread pool, which takes the machine's cores). Each is warmed up (compile / first call),
then timed over `--repeats` rounds, each round one JAX call then one PyTorch call, so load
from other jobs hits both alike. Printed: median seconds per side, the median of the
per-round ratios JAX/PyTorch (below 1: JAX is faster), each side's CPU seconds per call, and
the load average before and after.

`--train`, JAX: the trainer's update (`train/trainer.py`'s `build_program`: `train_step`
jitted with its shardings and buffer donation) of a stage-0 config (`configs/stage0.py`:
softmax InfoNCE for CLIP, the sigmoid loss with the logit bias for SigLIP; the project's
optimizer: per-group AdamW, clipping at global norm 1, the logit-scale cap), fp32, no
rematerialisation, one device. PyTorch: `model(..., return_loss=True)` (the same loss),
backward, the same clipping, `torch.optim.AdamW`, eager.

`--profile DIR`: one more step of each side under its profiler (`jax.profiler` trace and
the compiled HLO into DIR, `torch.profiler`), summed by part of the model.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
# A CPU-against-CPU bench: without this an installed libtpu probes for TPUs and logs.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hf_reference import hf_clip, hf_siglip  # noqa: E402

from configs import stage0  # noqa: E402
from reasonclip_jax.data import pipeline  # noqa: E402
from reasonclip_jax.models.clip import CLIP, ModelConfig, get_preset, normalize_pixels  # noqa: E402
from reasonclip_jax.parallel import sharding  # noqa: E402
from reasonclip_jax.tools import convert  # noqa: E402
from reasonclip_jax.train import trainer  # noqa: E402

Call = Callable[[], None]


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


# --------------------------------------------------------------------------- JAX side


def train_config(model_config: ModelConfig, preset: str, batch: int
                 ) -> ml_collections.ConfigDict:
    """configs/stage0.py for `preset` at `batch` on one device, fp32, no remat."""
    config = stage0.get_config()
    config.model.preset = preset
    config.model.dtype = "float32"
    config.model.remat_policy = "none"
    config.input.image_size = model_config.image_size
    config.input.context_length = model_config.context_length
    config.input.tokenizer = model_config.tokenizer
    config.input.batch_size = batch
    config.grad_accum.micro_batches = 1
    config.num_devices = 1
    config.loss.kind = "sigmoid" if model_config.family == "siglip" else "softmax"
    return config


def jax_train_step(config: ml_collections.ConfigDict, params: Any, batch: dict[str, np.ndarray]
                   ) -> tuple[Call, Any]:
    """The trainer's program for `config` (`trainer.build_program`: its jitted update with
    shardings and donation) on `params`, compiled as the trainer traces it; returns a call
    that runs one step, its outputs fed back as the trainer does, and the compiled step."""
    mesh = sharding.make_mesh(config.mesh, jax.devices()[: config.num_devices])
    program = trainer.build_program(config, mesh)
    params = jax.device_put(params, program.params_sharding)
    state = jax.jit(program.init_state, out_shardings=program.state_sharding)(params)
    global_batch = pipeline.make_global_batch(batch, mesh, sharding.BATCH_AXES)
    with sharding.activation_sharding(mesh):
        compiled = program.update.lower(params, state, global_batch).compile()
    held = {"params": params, "state": state}

    def call() -> None:
        held["params"], held["state"], metrics = compiled(held["params"], held["state"],
                                                          global_batch)
        jax.block_until_ready(metrics)

    return call, compiled


# --------------------------------------------------------------------------- PyTorch side


def torch_train_step(hf: torch.nn.Module, pixels: torch.Tensor, tokens: torch.Tensor) -> Call:
    """Eager forward with the model's contrastive loss, backward, clipping, AdamW."""
    hf.train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-5, weight_decay=0.0)

    def call() -> None:
        out = hf(input_ids=tokens, pixel_values=pixels, return_loss=True)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()

    return call


# --------------------------------------------------------------------------- profiles


def _jax_part(op_name: str, hlo_name: str) -> str:
    """The part of the step an XLA op belongs to, from its HLO name and op_name metadata."""
    if re.match(r"(wrapped_broadcast|broadcast)", hlo_name) and "CLIP" not in op_name:
        return "zero fills (loop buffers)"
    if "CLIP" not in op_name:
        return "optimizer and loss"
    if re.search(r"dynamic[-_](update[-_])?slice|/while/body/closed_call$|while/body$",
                 op_name) or re.match(r"(bitcast_)?dynamic", hlo_name):
        return "layer loop (slices, stacking)"
    if re.search(r"conv1|patch_embedding", op_name):
        return "patch embedding"
    if re.search(r"/(query|key|value|out)/dot_general", op_name):
        return "attention projections (matmul)"
    if re.search(r"/(c_fc|c_proj)/dot_general", op_name):
        return "MLP (matmul)"
    if re.search(r"/(attn|attention)/", op_name):
        return "attention core"
    if re.search(r"/mlp/", op_name):
        return "MLP activation"
    if re.search(r"/ln_|/ln/|layer_norm", op_name):
        return "layer norm"
    return "other model ops"


def jax_profile(call: Call, compiled: Any, directory: str) -> dict[str, float]:
    """Seconds per part of one profiled step (the XLA ops' durations, summed)."""
    jax.profiler.start_trace(directory)
    call()
    jax.profiler.stop_trace()
    hlo = compiled.as_text()
    with open(os.path.join(directory, "step.hlo.txt"), "w") as f:
        f.write(hlo)
    op_names = dict(re.findall(r'^\s*(?:ROOT )?%([\w.\-]+) = .*?op_name="([^"]*)"', hlo,
                               flags=re.M))
    path = sorted(glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True))[-1]
    parts: collections.Counter[str] = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):  # XLA's worker threads
                continue
            for event in line.events:
                if event.name.startswith(("Thunk", "Slinky", "Threadpool", "end:")):
                    continue
                parts[_jax_part(op_names.get(event.name, ""), event.name)] += (
                    event.duration_ns / 1e9)
    return dict(parts)


def _torch_part(name: str) -> str:
    if re.search(r"scaled_dot_product|_softmax|bmm|baddbmm", name):
        return "attention core"
    if re.search(r"aten::(addmm|mm|linear|matmul)$", name):
        return "matmuls (projections, MLP)"
    if "layer_norm" in name:
        return "layer norm"
    if "convolution" in name:
        return "patch embedding"
    return "elementwise, copies, other"


def torch_profile(call: Call) -> dict[str, float]:
    """Seconds per part of one profiled step (self CPU time of the ATen ops), with the
    optimizer's ops (inside `Optimizer.step`) on their own."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        call()
    events = prof.events()
    steps = [(e.time_range.start, e.time_range.end) for e in events
             if e.name.startswith("Optimizer.step")]
    parts: collections.Counter[str] = collections.Counter()
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        in_opt = any(s <= e.time_range.start < t for s, t in steps)
        parts["optimizer and loss" if in_opt else _torch_part(e.name)] += (
            e.self_cpu_time_total / 1e6)
    return dict(parts)


def print_profiles(jax_parts: dict[str, float], torch_parts: dict[str, float]) -> None:
    print("\none profiled step, seconds by part (op durations summed; parts differ between "
          "the two sides where their ops do)")
    for side, parts in (("JAX (XLA ops)", jax_parts), ("PyTorch (ATen ops)", torch_parts)):
        total = sum(parts.values())
        print(f"{side}: {total:.2f} s")
        for part, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"  {part:34s} {seconds:7.2f} s {100 * seconds / total:5.1f}%")


# --------------------------------------------------------------------------- main


def interleaved(jax_fn: Call, torch_fn: Call, repeats: int
                ) -> tuple[list[float], list[float], list[float], list[float]]:
    """Wall and CPU seconds of `repeats` rounds of (JAX call, PyTorch call)."""
    jax_fn(), torch_fn()  # compile / warm up
    walls: dict[str, list[float]] = {"jax": [], "torch": []}
    cpus: dict[str, list[float]] = {"jax": [], "torch": []}
    for _ in range(repeats):
        for side, fn in (("jax", jax_fn), ("torch", torch_fn)):
            cpu, start = cpu_seconds(), time.perf_counter()
            fn()
            walls[side].append(time.perf_counter() - start)
            cpus[side].append(cpu_seconds() - cpu)
    return walls["jax"], walls["torch"], cpus["jax"], cpus["torch"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="PyTorch's intra-op threads")
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--profile", default="", help="a directory: profile one train step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = get_preset(args.preset)
    siglip = config.family == "siglip"
    hf = hf_siglip(config) if siglip else hf_clip(config)
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    params, _ = convert.import_state_dict("hf", state, hf.config.to_dict())
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (args.batch, config.image_size, config.image_size, 3),
                          dtype=np.uint8)  # raw pixels, as the input pipeline ships them
    tokens = rng.integers(1, min(config.vocab_size, 49406),
                          (args.batch, config.context_length)).astype(np.int32)
    if not siglip:  # CLIP pools its end token; SigLIP the last position
        tokens[:, -1] = config.eot_token_id
    pixels_t = torch.tensor(np.asarray(normalize_pixels(pixels, config.family))
                            ).permute(0, 3, 1, 2).contiguous()
    tokens_t = torch.tensor(tokens, dtype=torch.long)

    model = CLIP(config)
    forward = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
    params_j, pixels_j, tokens_j = jax.device_put((params, pixels, tokens))

    def jax_forward() -> None:
        jax.block_until_ready(forward(params_j, pixels_j, tokens_j))

    def torch_forward() -> None:
        with torch.no_grad():
            hf(input_ids=tokens_t, pixel_values=pixels_t)

    rows: list[tuple[str, Call, Call]] = [("forward", jax_forward, torch_forward)]
    compiled = None
    if args.train:
        batch = {"image": pixels, "text": tokens}
        jax_train, compiled = jax_train_step(train_config(config, args.preset, args.batch),
                                             params, batch)
        rows.append(("train step", jax_train, torch_train_step(hf, pixels_t, tokens_t)))

    print(f"{args.preset}, batch {args.batch}, fp32, PyTorch threads {args.threads}, "
          f"{os.cpu_count()} CPUs, jax {jax.__version__}, torch {torch.__version__}; "
          f"load average {load_average()}")
    print(f"{'':11s} {'JAX (s)':>8s} {'PyTorch (s)':>12s} {'JAX/PyTorch':>12s} "
          f"{'JAX CPU s':>10s} {'PyTorch CPU s':>14s}")
    for name, jax_fn, torch_fn in rows:
        jw, tw, jc, tc = interleaved(jax_fn, torch_fn, args.repeats)
        ratio = statistics.median([a / b for a, b in zip(jw, tw, strict=True)])
        print(f"{name:11s} {statistics.median(jw):8.3f} {statistics.median(tw):12.3f} "
              f"{ratio:12.3f} {statistics.median(jc):10.2f} {statistics.median(tc):14.2f}",
              flush=True)
    print(f"load average after: {load_average()}  (JAX/PyTorch: median of per-round ratios)")

    if args.profile and args.train:
        os.makedirs(args.profile, exist_ok=True)
        print_profiles(jax_profile(rows[-1][1], compiled, args.profile),
                       torch_profile(rows[-1][2]))


if __name__ == "__main__":
    main()
