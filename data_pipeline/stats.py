"""Dataset statistics for the manifest: counts and length distributions, exact and mergeable.

Every record contributes integer counts to one `collections.Counter` keyed by tuples
(("split", "train"), ("words", "desc", 12), ...). Counters add exactly in any order, so the
manifest is the same however Beam splits the work. Token counts use the project's CLIP
tokenizer (`reasonclip_jax.models.tokenizer`) when it is importable and are left out otherwise.

    python -c "from data_pipeline import stats; from reasonclip_jax.data.records import Record
    r = Record('id', 's', 'k', b'', desc=('a cat',))
    print(stats.summarize(stats.record_stats(r, 'train')))"
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from reasonclip_jax.data.records import CATEGORIES, Record

CLIP_CONTEXT_LENGTH = 77  # the manifest counts captions longer than this, in tokens


@functools.cache
def _token_counter() -> Callable[[str], int] | None:
    """Tokens of a text including start and end, untruncated; None without the tokenizer."""
    try:
        from reasonclip_jax.models import tokenizer
    except ImportError:
        return None
    encode = tokenizer.default_tokenizer().encode
    return lambda text: len(encode(text)) + 2


def _texts(record: Record) -> Iterable[tuple[str, str]]:
    yield from (("desc", t) for t in record.desc)
    yield from (("reason", t) for t in record.reason)
    if record.cat_caption is not None:
        yield "cat_caption", record.cat_caption
    for s in record.sets:
        yield "sets.gt", s["gt"]
        yield from (("sets.neg", t) for t in s["neg"])


def record_stats(record: Record, split: str) -> Counter:
    """The counts one record adds to the manifest."""
    counts: Counter = Counter()
    counts["split", split] += 1
    counts["width", record.width] += 1
    counts["height", record.height] += 1
    if record.cat_label is not None:
        counts["cat_label", CATEGORIES[record.cat_label]] += 1
    for label in record.image_labels:
        counts["image_labels", CATEGORIES[label]] += 1
    for s in record.sets:
        counts["set_tag", s["tag"]] += 1
    tokens = _token_counter()
    for field, text in _texts(record):
        counts["words", field, len(text.split())] += 1
        if tokens is not None:
            counts["tokens", field, tokens(text)] += 1
    return counts


def merge(counters: Iterable[Counter]) -> Counter:
    total: Counter = Counter()
    for c in counters:
        total.update(c)
    return total


def distribution(histogram: dict[int, int]) -> dict[str, Any]:
    """count, min, max, mean (2 decimals), p50, p95 of an integer histogram."""
    n = sum(histogram.values())
    if not n:
        return {"count": 0}
    values = sorted(histogram)

    def quantile(q: float) -> int:
        seen, rank = 0, q * (n - 1)
        for v in values:
            seen += histogram[v]
            if seen > rank:
                return v
        return values[-1]

    mean = sum(v * c for v, c in histogram.items()) / n
    return {
        "count": n,
        "min": values[0],
        "max": values[-1],
        "mean": round(mean, 2),
        "p50": quantile(0.5),
        "p95": quantile(0.95),
    }


def summarize(counts: Counter) -> dict[str, Any]:
    """The manifest's statistics sections from merged counts."""

    def table(kind: str) -> dict[Any, int]:
        return {k[1]: v for k, v in counts.items() if k[0] == kind}

    def histogram(kind: str, field: str) -> dict[int, int]:
        return {k[2]: v for k, v in counts.items() if k[0] == kind and k[1] == field}

    fields = sorted({k[1] for k in counts if k[0] == "words"})
    captions = {}
    for field in fields:
        captions[field] = {"words": distribution(histogram("words", field))}
        token_hist = histogram("tokens", field)
        if token_hist:
            captions[field]["tokens"] = distribution(token_hist)
            captions[field]["tokens"][f"over_{CLIP_CONTEXT_LENGTH}"] = sum(
                c for t, c in token_hist.items() if t > CLIP_CONTEXT_LENGTH
            )
    return {
        "splits": dict(sorted(table("split").items())),
        "categories": {
            "cat_label": {c: table("cat_label").get(c, 0) for c in CATEGORIES},
            "image_labels": {c: table("image_labels").get(c, 0) for c in CATEGORIES},
        },
        "set_tags": dict(sorted(table("set_tag").items())),
        "image": {"width": distribution(table("width")), "height": distribution(table("height"))},
        "captions": captions,
    }
