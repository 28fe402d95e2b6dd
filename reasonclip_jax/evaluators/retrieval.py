"""Image <-> text retrieval: recall at 1, 5 and 10 both ways, the gallery as the release has it.

The gallery is built as the release's `build_retrieval_lists` (eval/eval_RCLIP_retrieval.py)
and `RetrievalDataset` (eval/eval_retrieval.py) build it: the images, and one text entry per
(image, caption) pair, owned by that image. A caption string that several images carry is
several entries, each owned by its own image (they tie exactly: a string is embedded once).
Image -> text: every image with a caption is a query, a hit at k if one of ITS OWN entries is
among its k best-scoring entries. Text -> image: every entry is a query, a hit at k if its
owner image is among its k best-scoring images. Images without captions stay in the
text -> image gallery and ask nothing. Equal embeddings give exactly equal scores.

Ties, `ties=` (`ranking`): "topk" orders exactly equal scores as CPU `torch.topk` does (the
release's eval_RCLIP_retrieval.py); "rank" counts only strictly higher scores (its
eval_retrieval.py, COCO/Flickr). Metrics: `i2t_r1`, `i2t_r5`, `i2t_r10`, `t2i_r1`, `t2i_r5`,
`t2i_r10` (fractions), `num_images` (gallery images), `num_texts` (entries), `num_skipped`.

Evaluator types: `retrieval` here (a shard directory's split, captions from a record field:
`desc`, `reason`, or `gt`), `rclip_retrieval` (rclip_retrieval.py), `retrieval_karpathy` and
`retrieval_wds` (retrieval_formats.py).

    python -m reasonclip_jax.evaluate --checkpoint CKPT \
        --eval retrieval:out/scenes/stage1 split=train caption_field=desc max_examples=1000
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reasonclip_jax.data import records
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators import common, ranking

CAPTION_FIELDS = ("desc", "reason", "gt")
KS = (1, 5, 10)
_CHUNK = 512  # queries scored at a time


def captions_of(record: records.Record, field: str) -> list[str]:
    """The record's correct captions in `field` (one of CAPTION_FIELDS)."""
    if field == "gt":
        return [s["gt"] for s in record.sets]
    return list(getattr(record, field))


def recalls(
    image_embeds: np.ndarray,
    text_embeds: np.ndarray,
    text_rows: Sequence[int],
    text_owner: Sequence[int],
    ks: Sequence[int] = KS,
    ties: str = "topk",
) -> dict[str, float]:
    """Recall@k both ways over a gallery of entries: entry e is row `text_rows[e]` of
    `text_embeds`, owned by image `text_owner[e]` (a row of `image_embeds`)."""
    rows, owner = np.asarray(text_rows, np.int64), np.asarray(text_owner, np.int64)
    if not len(rows) or len(rows) != len(owner):
        raise UserError("retrieval needs at least one caption, and one owner image per caption")
    images = np.asarray(image_embeds, np.float32)
    texts, text_index = ranking.distinct_rows(np.asarray(text_embeds, np.float32))
    rows = text_index[rows]
    gallery_images, image_index = ranking.distinct_rows(images)

    i2t, queries = [], np.unique(owner)  # the images with a caption, in order
    for start in range(0, len(queries), _CHUNK):
        chunk = queries[start : start + _CHUNK]
        scores = (images[chunk] @ texts.T)[:, rows]
        i2t.append(ranking.hits_at(scores, owner[None, :] == chunk[:, None], ks, ties))
    t2i, image_ids = [], np.arange(len(images))
    for start in range(0, len(rows), _CHUNK):
        chunk = slice(start, start + _CHUNK)
        scores = (texts[rows[chunk]] @ gallery_images.T)[:, image_index]
        t2i.append(ranking.hits_at(scores, image_ids[None, :] == owner[chunk, None], ks, ties))
    i2t_hits, t2i_hits = np.concatenate(i2t, axis=1), np.concatenate(t2i, axis=1)
    out = {f"i2t_r{k}": float(i2t_hits[j].mean()) for j, k in enumerate(ks)}
    out.update({f"t2i_r{k}": float(t2i_hits[j].mean()) for j, k in enumerate(ks)})
    return out


def gallery_metrics(
    embedder: common.Embedder,
    image_embeds: np.ndarray,
    captions: Sequence[Sequence[str]],
    num_skipped: int,
    ties: str = "topk",
) -> dict[str, float]:
    """Retrieval metrics of images (embedded) and `captions[i]`, image i's captions in order;
    the texts are embedded here, each distinct string once."""
    texts = [t for image_captions in captions for t in image_captions]
    if not texts:
        raise UserError("retrieval needs at least one caption")
    text_embeds, text_rows = common.embed_texts(embedder, texts)
    owner = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
    metrics = recalls(image_embeds, text_embeds, text_rows, owner, ties=ties)
    metrics.update(num_images=float(len(captions)), num_texts=float(len(texts)),
                   num_skipped=float(num_skipped))
    return metrics


def evaluate(
    embedder: common.Embedder,
    data_dir: str,
    split: str = "test",
    max_examples: int | None = None,
    caption_field: str = "desc",
    ties: str = "topk",
) -> dict[str, float]:
    """Retrieval metrics over the first `max_examples` records (all if None) of a split."""
    if caption_field not in CAPTION_FIELDS:
        raise UserError(
            f"unknown caption_field '{caption_field}'; choose one of {list(CAPTION_FIELDS)}"
        )
    ranking.check_ties(ties)
    data = common.embed_split(embedder, data_dir, split, max_examples)
    captions = [captions_of(r, caption_field) for r in data.records]
    if not any(captions):
        raise UserError(f"{data_dir}/{split}: no '{caption_field}' captions to retrieve")
    return gallery_metrics(embedder, data.image_embeds, captions, data.num_skipped, ties)
