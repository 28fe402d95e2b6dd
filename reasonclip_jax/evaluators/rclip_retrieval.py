"""RCLIP-5K-V3 retrieval, as the release's eval/eval_RCLIP_retrieval.py, from an RCLIP-Bench
shard directory (data_pipeline's `rclip-bench` source, split "test").

The gallery is the release's `build_retrieval_lists`: every image, and per image one text
entry for each of its sets' `gt` (stripped), owned by that image; a `gt` string repeated
across images stays one entry per image. The negatives play no part. Both ways R@1/5/10
(`retrieval.recalls`), exact ties ordered as CPU `torch.topk` orders them (`ties="topk"`,
see `ranking`), which is why the gallery keeps the release's order: the records sorted by
their keys (FILE:ROW of the RCLIP-Bench file, in natural order), so `max_examples=N` is the
release's `--max-samples N` too. Undecodable images are skipped and counted (the release
would stop), with their sets. One difference stays: data_pipeline drops a row whose image
repeats an earlier one (its rejected.jsonl lists them), the release keeps both.

Metrics: `i2t_r1` ... `t2i_r10`, `num_images`, `num_texts` (entries), `num_skipped`.

    python -m reasonclip_jax.evaluate --checkpoint CKPT --eval rclip_retrieval:out/rclip_v3
"""

from __future__ import annotations

from reasonclip_jax.data import records
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators import common, ranking, retrieval


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
    ties: str = "topk",
) -> dict[str, float]:
    """RCLIP-5K retrieval metrics of the first `max_examples` rows (all if None) in the
    release's order."""
    ranking.check_ties(ties)
    where = f"{data_dir}/{split}"
    recs = sorted(common.read_records(data_dir, split), key=lambda r: records.natural_key(r.key))
    recs = recs[:max_examples]
    embeds, kept = common.embed_images(embedder, [r.image for r in recs])
    kept_recs = [r for r, k in zip(recs, kept, strict=True) if k]
    captions = gallery_captions(kept_recs, where)
    if not any(captions):
        raise UserError(f"{where}: no benchmark sets in its decodable records")
    return retrieval.gallery_metrics(embedder, embeds, captions, len(recs) - len(kept_recs), ties)
