"""COCO / Flickr30k retrieval read straight from the files users have, as the release's
eval/eval_retrieval.py reads them.

Two layouts, each an evaluator type:

  retrieval_karpathy   a Karpathy-split JSON (`dataset_coco.json`, `dataset_flickr30k.json`):
                       {"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}]}]}
                       with the images under DATA_DIR (DATA_DIR/filepath/filename, or
                       DATA_DIR/filename without a filepath); the images whose "split" is
                       `split`, in file order.
  retrieval_wds        CLIP_benchmark webdataset tars (`wds_mscoco_captions`, `wds_flickr30k`):
                       DATA_DIR/SPLIT/*.tar, per sample KEY.jpg|jpeg|png|webp and KEY.txt with
                       one caption per line (lines stripped, empty ones dropped); shards in
                       natural order.

As in the release, an image's captions are cut or padded to `captions_per_image` (5: the
first 5; fewer are repeated from the first until there are 5; None keeps them all), and ties
follow eval_retrieval.py's rank rule (`ties="rank"`: rank = 1 + the number of strictly
higher scores; "topk" is eval_RCLIP_retrieval.py's). The gallery and metrics are
`retrieval`'s. A missing or undecodable image, or a sample without an image or a txt, is
skipped and counted (`num_skipped`); the release would fetch a URL or embed a black image.

    python -m reasonclip_jax.evaluate --checkpoint CKPT \
        --eval retrieval_karpathy:data/coco annotations=data/coco/dataset_coco.json \
        --eval retrieval_wds:data/wds_flickr30k
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from absl import logging

from reasonclip_jax.data import webdataset
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators import common, ranking, retrieval, streams

Sample = tuple[bytes, list[str]] | None


def pad_captions(captions: Sequence[str], n: int | None) -> list[str]:
    """The release's `pad_captions_to`: the first n captions, fewer repeated from the first
    until there are n; all of them if n is None (and none stay none)."""
    out = list(captions)
    if n is None or not out:
        return out
    while len(out) < n:
        out.extend(out[: n - len(out)])
    return out[:n]


def karpathy_entries(annotations: str, split: str) -> list[dict[str, Any]]:
    """The JSON's image entries of `split`, in file order."""
    try:
        with open(annotations, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read Karpathy JSON {annotations}: {e}") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise UserError(f"{annotations}: no 'images' list (not a Karpathy-split JSON)")
    entries = [im for im in images if isinstance(im, dict) and im.get("split") == split]
    if not entries:
        found = sorted({str(im.get("split")) for im in images if isinstance(im, dict)})
        raise UserError(f"{annotations}: no images of split '{split}'; it has {found}")
    for i, im in enumerate(entries):
        if not isinstance(im.get("filename"), str) or not isinstance(im.get("sentences"), list):
            raise UserError(f"{annotations}: image {i} of split '{split}' lacks a 'filename' "
                            "string or a 'sentences' list")
    return entries


def _karpathy_samples(
    data_dir: str, entries: Sequence[dict[str, Any]], n: int | None
) -> Iterator[Sample]:
    for im in entries:
        path = os.path.join(data_dir, str(im.get("filepath") or ""), im["filename"])
        try:
            with open(path, "rb") as f:
                image = f.read()
        except OSError as e:
            logging.warning("retrieval_karpathy: cannot read %s: %s", path, e)
            yield None
            continue
        # As the release: a sentence's "raw" text, or the sentence itself if it is a string.
        captions = [s["raw"] if isinstance(s, dict) and "raw" in s else str(s)
                    for s in im["sentences"]]
        yield image, pad_captions(captions, n)


def _wds_samples(paths: Sequence[str], n: int | None) -> Iterator[Sample]:
    for _, files in streams.iter_samples(paths):
        image, text = webdataset.first_image(files), files.get("txt")
        if image is None or text is None:
            yield None
            continue
        try:
            lines = text.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            yield None
            continue
        yield image, pad_captions([c.strip() for c in lines if c.strip()], n)


def _check(captions_per_image: int | None, ties: str) -> None:
    ranking.check_ties(ties)
    if captions_per_image is not None and captions_per_image < 1:
        raise UserError(f"captions_per_image must be positive or None, got {captions_per_image}")


def _metrics(embedder: common.Embedder, samples: Iterator[Sample], max_examples: int | None,
             where: str, ties: str) -> dict[str, float]:
    embeds, captions, skipped = streams.embed_samples(embedder, samples, max_examples, where)
    return retrieval.gallery_metrics(embedder, embeds, captions, skipped, ties)


def evaluate_karpathy(
    embedder: common.Embedder,
    data_dir: str,
    annotations: str,
    split: str = "test",
    max_examples: int | None = None,
    captions_per_image: int | None = 5,
    ties: str = "rank",
) -> dict[str, float]:
    """Retrieval metrics of the first `max_examples` images (all if None) of a Karpathy
    split, images under `data_dir`."""
    _check(captions_per_image, ties)
    entries = karpathy_entries(annotations, split)
    samples = _karpathy_samples(data_dir, entries, captions_per_image)
    return _metrics(embedder, samples, max_examples, f"{annotations} ({split})", ties)


def evaluate_wds(
    embedder: common.Embedder,
    data_dir: str,
    split: str = "test",
    max_examples: int | None = None,
    captions_per_image: int | None = 5,
    ties: str = "rank",
) -> dict[str, float]:
    """Retrieval metrics of the first `max_examples` samples (all if None; skipped ones
    count) of a CLIP_benchmark webdataset split."""
    _check(captions_per_image, ties)
    samples = _wds_samples(streams.tar_paths(data_dir, split), captions_per_image)
    return _metrics(embedder, samples, max_examples, f"{data_dir}/{split}", ties)
