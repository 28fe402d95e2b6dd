"""Embeds images and texts with a project checkpoint.

    python -m reasonclip_jax.encode --checkpoint CKPT_DIR --images a.jpg b.png \
        --texts-file captions.txt --output embeds.npz

Writes L2-normalised `image_embeds` [num_images, D] and `text_embeds` [num_texts, D]
(one text per line of the file) and `logit_scale` (the exponentiated scale). Images are
preprocessed as OpenAI CLIP does: bicubic resize of the short side, centre crop, CLIP
mean/std.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reasonclip_jax import checkpoint, image_transforms, tokenizer
from reasonclip_jax.errors import UserError, exit_on_user_error
from reasonclip_jax.model import CLIP, ModelConfig


def load_images(paths: Sequence[str], size: int) -> np.ndarray:
    out = []
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"image {path} does not exist")
        with open(path, "rb") as f:
            data = f.read()
        try:
            image = image_transforms.decode_image(data)
        except image_transforms.DECODE_ERRORS as e:
            raise UserError(f"cannot decode image {path}: {e}") from None
        out.append(image_transforms.eval_transform(image, size))
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.float32)


def read_texts(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise UserError(f"texts file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


class Encoder:
    """Batched, jitted embedding with fixed batch shapes (one compile per tower).

    With `mesh`, params may be sharded global arrays (as in the trainer, also across
    processes); inputs are taken as identical on every process and results come back
    replicated, so every process gets all embeddings.
    """

    def __init__(self, params: Any, config: ModelConfig, batch_size: int = 64,
                 mesh: jax.sharding.Mesh | None = None, dtype: Any = jnp.float32):
        self.params, self.config, self.batch_size = params, config, batch_size
        model = CLIP(config, dtype=dtype)
        out = {} if mesh is None else {"out_shardings": jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec())}
        self._image = jax.jit(
            lambda p, x: model.apply({"params": p}, images=x)["image_embeds"], **out)
        self._text = jax.jit(
            lambda p, t: model.apply({"params": p}, tokens=t)["text_embeds"], **out)

    @property
    def image_size(self) -> int:
        """The side of the square images `images` takes (see `evaluators.common.Embedder`)."""
        return self.config.image_size

    def _batched(self, fn: Any, inputs: np.ndarray) -> np.ndarray:
        outs = []
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start : start + self.batch_size]
            pad = self.batch_size - len(chunk)
            padded = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            outs.append(np.asarray(fn(self.params, padded))[: len(chunk)])
        return np.concatenate(outs) if outs else np.zeros((0, self.config.embed_dim), np.float32)

    def images(self, pixels: np.ndarray) -> np.ndarray:
        return self._batched(self._image, pixels)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._batched(self._text, tokenizer.tokenize(texts, self.config.context_length))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m reasonclip_jax.encode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", nargs="*", default=[])
    parser.add_argument("--texts-file")
    parser.add_argument("--output", required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.images and not args.texts_file:
        raise UserError("nothing to encode: give --images and/or --texts-file")
    texts = read_texts(args.texts_file) if args.texts_file else []
    params, config = checkpoint.load_model(args.checkpoint)
    pixels = load_images(args.images, config.image_size)
    encoder = Encoder(jax.device_put(params), config, args.batch_size)
    np.savez(
        args.output,
        image_embeds=encoder.images(pixels),
        text_embeds=encoder.texts(texts),
        logit_scale=np.asarray(jnp.exp(params["logit_scale"])),
    )
    print(f"wrote {args.output}: {len(pixels)} images, {len(texts)} texts")


if __name__ == "__main__":
    main()
