"""What every evaluator shares: the embedding interface and reading a shard-directory split.

An evaluator sees the model only through an `Embedder`: L2-normalised embeddings of
preprocessed images and of raw texts. `encoder.Encoder(params, model_config, batch_size,
mesh=...)` is the model's (jitted, fixed batch shapes; with `mesh`, params may be sharded
across processes and embeddings come back replicated to every process); tests plant
embeddings with fakes of the same shape.

Records are read in shard order, so `max_examples=N` always means the same first N records.
Undecodable images are skipped and counted, never fatal. Images are read, decoded,
preprocessed and embedded a chunk at a time, so memory holds one chunk of image bytes and
the embeddings, not the images of a whole gallery (evaluation data keeps its original,
full-size image files).

Decoding follows the RCLIP-Bench release (`eval/eval_RCLIP.py`): `PIL.Image.open` then
`convert("RGB")` (alpha dropped the PIL way, no EXIF orientation), except for records marked
`exif_transpose` (rows of the release's parquet), which first get the EXIF orientation as
`datasets.Image` applies it on the release's parquet path.

    python -c "from reasonclip_jax.evaluators import common; \
print(len(common.read_records('out/scenes/bench', 'test')))"
"""

from __future__ import annotations

import dataclasses
import io
import itertools
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import PIL.Image
import PIL.ImageOps
from absl import logging

from reasonclip_jax.data import records, transforms

DEFAULT_CHUNK = 256  # images decoded and preprocessed at a time


@runtime_checkable
class Embedder(Protocol):
    """L2-normalised embeddings: `images` of float32 [B, S, S, 3] pixels preprocessed with
    `transforms.eval_transform(image, image_size)`, `texts` of raw strings; both
    return float32 [B, D]. `encoder.Encoder` is one.

    An embedder may also carry `logit_scale` (float: the model's exp(logit scale)); RCLIP-Bench
    then also reports its scores in the release's units, logit_scale x cosine."""

    image_size: int

    def images(self, pixels: np.ndarray) -> np.ndarray: ...

    def texts(self, texts: Sequence[str]) -> np.ndarray: ...


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def read_records(
    data_dir: str, split: str, max_examples: int | None = None
) -> list[records.Record]:
    """The split's records in shard order, the first `max_examples` of them if set (whether
    their images decode or not)."""
    source = records.ShardDirectory(data_dir, split)
    n = len(source) if max_examples is None else min(max_examples, len(source))
    return [source.read(i) for i in range(n)]


def decode_image(data: bytes, exif_transpose: bool = False) -> PIL.Image.Image:
    """Encoded image bytes -> RGB PIL image, as the release decodes RCLIP-Bench images.

    Without `exif_transpose`: `Image.open(...).convert("RGB")` (`open_image_rgb`, the JSONL
    path). With it: `datasets.Image.decode_example` (open, load, `ImageOps.exif_transpose`
    when the EXIF has an Orientation tag) then `convert("RGB")` (the parquet/Hub path).
    Raises one of `transforms.DECODE_ERRORS` on corrupt or empty input.
    """
    if not exif_transpose:
        return transforms.decode_image(data)
    if not data:
        raise ValueError("empty image bytes")
    with PIL.Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.getexif().get(PIL.Image.ExifTags.Base.Orientation) is not None:
            return PIL.ImageOps.exif_transpose(image).convert("RGB")
        return image.convert("RGB")


def preprocess_images(
    images: Sequence[bytes], image_size: int, exif_transpose: Sequence[bool] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes (`decode_image`, with image i's `exif_transpose[i]`) and eval-transforms
    encoded images.

    Returns (pixels float32 [K, S, S, 3] of the decodable ones, `kept` bool [len(images)]);
    empty or corrupt images are the False entries of `kept`.
    """
    pixels, kept = [], np.zeros(len(images), bool)
    for i, data in enumerate(images):
        try:
            image = decode_image(data, exif_transpose is not None and bool(exif_transpose[i]))
        except transforms.DECODE_ERRORS:
            continue
        pixels.append(transforms.eval_transform(image, image_size))
        kept[i] = True
    if not pixels:
        return np.zeros((0, image_size, image_size, 3), np.float32), kept
    return np.stack(pixels), kept


def embed_images(
    embedder: Embedder,
    images: Sequence[bytes],
    chunk_size: int = DEFAULT_CHUNK,
    exif_transpose: Sequence[bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [K, D] of the decodable images, `kept` bool [len(images)]), a chunk at a
    time. An embedder with `images_of_processes` (the Encoder on a multi-process mesh) gets
    each process's share of a chunk: every process decodes only its own part."""
    embeds, kept = [], []
    shared = getattr(embedder, "process_count", 1) > 1
    for start in range(0, len(images), chunk_size):
        chunk = images[start : start + chunk_size]
        flags = None if exif_transpose is None else exif_transpose[start : start + chunk_size]
        if shared:
            chunk_embeds, chunk_kept = _embed_shared_chunk(embedder, chunk, flags)
        else:
            pixels, chunk_kept = preprocess_images(chunk, embedder.image_size, flags)
            chunk_embeds = np.asarray(embedder.images(pixels), np.float32) if len(pixels) else None
        kept.append(chunk_kept)
        if chunk_embeds is not None and len(chunk_embeds):
            embeds.append(chunk_embeds)
    kept_all = np.concatenate(kept) if kept else np.zeros(0, bool)
    return (np.concatenate(embeds) if embeds else np.zeros((0, 0), np.float32)), kept_all


def _embed_shared_chunk(embedder: Any, chunk: Sequence[bytes], flags: Sequence[bool] | None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Process p decodes images [p * m, (p + 1) * m) of the chunk (m = ceil(len / P)); the
    embedder returns every process's embeddings, in chunk order, to every process."""
    count, index = embedder.process_count, embedder.process_index
    share = -(-len(chunk) // count)
    mine = range(index * share, min((index + 1) * share, len(chunk)))
    size = embedder.image_size
    pixels = np.zeros((share, size, size, 3), np.float32)
    local_kept = np.zeros(share, bool)
    for row, i in enumerate(mine):
        got, ok = preprocess_images([chunk[i]], size, None if flags is None else [flags[i]])
        if ok[0]:
            pixels[row], local_kept[row] = got[0], True
    logging.debug("process %d decoded %d of %d images", index, len(mine), len(chunk))
    all_embeds, all_kept = embedder.images_of_processes(pixels, local_kept)
    kept = all_kept[: len(chunk)]
    return all_embeds[: len(chunk)][kept], kept


def embed_texts(embedder: Embedder, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [U, D] of the distinct texts in first-seen order, index [len(texts)] of
    each text's row): captions repeated across a benchmark are embedded once."""
    rows: dict[str, int] = {}
    index = np.array([rows.setdefault(t, len(rows)) for t in texts], np.int64)
    unique = list(rows)
    embeds = np.asarray(embedder.texts(unique), np.float32) if unique else np.zeros((0, 0))
    return embeds, index


@dataclasses.dataclass(frozen=True)
class EmbeddedSplit:
    """The records of a split whose images decoded (without their image bytes), and their
    image embeddings."""

    records: list[records.Record]
    image_embeds: np.ndarray  # [len(records), D]
    num_skipped: int


def embed_records(
    embedder: Embedder,
    recs: Iterable[records.Record],
    chunk_size: int = DEFAULT_CHUNK,
    where: str = "",
) -> EmbeddedSplit:
    """Embeds the images of `recs` (consumed lazily, a chunk at a time); drops (and counts,
    and logs) undecodable ones. Records come back without their image bytes."""
    kept_records, embeds, skipped = [], [], 0
    stream = iter(recs)
    while chunk := list(itertools.islice(stream, chunk_size)):
        chunk_embeds, kept = embed_images(
            embedder, [r.image for r in chunk], chunk_size, [r.exif_transpose for r in chunk]
        )
        skipped += int(len(chunk) - kept.sum())
        if len(chunk_embeds):
            embeds.append(chunk_embeds)
        kept_records += [
            dataclasses.replace(r, image=b"") for r, k in zip(chunk, kept, strict=True) if k
        ]
    if skipped:
        logging.warning("%s: skipped %d undecodable images", where, skipped)
    image_embeds = np.concatenate(embeds) if embeds else np.zeros((0, 0), np.float32)
    return EmbeddedSplit(kept_records, image_embeds, skipped)


def embed_split(
    embedder: Embedder,
    data_dir: str,
    split: str,
    max_examples: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> EmbeddedSplit:
    """Reads the first `max_examples` records of a split (all if None), embeds their images,
    drops (and counts, and logs) undecodable ones."""
    source = records.ShardDirectory(data_dir, split)
    n = len(source) if max_examples is None else min(max_examples, len(source))
    return embed_records(
        embedder, (source.read(i) for i in range(n)), chunk_size, f"{data_dir}/{split}"
    )
