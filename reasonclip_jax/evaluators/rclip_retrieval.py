"""RCLIP-5K-V3 retrieval, as the release's eval/eval_RCLIP_retrieval.py, from an RCLIP-Bench
shard directory (data_pipeline's `rclip-bench` source, split "test").

The gallery is the release's `build_retrieval_lists`: every image, and per image one text
entry for each of its sets' `gt` (stripped), owned by that image; a `gt` string repeated
across images stays one entry per image. The negatives play no part. Both ways R@1/5/10
(`retrieval.recalls`), exact ties ordered as CPU `torch.topk` orders them (`ties="topk"`,
see `ranking`), which is why the gallery keeps the release's order: the records sorted by
their keys (FILE:ROW of the RCLIP-Bench file, in natural order), so `max_examples=N` is the
release's `--max-samples N` too. Images are decoded as RCLIP-Bench's (`common`, EXIF
orientation for parquet rows). A directory holding several RCLIP versions needs `version`
(as `rclip_bench`: `version=v3` takes that version's records; they are never merged).
Undecodable images are skipped and counted (the release would stop), with their sets. One
difference stays: data_pipeline drops a row whose image repeats an earlier one (its
rejected.jsonl lists them), the release keeps both.

Metrics: `i2t_r1` ... `t2i_r10`, `num_images`, `num_texts` (entries), `num_skipped`.

    python -m reasonclip_jax.evaluate --checkpoint CKPT --eval rclip_retrieval:out/rclip version=v3
"""

from __future__ import annotations

import dataclasses

from reasonclip_jax.data import records
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators import common, ranking, rclip_bench, retrieval


class _Headers:
    """A shard directory's records without their image bytes, keys remembered by index:
    what choosing (by version) and ordering the rows needs."""

    def __init__(self, source: records.ShardDirectory):
        self.source, self.keys = source, {}

    def __len__(self) -> int:
        return len(self.source)

    def read(self, index: int) -> records.Record:
        record = self.source.read(index)
        self.keys[index] = record.key
        return dataclasses.replace(record, image=b"")


def release_order(
    source: records.ShardDirectory, version: str | None, max_examples: int | None, where: str
) -> list[int]:
    """Indices of the records of `version` (`rclip_bench.selected_records`), sorted by key in
    natural order (the release's row order), the first `max_examples`."""
    if version == rclip_bench.ALL_VERSIONS:
        raise UserError(f"{where}: rclip_retrieval scores one version; pass version=VERSION")
    headers = _Headers(source)
    chosen = {r.key for r in rclip_bench.selected_records(headers, version, None, where)}
    order = sorted((i for i, key in headers.keys.items() if key in chosen),
                   key=lambda i: records.natural_key(headers.keys[i]))
    return order[:max_examples]


def gallery_captions(recs: list[records.Record], where: str) -> list[list[str]]:
    """Per record, its sets' `gt` captions in order, stripped; an empty one is an error (the
    release rejects it too)."""
    out = []
    for r in recs:
        captions = [str(s["gt"]).strip() for s in r.sets]
        if not all(captions):
            raise UserError(f"{where}: record {r.key} has a set with an empty gt")
        out.append(captions)
    return out


def evaluate(
    embedder: common.Embedder,
    data_dir: str,
    split: str = "test",
    max_examples: int | None = None,
    version: str | None = None,
    ties: str = "topk",
) -> dict[str, float]:
    """RCLIP-5K retrieval metrics of the first `max_examples` rows (all if None) of
    `version`, in the release's order."""
    ranking.check_ties(ties)
    where = f"{data_dir}/{split}"
    source = records.ShardDirectory(data_dir, split)
    order = release_order(source, version, max_examples, where)
    data = common.embed_records(embedder, (source.read(i) for i in order), where=where)
    captions = gallery_captions(data.records, where)
    if not any(captions):
        raise UserError(f"{where}: no benchmark sets in its decodable records")
    return retrieval.gallery_metrics(embedder, data.image_embeds, captions, data.num_skipped,
                                     ties)
