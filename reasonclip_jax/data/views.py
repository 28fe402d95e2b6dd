"""Views: which texts and labels one shard record gives as training examples.

A view fixes an epoch's *index space*: `examples_per_record` examples per record, index
`k` of a source meaning record `k // examples_per_record`, variant `k % examples_per_record`.
The input pipeline shuffles that space; the view only turns (record, variant, epoch) into
texts and labels. Each recipe stage picks one (`train/stages.py`):

  CaptionView          image + one caption. `text_fields` picks the pool: ("desc",) is the
                       recipe's "Description CP", ("reason", "cat_caption") its "Reasoning
                       CP". One example per record per epoch; the caption is
                       pool[(h(seed, record) + epoch) % len(pool)], so over len(pool) epochs
                       each caption is used once. Keys: text.
  CaptionPairsView     image + one descriptive + one reasoning caption. Nine examples per
                       record: variant v pairs desc[v // 3] with reason[v % 3], so each epoch
                       meets all 3 x 3 pairs once (records with fewer captions reuse them
                       modulo their count). Keys: text_desc, text_reason.
  CategoryCaptionView  image + its category caption. Keys: text, cat_label (S=0 A=1 H=2 T=3
                       P=4), image_labels (multi-hot over the 5 categories, 3 ones in the
                       release).

Try it:

    python -c "from reasonclip_jax.data import views; print(views.CaptionPairsView())"
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import numpy as np

from reasonclip_jax.data import records
from reasonclip_jax.errors import UserError

TEXT_FIELDS = ("desc", "reason", "cat_caption")
NUM_CATEGORIES = len(records.CATEGORIES)
CAPTIONS_PER_KIND = 3  # descriptive and reasoning captions per image in the release


def seeded_int(*keys: int) -> int:
    """A stable 63-bit hash of integers (same value on every host, process and Python)."""
    digest = hashlib.blake2b(struct.pack(f"<{len(keys)}q", *keys), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class View:
    """How records become examples; subclasses fill in the texts (and labels)."""

    examples_per_record: int = 1
    text_keys: tuple[str, ...] = ("text",)

    def check(self, record: records.Record) -> None:
        """Raises ValueError naming what this view needs and `record` lacks."""
        if not record.image:
            raise ValueError("record has no image")

    def texts(self, record: records.Record, variant: int, seed: int, epoch: int,
              record_index: int) -> list[str]:
        """The example's texts, in the order of `text_keys`."""
        raise NotImplementedError

    def labels(self, record: records.Record) -> dict[str, np.ndarray]:
        """Label arrays of the example (none by default)."""
        del record
        return {}

    def label_zeros(self) -> dict[str, np.ndarray]:
        """Zero-valued labels of the right shapes (padding rows)."""
        return {}


@dataclasses.dataclass(frozen=True)
class CaptionView(View):
    """One caption per example from the pool of `text_fields`, rotating over epochs."""

    text_fields: tuple[str, ...] = ("desc",)

    def __post_init__(self) -> None:
        bad = [f for f in self.text_fields if f not in TEXT_FIELDS]
        if bad or not self.text_fields:
            raise UserError(f"text_fields {list(self.text_fields)}: use a non-empty subset "
                            f"of {list(TEXT_FIELDS)}")

    def check(self, record: records.Record) -> None:
        super().check(record)
        if not self._pool(record):
            raise ValueError(f"record has no caption in fields {list(self.text_fields)}")

    def texts(self, record: records.Record, variant: int, seed: int, epoch: int,
              record_index: int) -> list[str]:
        pool = self._pool(record)
        return [pool[(seeded_int(seed, record_index) + epoch) % len(pool)]]

    def _pool(self, record: records.Record) -> list[str]:
        pool: list[str] = []
        for field in self.text_fields:
            value = getattr(record, field)
            pool.extend([value] if isinstance(value, str) else list(value or ()))
        return pool


@dataclasses.dataclass(frozen=True)
class CaptionPairsView(View):
    """Every (descriptive, reasoning) caption pair of a record, one example each."""

    examples_per_record = CAPTIONS_PER_KIND**2
    text_keys = ("text_desc", "text_reason")

    def check(self, record: records.Record) -> None:
        super().check(record)
        if not (record.desc and record.reason):
            raise ValueError("needs 'desc' and 'reason' captions")

    def texts(self, record: records.Record, variant: int, seed: int, epoch: int,
              record_index: int) -> list[str]:
        return [
            record.desc[(variant // CAPTIONS_PER_KIND) % len(record.desc)],
            record.reason[(variant % CAPTIONS_PER_KIND) % len(record.reason)],
        ]


@dataclasses.dataclass(frozen=True)
class CategoryCaptionView(View):
    """The record's category caption, its category and the image's multi-hot categories."""

    def check(self, record: records.Record) -> None:
        super().check(record)
        if record.cat_caption is None or record.cat_label is None:
            raise ValueError("needs 'cat_caption' and 'cat_label'")
        if not 0 <= record.cat_label < NUM_CATEGORIES or not all(
            0 <= c < NUM_CATEGORIES for c in record.image_labels
        ):
            raise ValueError(f"category indices must lie in [0, {NUM_CATEGORIES})")

    def texts(self, record: records.Record, variant: int, seed: int, epoch: int,
              record_index: int) -> list[str]:
        return [record.cat_caption or ""]

    def labels(self, record: records.Record) -> dict[str, np.ndarray]:
        """`cat_label` (int32 scalar) and `image_labels` (float32 [5])."""
        multi_hot = np.zeros(NUM_CATEGORIES, np.float32)
        multi_hot[list(record.image_labels)] = 1.0
        return {"cat_label": np.int32(record.cat_label), "image_labels": multi_hot}

    def label_zeros(self) -> dict[str, np.ndarray]:
        return {"cat_label": np.int32(0), "image_labels": np.zeros(NUM_CATEGORIES, np.float32)}
