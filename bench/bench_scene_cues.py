"""How fast can an image model learn to read the scenes' state cues? A supervised probe.

    python bench/bench_scene_cues.py [--steps 300] [--train-scenes 2000] [--test-scenes 500]
    # the demo's image tower (configs/demo.py): 48 px, width 128
    python bench/bench_scene_cues.py --image-size 48 --no-cnn \
        --vit vision_width=128,vision_heads=4,vision_mlp_dim=512

The demo's benchmark asks which state of a known family a scene shows. This trains, with
labels instead of captions, image models to answer exactly that (softmax over the family's
states, one term per fact of a scene) and reports their held-out accuracy: the tiny CLIP
preset's image tower (patch-8 ViT, 2 layers, width 64, from scratch), any `--vit` variants
of it, and a small CNN (three 3x3 stride-2 convolutions and a dense layer). Same scenes,
optimizer (AdamW, warmup + cosine), batch and steps. If a ViT stays near chance where the
CNN does not, the cues are learnable and the bottleneck is that tower's learning speed,
not the data or the contrastive recipe.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from data_pipeline.synthetic import scenes  # noqa: E402
from reasonclip_jax.models.clip import CLIP, get_preset  # noqa: E402

FAMILY_INDEX = {f.name: i for i, f in enumerate(scenes.FAMILIES)}
MAX_STATES = max(len(f.states) for f in scenes.FAMILIES)
# Logit mask: a family's head only scores that family's states.
STATE_MASK = np.array([[0.0 if s < len(f.states) else -1e9 for s in range(MAX_STATES)]
                       for f in scenes.FAMILIES], np.float32)


def load(num: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 images [N, S, S, 3], families [N, 3] and states [N, 3] of scenes 0..num-1."""
    images, families, states = [], [], []
    for index in range(num):
        spec = scenes.sample_spec(scenes.scene_rng(index, seed))  # make_scene's spec
        images.append(np.asarray(scenes.make_scene(index, seed, size).image))
        families.append([FAMILY_INDEX[f.family] for f in spec.facts])
        states.append([f.state for f in spec.facts])
    return np.stack(images), np.array(families), np.array(states)


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = images.astype(jnp.float32) / 255.0 - 0.5
        for width in (32, 64, 64):
            x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2))(x))
        return nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1)))


class TinyClipTower(nn.Module):
    image_size: int
    overrides: tuple = ()  # (field, value) pairs of the tiny preset to replace

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        config = get_preset("tiny", image_size=self.image_size, **dict(self.overrides))
        clip = CLIP(config, name="clip")
        return clip.encode_image(images)  # the projected, unnormalised image embedding


class StateProbe(nn.Module):
    """Features -> per-family state logits [B, families, MAX_STATES]."""

    backbone: nn.Module

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        logits = nn.Dense(len(scenes.FAMILIES) * MAX_STATES)(self.backbone(images))
        return logits.reshape(-1, len(scenes.FAMILIES), MAX_STATES) + STATE_MASK


def fact_logits(logits: jax.Array, families: jax.Array) -> jax.Array:
    """[B, 3, MAX_STATES]: each fact's logits over its family's states."""
    return jnp.take_along_axis(logits, families[:, :, None], axis=1)


def probe(backbone: nn.Module, data: dict, steps: int, batch: int, lr: float) -> dict:
    model = StateProbe(backbone)
    (x_train, f_train, s_train), (x_test, f_test, s_test) = data["train"], data["test"]
    params = nn.meta.unbox(model.init(jax.random.key(0), x_train[:2])["params"])
    opt = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, steps // 10, steps),
                      weight_decay=0.0)

    def loss_fn(params, x, f, s):
        logits = fact_logits(model.apply({"params": params}, x), f)
        return optax.softmax_cross_entropy_with_integer_labels(logits, s).mean()

    @jax.jit
    def step(params, opt_state, x, f, s):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, f, s)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, rng = opt.init(params), np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps):
        idx = rng.choice(len(x_train), batch, replace=False)
        params, opt_state, loss = step(params, opt_state, x_train[idx], f_train[idx],
                                       s_train[idx])
    loss = float(loss)
    seconds = time.perf_counter() - start
    logits = jax.jit(model.apply)({"params": params}, x_test)
    predicted = np.asarray(fact_logits(logits, f_test).argmax(-1))
    return {"accuracy": float((predicted == s_test).mean()), "train_loss": loss,
            "seconds": seconds, "params": sum(p.size for p in jax.tree.leaves(params))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-scenes", type=int, default=2000)
    parser.add_argument("--test-scenes", type=int, default=500)
    parser.add_argument("--vit", action="append", default=[],
                        help="a ViT variant as FIELD=VALUE,... of the tiny preset "
                             "(e.g. patch_size=4); repeatable; the tiny preset always runs")
    parser.add_argument("--no-cnn", action="store_true", help="skip the CNN")
    args = parser.parse_args()
    data = {"train": load(args.train_scenes, 0, args.image_size),
            "test": load(args.test_scenes, 1, args.image_size)}
    chance = float(np.mean([1 / len(scenes.FAMILIES[f].states) for f in data["test"][1].ravel()]))
    print(f"state given family, {args.test_scenes} held-out scenes x 3 facts, chance "
          f"{chance:.3f}; {args.steps} steps of {args.batch}, AdamW {args.lr:g}")
    variants = [("tiny CLIP ViT", TinyClipTower(args.image_size))]
    for spec in args.vit:
        overrides = tuple((k, int(v)) for k, v in (kv.split("=") for kv in spec.split(",")))
        variants.append((f"ViT {spec}", TinyClipTower(args.image_size, overrides)))
    if not args.no_cnn:
        variants.append(("small CNN", SmallCNN()))
    for name, backbone in variants:
        r = probe(backbone, data, args.steps, args.batch, args.lr)
        print(f"  {name:14s} accuracy {r['accuracy']:.3f}  train loss {r['train_loss']:.3f}  "
              f"{r['params']:,} params  {r['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
