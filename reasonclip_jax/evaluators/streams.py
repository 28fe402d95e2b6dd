"""What the file-format readers share: a stream of samples embedded a chunk at a time.

A reader turns the user's files into a stream: per sample, `(encoded image, payload)` (the
payload is a label or a list of captions), or None for a sample it cannot use (no image, no
label, a file that does not read). `embed_samples` takes the first `max_examples` samples
(unusable ones count), decodes and embeds their images a chunk at a time, so memory holds one
chunk of encoded images and pixels, keeps the payloads of the images that decoded, and counts
every other sample as skipped (and logs how many). Webdataset splits (`DATA_DIR/SPLIT/*.tar`,
CLIP_benchmark's layout) are read with `tar_paths` and `iter_samples`.

    python -c "from reasonclip_jax.evaluators import streams; \
print(streams.tar_paths('data/wds_mscoco', 'test')[:2])"
"""

from __future__ import annotations

import glob
import itertools
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np
from absl import logging

from reasonclip_jax.data import records, webdataset
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators import common

Payload = TypeVar("Payload")


def embed_samples(
    embedder: common.Embedder,
    samples: Iterable[tuple[bytes, Payload] | None],
    max_examples: int | None,
    where: str,
) -> tuple[np.ndarray, list[Payload], int]:
    """(image embeddings [K, D], the K payloads, number skipped) of the first `max_examples`
    samples (all if None)."""
    stream = itertools.islice(samples, max_examples)
    embeds, payloads, skipped = [], [], 0
    while chunk := list(itertools.islice(stream, common.DEFAULT_CHUNK)):
        usable = [s for s in chunk if s is not None]
        chunk_embeds, kept = common.embed_images(embedder, [image for image, _ in usable])
        if len(chunk_embeds):
            embeds.append(chunk_embeds)
        payloads.extend(p for (_, p), k in zip(usable, kept, strict=True) if k)
        skipped += len(chunk) - int(kept.sum())
    if skipped:
        logging.warning("%s: skipped %d samples", where, skipped)
    if not payloads:
        raise UserError(f"{where}: no usable sample (a decodable image and its annotation)")
    return np.concatenate(embeds), payloads, skipped


def read_lines(path: str) -> list[str]:
    """The non-empty lines of a text file, without surrounding whitespace."""
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def tar_paths(data_dir: str, split: str) -> list[str]:
    """The split's tar shards, `DATA_DIR/SPLIT/*.tar`, in natural order (2.tar before 10.tar)."""
    paths = glob.glob(os.path.join(data_dir, split, "*.tar"))
    paths.sort(key=lambda p: records.natural_key(os.path.basename(p)))
    if not paths:
        raise UserError(f"{data_dir}: no {split}/*.tar webdataset shards")
    return paths


def iter_samples(paths: Sequence[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Webdataset samples: (key, {lower-case extension: bytes}) of the files sharing a key,
    adjacent in a tar; a damaged shard is a `UserError`."""
    for path in paths:
        try:
            yield from webdataset.iter_tar(path)
        except tarfile.TarError as e:
            raise UserError(f"cannot read webdataset shard {path}: {e}") from None
