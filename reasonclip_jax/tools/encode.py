"""Embeds images and texts with a project checkpoint.

    python -m reasonclip_jax.encode --checkpoint CKPT_DIR --images a.jpg b.png \
        --texts-file captions.txt --output embeds.npz

Writes L2-normalised `image_embeds` [num_images, D] and `text_embeds` [num_texts, D]
(one text per line of the file) and `logit_scale` (the exponentiated scale). Images are
preprocessed as OpenAI CLIP does: bicubic resize of the short side, centre crop, then the
model family's mean/std. Texts go through the model's tokenizer (a SigLIP checkpoint's
files: `--tokenizer`, by default its own `tokenizer/`). Every path may be in a bucket
(`gs://...`).
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reasonclip_jax import paths
from reasonclip_jax.data import transforms
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators.encoder import Encoder
from reasonclip_jax.tools import cli, convert
from reasonclip_jax.train import checkpoint


def load_images(files: Sequence[str], size: int) -> np.ndarray:
    out = []
    for path in files:
        if not paths.Path(path).is_file():
            raise UserError(f"image {path} does not exist")
        data = paths.Path(path).read_bytes()
        try:
            image = transforms.decode_image(data)
        except transforms.DECODE_ERRORS as e:
            raise UserError(f"cannot decode image {path}: {e}") from None
        out.append(transforms.eval_transform(image, size))
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.float32)


def read_texts(path: str) -> list[str]:
    if not paths.Path(path).is_file():
        raise UserError(f"texts file {path} does not exist")
    text = paths.Path(path).read_bytes().decode("utf-8")
    return [line.rstrip("\n") for line in io.StringIO(text, newline=None)]  # as open() reads


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m reasonclip_jax.encode", description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", nargs="*", default=[])
    parser.add_argument("--texts-file")
    parser.add_argument("--output", required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tokenizer", help="SigLIP: its tokenizer files' directory (default: "
                        "the checkpoint's, or its run's init_from's, tokenizer/)")
    return parser.parse_args(argv)


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.images and not args.texts_file:
        raise UserError("nothing to encode: give --images and/or --texts-file")
    texts = read_texts(args.texts_file) if args.texts_file else []
    params, config = checkpoint.load_model(args.checkpoint)
    pixels = load_images(args.images, config.image_size)
    tokenizer_dir = convert.tokenizer_dir_of(checkpoint.resolve_step_dir(args.checkpoint),
                                             args.tokenizer)
    encoder = Encoder(jax.device_put(params), config, args.batch_size,
                      tokenizer_dir=tokenizer_dir)
    npz = io.BytesIO()
    np.savez(
        npz,
        image_embeds=encoder.images(pixels),
        text_embeds=encoder.texts(texts),
        logit_scale=np.asarray(jnp.exp(params["logit_scale"])),
    )
    paths.write_bytes(args.output, npz.getvalue())
    print(f"wrote {args.output}: {len(pixels)} images, {len(texts)} texts")


if __name__ == "__main__":
    main()
