"""Image <-> text retrieval: recall at 1, 5 and 10 in both directions.

The gallery is a split's decodable images and all their captions (e.g. 5 per image for
COCO-5K or RCLIP-5K), taken from a record field: `desc`, `reason`, or `gt` (the correct
captions of the benchmark sets). Image -> text: a hit at k if any of the image's captions is
among the k most similar texts. Text -> image: a hit at k if its image is among the k most
similar images. A caption string that several images carry counts as correct for each of
them (and its copies tie exactly, being one embedding). Images without captions stay in the
text -> image gallery but ask no image -> text query.

Ties go against the model, as in RCLIP-Bench: the best correct item's rank counts every wrong
item scoring at least as high. Metrics: `i2t_r1`, `i2t_r5`, `i2t_r10`, `t2i_r1`, `t2i_r5`,
`t2i_r10` (fractions), `num_images`, `num_texts`, `num_skipped`.

    python -m reasonclip_jax.evaluate --checkpoint CKPT \
        --eval retrieval:out/scenes/stage1 split=train caption_field=desc max_examples=1000
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reasonclip_jax.data import records
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators import common

CAPTION_FIELDS = ("desc", "reason", "gt")
KS = (1, 5, 10)
_CHUNK = 512  # queries scored at a time


def captions_of(record: records.Record, field: str) -> list[str]:
    """The record's correct captions in `field` (one of CAPTION_FIELDS)."""
    if field == "gt":
        return [s["gt"] for s in record.sets]
    return list(getattr(record, field))


def hits_at(scores: np.ndarray, positive: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """bool [len(ks), Q]: query q's best positive ranks within k, counting every negative that
    scores at least as high as it (ties go against the model)."""
    best = np.where(positive, scores, -np.inf).max(axis=1)
    num_above = np.sum(~positive & (scores >= best[:, None]), axis=1)
    return num_above[None, :] < np.asarray(ks)[:, None]


def recalls(
    image_embeds: np.ndarray,
    caption_embeds: np.ndarray,
    image_captions: Sequence[Sequence[int]],
    ks: Sequence[int] = KS,
) -> dict[str, float]:
    """Recall@k both ways.

    `image_captions[i]` lists the rows of `caption_embeds` that are image i's captions; the
    text gallery holds one entry per (image, caption) pair, so a caption repeated across
    images is one query per image that carries it.
    """
    num_images = len(image_embeds)
    width = max((len(c) for c in image_captions), default=0)
    own = np.full((num_images, max(width, 1)), -1, np.int64)  # caption rows per image, -1 pad
    for i, rows in enumerate(image_captions):
        own[i, : len(rows)] = rows
    text_rows = np.array([r for rows in image_captions for r in rows], np.int64)
    if not len(text_rows):
        raise UserError("retrieval needs at least one caption")
    images = np.asarray(image_embeds, np.float32)
    captions = np.asarray(caption_embeds, np.float32)

    queries = np.flatnonzero((own >= 0).any(axis=1))  # images with at least one caption
    i2t = []
    for start in range(0, len(queries), _CHUNK):
        chunk = queries[start : start + _CHUNK]
        scores = (images[chunk] @ captions.T)[:, text_rows]
        positive = (text_rows[None, :, None] == own[chunk][:, None, :]).any(axis=-1)
        i2t.append(hits_at(scores, positive, ks))
    t2i = []
    for start in range(0, len(text_rows), _CHUNK):
        chunk = text_rows[start : start + _CHUNK]
        scores = captions[chunk] @ images.T
        positive = (own[None, :, :] == chunk[:, None, None]).any(axis=-1)
        t2i.append(hits_at(scores, positive, ks))
    i2t_hits, t2i_hits = np.concatenate(i2t, axis=1), np.concatenate(t2i, axis=1)
    out = {}
    for j, k in enumerate(ks):
        out[f"i2t_r{k}"] = float(i2t_hits[j].mean())
    for j, k in enumerate(ks):
        out[f"t2i_r{k}"] = float(t2i_hits[j].mean())
    return out


def evaluate(
    embedder: common.Embedder,
    data_dir: str,
    split: str = "test",
    max_examples: int | None = None,
    caption_field: str = "desc",
) -> dict[str, float]:
    """Retrieval metrics over the first `max_examples` records (all if None) of a split."""
    if caption_field not in CAPTION_FIELDS:
        raise UserError(
            f"unknown caption_field '{caption_field}'; choose one of {list(CAPTION_FIELDS)}"
        )
    data = common.embed_split(embedder, data_dir, split, max_examples)
    per_image = [captions_of(r, caption_field) for r in data.records]
    texts = [t for captions in per_image for t in captions]
    if not texts:
        raise UserError(f"{data_dir}/{split}: no '{caption_field}' captions to retrieve")
    caption_embeds, text_index = common.embed_texts(embedder, texts)
    bounds = np.cumsum([0, *map(len, per_image)])
    image_captions = [text_index[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    metrics = recalls(data.image_embeds, caption_embeds, image_captions)
    metrics.update(
        num_images=float(len(data.records)),
        num_texts=float(len(texts)),
        num_skipped=float(data.num_skipped),
    )
    return metrics
