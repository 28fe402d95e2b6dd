"""RCLIP-Bench: pick the one correct caption of a set out of five.

Every record of the split is an image with its benchmark sets; a set is one correct caption
(`gt`) and 4 negatives (`neg`), tagged with what it tests (V1: Att., Nou., Rel., Sen., Sub.;
V2/V3 and the scenes bench: S, A, H, T, P). The model picks the caption whose embedding has
the highest cosine similarity with the image's. Metrics, all over sets: `accuracy` (chance is
1 / 5) and `acc_{tag}` per tag, plus the counts `num_sets` and `num_skipped` (images that did
not decode; their sets are left out).

A tie between the correct caption and a negative counts as wrong: a model that cannot tell
two captions apart has not picked the right one (identical strings always tie).

    python -m reasonclip_jax.evaluate --checkpoint CKPT --eval rclip_bench:out/scenes/bench
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators import common

_CHUNK = 1024  # sets scored at a time


def set_scores(
    image_embeds: np.ndarray,
    text_embeds: np.ndarray,
    set_image: np.ndarray,
    set_texts: np.ndarray,
) -> np.ndarray:
    """Cosine similarities [M, K] of set m's image (row `set_image[m]` of `image_embeds`) with
    its K captions (rows `set_texts[m]` of `text_embeds`; column 0 is the correct one).

    Computed in float64 with the same reduction for every caption, so identical caption
    embeddings give identical scores (exact ties).
    """
    scores = np.empty(set_texts.shape, np.float64)
    for start in range(0, len(set_texts), _CHUNK):
        stop = start + _CHUNK
        images = image_embeds[set_image[start:stop]].astype(np.float64)
        texts = text_embeds[set_texts[start:stop]].astype(np.float64)
        scores[start:stop] = (images[:, None, :] * texts).sum(-1)
    return scores


def correct_choices(scores: np.ndarray) -> np.ndarray:
    """bool [M]: column 0 scores strictly above every other column (a tie is wrong)."""
    return scores[:, 0] > scores[:, 1:].max(axis=1)


def accuracies(correct: np.ndarray, tags: Sequence[str]) -> dict[str, float]:
    """`accuracy` over all sets and `acc_{tag}` over each tag's sets."""
    tags_array = np.asarray(tags, dtype=object)
    out = {"accuracy": float(np.mean(correct)) if len(correct) else 0.0}
    for tag in sorted(set(tags)):
        out[f"acc_{tag}"] = float(np.mean(correct[tags_array == tag]))
    return out


def evaluate(
    embedder: common.Embedder,
    data_dir: str,
    split: str = "test",
    max_examples: int | None = None,
) -> dict[str, float]:
    """RCLIP-Bench metrics of the first `max_examples` records (all if None) of a split."""
    data = common.embed_split(embedder, data_dir, split, max_examples)
    texts: list[str] = []
    set_image, tags = [], []
    num_captions = None
    for i, record in enumerate(data.records):
        for s in record.sets:
            captions = [s["gt"], *s["neg"]]
            if num_captions is None:
                num_captions = len(captions)
            if len(captions) != num_captions or num_captions < 2:
                raise UserError(
                    f"{data_dir}/{split}: record {record.key} has a set with "
                    f"{len(captions) - 1} negatives, others have {num_captions - 1}; "
                    "every set needs the same number (at least 1)"
                )
            texts.extend(captions)
            set_image.append(i)
            tags.append(str(s["tag"]))
    if not set_image:
        raise UserError(f"{data_dir}/{split}: no benchmark sets in its decodable records")
    text_embeds, text_index = common.embed_texts(embedder, texts)
    scores = set_scores(
        data.image_embeds, text_embeds, np.asarray(set_image), text_index.reshape(-1, num_captions)
    )
    metrics = accuracies(correct_choices(scores), tags)
    metrics.update(num_sets=float(len(set_image)), num_skipped=float(data.num_skipped))
    return metrics
