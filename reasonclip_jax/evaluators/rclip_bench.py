"""RCLIP-Bench: pick the one correct caption of a set out of five, as the release scores it.

Every record of the split is an image with its benchmark sets; a set is one correct caption
(`gt`) and 4 negatives (`neg`), tagged with what it tests (V1: Att., Nou., Rel., Sen., Sub.;
V2/V3 and the scenes bench: S, A, H, T, P). Scoring is the release's
(`eval/eval_RCLIP.py`, `score_sets_for_image_batch` and its main loop): the score of a caption
is logit_scale x the cosine similarity of its embedding with the image's, and the model's
choice is `torch.argmax` over [gt, neg_0, ..., neg_3]. argmax returns the first of equal
maxima, so a tie between the gt (index 0) and a negative counts as correct, and a tie
between negatives above the gt picks the first of them; identical caption strings always
tie exactly (each distinct string is embedded once). Choices depend only on the cosines (the
scale is positive), which are computed here in float64 from the float32 embeddings.

Metrics, all over sets: `accuracy` (chance is 1 / 5) and `acc_{tag}` per tag, tags verbatim
(`acc_Att.`, `acc_S`), plus the counts `num_sets` and `num_skipped` (images that did not
decode; their sets are left out).

Versions: a directory may hold rows of several RCLIP versions (the record field `version`).
It is never scored as one: without `version`, a split holding more than one version is an
error naming them; `version=v3` scores that version's records alone; `version=all` scores each
version on its own, metrics keyed `{version}/accuracy`, `{version}/acc_{tag}`,
`{version}/num_sets` (records without a version: `unversioned/...`), plus `num_skipped`.
`max_examples` counts the selected version's records.

Per-set results (`results_prefix`): `{prefix}.items.jsonl`, one line per scored set in input
order: `id` (the benchmark's own id), `image_name`, `version`, `key` (the row's location in the
build's input), `set` (the set's position in the row's `sets`), `tag`, `chosen` (0 = gt), `correct`,
`cosine` (the 5 cosines, gt first), `cosine_margin` (best minus second best cosine),
`near_tie`, and, when the embedder carries its `logit_scale`, `scores` (the 5 scores in the
release's units, logit_scale x cosine, what its `--save-errors` writes). `{prefix}.near_ties.jsonl`
holds the lines whose `cosine_margin` is below `NEAR_TIE` (1e-5): the sets whose choice the
float32 rounding of another implementation may flip, to leave out of a set-by-set comparison
with the release run on CPU in fp32 (its CUDA runs use fp16 autocast: larger differences). In
cosine units this list holds every set whose margin in the release's units is below 1e-5,
whenever logit_scale >= 1.

    python -m reasonclip_jax.evaluate --checkpoint CKPT --eval rclip_bench:out/rclip_v3 \\
        --output metrics.json   # also writes metrics.items.jsonl, metrics.near_ties.jsonl
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from absl import logging

from reasonclip_jax import paths
from reasonclip_jax.data import records
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators import common

_CHUNK = 1024  # sets scored at a time
NEAR_TIE = 1e-5  # cosine margin below which float32 noise could change a choice
ALL_VERSIONS = "all"
UNVERSIONED = "unversioned"  # metric prefix of records without a version, with version=all


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


def choices(scores: np.ndarray) -> np.ndarray:
    """int [M]: the chosen caption of each set, `torch.argmax`'s rule: the highest score, the
    first column of equal highest ones (a tie with column 0, the gt, chooses the gt)."""
    return np.argmax(scores, axis=1)


def correct_choices(scores: np.ndarray) -> np.ndarray:
    """bool [M]: the choice is column 0 (the gt), ties included (see `choices`)."""
    return choices(scores) == 0


def top_two_margins(scores: np.ndarray) -> np.ndarray:
    """float [M]: best minus second best score of each set (0 for an exact tie at the top)."""
    ordered = np.sort(scores, axis=1)
    return ordered[:, -1] - ordered[:, -2]


def accuracies(correct: np.ndarray, tags: Sequence[str]) -> dict[str, float]:
    """`accuracy` over all sets and `acc_{tag}` over each tag's sets (tags verbatim)."""
    tags_array = np.asarray(tags, dtype=object)
    out = {"accuracy": float(np.mean(correct)) if len(correct) else 0.0}
    for tag in sorted(set(tags)):
        out[f"acc_{tag}"] = float(np.mean(correct[tags_array == tag]))
    return out


# ----------------------------------------------------------------------------------------------
# Choosing the records of one version.
# ----------------------------------------------------------------------------------------------


def _names(versions: Sequence[str]) -> str:
    return ", ".join(repr(v) if v else "'' (no version)" for v in sorted(versions))


def _versions_left(source: records.ShardDirectory, start: int, seen: set[str]) -> set[str]:
    """`seen` plus the versions of records `start`... (read only to name them in an error)."""
    return seen | {source.read(i).version for i in range(start, len(source))}


def selected_records(
    source: records.ShardDirectory, version: str | None, max_examples: int | None, where: str
) -> Iterator[records.Record]:
    """The records to score, in shard order, read lazily: those of `version` (every record for
    None, or for `ALL_VERSIONS`), the first `max_examples` of them. Raises `UserError` when
    `version` is None and the records seen so far hold two versions, or when no record has
    `version`."""
    seen: set[str] = set()
    taken = 0
    for i in range(len(source)):
        if max_examples is not None and taken >= max_examples:
            return
        record = source.read(i)
        seen.add(record.version)
        if version is None and len(seen) > 1:
            found = _versions_left(source, i + 1, seen)
            raise UserError(
                f"{where}: holds RCLIP-Bench versions {_names(found)}; they are never merged: "
                f"pass version=VERSION to score one, or version={ALL_VERSIONS} for each on its own"
            )
        if version in (None, ALL_VERSIONS) or record.version == version:
            taken += 1
            yield record
    if not taken and version not in (None, ALL_VERSIONS):
        raise UserError(f"{where}: no records of version {version!r}; it holds {_names(seen)}")


# ----------------------------------------------------------------------------------------------
# Scoring and results.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SetResults:
    """Every scored set of a split, in record then set order."""

    records: list[records.Record]
    set_record: np.ndarray  # int [M]: index into `records`
    set_position: np.ndarray  # int [M]: the set's position in its source row's `sets`
    tags: list[str]
    cosine: np.ndarray  # float64 [M, K], column 0 the gt
    chosen: np.ndarray  # int [M]
    margin: np.ndarray  # float64 [M]: best minus second best cosine

    @property
    def correct(self) -> np.ndarray:
        return self.chosen == 0


def score(embedder: common.Embedder, data: common.EmbeddedSplit, where: str) -> SetResults:
    """Scores every set of the embedded records."""
    texts: list[str] = []
    set_record, set_position, tags = [], [], []
    num_captions = None
    for i, record in enumerate(data.records):
        positions = record.set_index or range(len(record.sets))
        for s, position in zip(record.sets, positions, strict=True):
            captions = [s["gt"], *s["neg"]]
            if num_captions is None:
                num_captions = len(captions)
            if len(captions) != num_captions or num_captions < 2:
                raise UserError(
                    f"{where}: record {record.key} has a set with "
                    f"{len(captions) - 1} negatives, others have {num_captions - 1}; "
                    "every set needs the same number (at least 1)"
                )
            texts.extend(captions)
            set_record.append(i)
            set_position.append(position)
            tags.append(str(s["tag"]))
    if not set_record:
        raise UserError(f"{where}: no benchmark sets in its decodable records")
    text_embeds, text_index = common.embed_texts(embedder, texts)
    cosine = set_scores(
        data.image_embeds, text_embeds, np.asarray(set_record),
        text_index.reshape(-1, num_captions),
    )
    return SetResults(
        data.records, np.asarray(set_record), np.asarray(set_position), tags, cosine,
        choices(cosine), top_two_margins(cosine),
    )


def item_lines(results: SetResults, logit_scale: float | None = None) -> list[dict[str, Any]]:
    """One JSON-able dict per scored set (the fields are listed in the module docstring)."""
    lines = []
    for m, i in enumerate(results.set_record):
        record = results.records[i]
        line = {
            "id": record.source_id, "image_name": record.image_name, "version": record.version,
            "key": record.key, "set": int(results.set_position[m]), "tag": results.tags[m],
            "chosen": int(results.chosen[m]), "correct": bool(results.chosen[m] == 0),
            "cosine": results.cosine[m].tolist(), "cosine_margin": float(results.margin[m]),
            "near_tie": bool(results.margin[m] < NEAR_TIE),
        }
        if logit_scale is not None:
            line["scores"] = (logit_scale * results.cosine[m]).tolist()
        lines.append(line)
    return lines


def write_items(prefix: str, lines: Sequence[dict[str, Any]]) -> None:
    """`{prefix}.items.jsonl` (every line) and `{prefix}.near_ties.jsonl` (the near ties), in
    the order of the build's input (row keys in natural order, then sets)."""
    lines = sorted(lines, key=lambda r: (records.natural_key(r["key"]), r["set"]))
    for path, rows in ((f"{prefix}.items.jsonl", lines),
                       (f"{prefix}.near_ties.jsonl", [r for r in lines if r["near_tie"]])):
        paths.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    near = sum(r["near_tie"] for r in lines)
    logging.info("RCLIP-Bench: %d sets, %d near ties -> %s.items.jsonl", len(lines), near, prefix)


def _metrics(results: SetResults, mask: np.ndarray) -> dict[str, float]:
    tags = [t for t, keep in zip(results.tags, mask, strict=True) if keep]
    metrics = accuracies(results.correct[mask], tags)
    metrics["num_sets"] = float(mask.sum())
    return metrics


def evaluate(
    embedder: common.Embedder,
    data_dir: str,
    split: str = "test",
    max_examples: int | None = None,
    version: str | None = None,
    results_prefix: str | None = None,
) -> dict[str, float]:
    """RCLIP-Bench metrics of the first `max_examples` records (all if None) of a split's
    `version` (see the module docstring); per-set results under `results_prefix` if set."""
    where = f"{data_dir}/{split}"
    source = records.ShardDirectory(data_dir, split)
    data = common.embed_records(
        embedder, selected_records(source, version, max_examples, where), where=where
    )
    results = score(embedder, data, where)
    if version == ALL_VERSIONS:
        set_versions = np.asarray([data.records[i].version for i in results.set_record], object)
        metrics = {}
        for v in sorted(set(set_versions)):
            group = _metrics(results, set_versions == v)
            metrics.update({f"{v or UNVERSIONED}/{k}": value for k, value in group.items()})
    else:
        metrics = _metrics(results, np.ones(len(results.tags), bool))
    metrics["num_skipped"] = float(data.num_skipped)
    if results_prefix is not None:
        scale = getattr(embedder, "logit_scale", None)
        write_items(results_prefix, item_lines(results, None if scale is None else float(scale)))
    return metrics
