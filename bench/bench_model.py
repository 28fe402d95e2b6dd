"""Flax CLIP (or SigLIP) forward and train step against transformers' PyTorch CLIPModel (or
SiglipModel), on this CPU.

    python bench/bench_model.py [--preset ViT-B-32] [--batch 32] [--repeats 5] [--train]
    python bench/bench_model.py --preset ViT-B-16-SigLIP --batch 8 --train

Both sides get the same random weights (converted), the same inputs, fp32, and the same
thread count; each is warmed up (JIT compile / first call), then timed over `--repeats`
calls, interleaved, so machine noise hits both alike. Prints medians and the ratio
PyTorch / JAX (above 1: JAX is faster). `--train` also times one optimisation step
(forward, contrastive loss, backward, AdamW) on each side: softmax InfoNCE for CLIP, the
sigmoid loss with the logit bias for SigLIP (transformers' `return_loss=True` of each).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
from hf_reference import hf_clip, hf_siglip  # noqa: E402

from reasonclip_jax.models.clip import CLIP, get_preset  # noqa: E402
from reasonclip_jax.parallel import losses  # noqa: E402
from reasonclip_jax.tools import convert  # noqa: E402


def _median_time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())

    config = get_preset(args.preset)
    siglip = config.family == "siglip"
    hf = hf_siglip(config) if siglip else hf_clip(config)
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    params, _ = convert.import_state_dict("hf", state, hf.config.to_dict())
    params = jax.device_put(params)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, config.image_size, config.image_size, 3),
                                 dtype=np.float32)
    tokens = rng.integers(1, min(config.vocab_size, 49406),
                          (args.batch, config.context_length)).astype(np.int32)
    if not siglip:  # CLIP pools its end token; SigLIP the last position
        tokens[:, -1] = config.eot_token_id
    model = CLIP(config)

    forward = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
    images_j, tokens_j = jnp.asarray(images), jnp.asarray(tokens)
    pixels_t = torch.tensor(images).permute(0, 3, 1, 2).contiguous()
    tokens_t = torch.tensor(tokens, dtype=torch.long)

    def jax_forward():
        jax.block_until_ready(forward(params, images_j, tokens_j))

    def torch_forward():
        with torch.no_grad():
            hf(input_ids=tokens_t, pixel_values=pixels_t)

    rows = [("forward", jax_forward, torch_forward)]

    if args.train:
        tx = optax.adamw(1e-5, weight_decay=0.0)
        opt_state = tx.init(params)

        def loss_fn(p):
            out = model.apply({"params": p}, images_j, tokens_j)
            if siglip:
                return losses.sigmoid_contrastive_loss_dense(
                    out["image_embeds"], out["text_embeds"], out["logit_scale"],
                    out["logit_bias"])
            return losses.softmax_contrastive_loss_dense(
                out["image_embeds"], out["text_embeds"], out["logit_scale"])

        @jax.jit
        def jax_step(p, s):
            grads = jax.grad(loss_fn)(p)
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s

        holder = {"p": params, "s": opt_state}

        def jax_train():
            holder["p"], holder["s"] = jax.block_until_ready(jax_step(holder["p"], holder["s"]))

        hf.train()
        torch_opt = torch.optim.AdamW(hf.parameters(), lr=1e-5, weight_decay=0.0)

        def torch_train():
            out = hf(input_ids=tokens_t, pixel_values=pixels_t, return_loss=True)
            torch_opt.zero_grad()
            out.loss.backward()
            torch_opt.step()

        rows.append(("train step", jax_train, torch_train))

    print(f"{args.preset}, batch {args.batch}, fp32, {os.cpu_count()} CPU threads, "
          f"jax {jax.__version__}, torch {torch.__version__}")
    print(f"{'':12s} {'JAX (s)':>9s} {'PyTorch (s)':>12s} {'PyTorch/JAX':>12s}")
    for name, jax_fn, torch_fn in rows:
        jax_fn(), torch_fn()  # compile / warm up
        jax_times, torch_times = [], []
        for _ in range(args.repeats):  # interleaved
            jax_times += _median_time(jax_fn, 1)
            torch_times += _median_time(torch_fn, 1)
        j, t = statistics.median(jax_times), statistics.median(torch_times)
        print(f"{name:12s} {j:9.3f} {t:12.3f} {t / j:12.2f}")


if __name__ == "__main__":
    main()
