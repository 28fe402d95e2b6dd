"""Views: which texts and labels one shard record gives each recipe stage.

A view fixes an epoch's *index space*: `examples_per_record` examples per record, index
`k` of a source meaning record `k // examples_per_record`, variant `k % examples_per_record`.
The input pipeline shuffles that space; the view only turns (record, variant, epoch) into
texts and labels.

  stage0  image + one caption. `text_fields` picks the pool: ("desc",) is the recipe's
          "Description CP", ("reason", "cat_caption") its "Reasoning CP" (open-form and
          category captions together). One example per record per epoch; the caption is
          pool[(h(seed, record) + epoch) % len(pool)], so over len(pool) epochs each caption
          is used once. Keys: text.
  stage1  image + one descriptive + one reasoning caption. Nine examples per record: variant
          v pairs desc[v // 3] with reason[v % 3], so each epoch meets all 3 x 3 pairs once
          (records with fewer captions reuse them modulo their count). Keys: text_desc,
          text_reason.
  stage2  image + its category caption. Keys: text, cat_label (S=0 A=1 H=2 T=3 P=4),
          image_labels (multi-hot over the 5 categories, 3 ones in the release).

Try it:

    python -c "from reasonclip_jax import example_views as v; print(v.make_view('stage1'))"
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import numpy as np

from reasonclip_jax import records
from reasonclip_jax.errors import UserError

VIEWS = ("stage0", "stage1", "stage2")
TEXT_FIELDS = ("desc", "reason", "cat_caption")
NUM_CATEGORIES = len(records.CATEGORIES)
CAPTIONS_PER_KIND = 3  # descriptive and reasoning captions per image in the release


def seeded_int(*keys: int) -> int:
    """A stable 63-bit hash of integers (same value on every host, process and Python)."""
    digest = hashlib.blake2b(struct.pack(f"<{len(keys)}q", *keys), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclasses.dataclass(frozen=True)
class View:
    """How records become examples for one stage; see the module docstring."""

    name: str
    text_fields: tuple[str, ...] = ("desc",)

    @property
    def examples_per_record(self) -> int:
        return CAPTIONS_PER_KIND**2 if self.name == "stage1" else 1

    @property
    def text_keys(self) -> tuple[str, ...]:
        return ("text_desc", "text_reason") if self.name == "stage1" else ("text",)

    @property
    def has_labels(self) -> bool:
        return self.name == "stage2"

    def check(self, record: records.Record) -> None:
        """Raises ValueError naming what this view needs and `record` lacks."""
        if not record.image:
            raise ValueError("record has no image")
        if self.name == "stage0" and not self._pool(record):
            raise ValueError(f"record has no caption in fields {list(self.text_fields)}")
        if self.name == "stage1" and not (record.desc and record.reason):
            raise ValueError("stage1 needs 'desc' and 'reason' captions")
        if self.name == "stage2":
            if record.cat_caption is None or record.cat_label is None:
                raise ValueError("stage2 needs 'cat_caption' and 'cat_label'")
            if not 0 <= record.cat_label < NUM_CATEGORIES or not all(
                0 <= c < NUM_CATEGORIES for c in record.image_labels
            ):
                raise ValueError(f"stage2 category indices must lie in [0, {NUM_CATEGORIES})")

    def texts(self, record: records.Record, variant: int, seed: int, epoch: int,
              record_index: int) -> list[str]:
        """The example's texts, in the order of `text_keys`."""
        if self.name == "stage1":
            return [
                record.desc[(variant // CAPTIONS_PER_KIND) % len(record.desc)],
                record.reason[(variant % CAPTIONS_PER_KIND) % len(record.reason)],
            ]
        if self.name == "stage2":
            return [record.cat_caption or ""]
        pool = self._pool(record)
        return [pool[(seeded_int(seed, record_index) + epoch) % len(pool)]]

    def labels(self, record: records.Record) -> dict[str, np.ndarray]:
        """stage2's `cat_label` (int32 scalar) and `image_labels` (float32 [5]); else {}."""
        if not self.has_labels:
            return {}
        multi_hot = np.zeros(NUM_CATEGORIES, np.float32)
        multi_hot[list(record.image_labels)] = 1.0
        return {"cat_label": np.int32(record.cat_label), "image_labels": multi_hot}

    def label_zeros(self) -> dict[str, np.ndarray]:
        """Zero-valued labels of the right shapes (padding rows)."""
        if not self.has_labels:
            return {}
        return {"cat_label": np.int32(0), "image_labels": np.zeros(NUM_CATEGORIES, np.float32)}

    def _pool(self, record: records.Record) -> list[str]:
        pool: list[str] = []
        for field in self.text_fields:
            value = getattr(record, field)
            pool.extend([value] if isinstance(value, str) else list(value or ()))
        return pool


def make_view(name: str, text_fields: tuple[str, ...] | list[str] = ("desc",)) -> View:
    """Validates a view name and stage0's text fields (UserError on bad input)."""
    if name not in VIEWS:
        raise UserError(f"unknown view '{name}': use one of {', '.join(VIEWS)}")
    text_fields = tuple(text_fields)
    bad = [f for f in text_fields if f not in TEXT_FIELDS]
    if name == "stage0" and (bad or not text_fields):
        raise UserError(
            f"text_fields {list(text_fields)}: use a non-empty subset of {list(TEXT_FIELDS)}"
        )
    return View(name, text_fields)
