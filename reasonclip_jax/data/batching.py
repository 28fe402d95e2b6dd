"""Batches: stacking examples (into a worker's shared memory), skipping and counting.

`BatchMemory` builds a batch where it will be used (this process, or a grain worker's
shared-memory block for the trainer); `SkippingBatchIterDataset` leaves `Skipped` records
out of their batch and counts them; `RunningSkipCountIterDataset` turns the counts into
this process's running total, part of the checkpointed iterator state.

    python -m pytest tests/test_pipeline.py -k skip
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from absl import logging
from grain.multiprocessing import SharedMemoryArray

from reasonclip_jax.data import examples, shared_blocks, transforms


def collate(
    rows: Sequence[dict[str, np.ndarray]], normalize: bool, out: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Stacks examples along a new batch axis; with `normalize`, uint8 images become float32.

    The images are written into `out` when given (a worker's shared-memory block).
    """
    batch = {key: np.stack([row[key] for row in rows]) for key in rows[0] if key != "image"}
    if normalize:
        pixels = np.stack([row["image"] for row in rows])
        batch["image"] = transforms.normalize(pixels, out=out)
    else:
        batch["image"] = np.stack([row["image"] for row in rows], out=out)
    return batch


@dataclasses.dataclass(frozen=True)
class BatchMemory:
    """Where batches are built: in this process, or in a grain worker for the trainer.

    In a worker (`shared`), images go straight into shared memory: with `max_blocks`, one of
    the worker's reusable blocks (`shared_blocks`), and the batch carries the block's
    `BlockRef`, which `shared_blocks.OpenBlocksIterDataset` opens in the trainer process;
    with `max_blocks=0`, a fresh grain `SharedMemoryArray` per batch (grain's stock path).
    """

    shared: bool
    normalize: bool
    max_blocks: int = 0

    def make_batch(
        self, rows: Sequence[dict[str, np.ndarray]], blank: np.ndarray | None = None
    ) -> dict[str, Any]:
        """`collate(rows)`, with the image rows in `blank` set to zero."""
        out, ref = None, None
        if self.shared:
            shape = (len(rows), *rows[0]["image"].shape)
            dtype = np.float32 if self.normalize else np.uint8
            blocks = shared_blocks.worker_blocks(self.max_blocks) if self.max_blocks else None
            if blocks is None:
                out = SharedMemoryArray(shape, dtype)
            else:
                ref, out = blocks.take(shape, dtype)
        batch = collate(rows, self.normalize, out)
        if blank is not None:
            batch["image"][blank] = 0  # zero after normalisation too
        if ref is not None:
            batch["image"] = ref
        return batch


# ------------------------------------------------------------------------ skipping and counting


class SkippingBatchIterDataset(grain.IterDataset):
    """Batches examples, leaving out `Skipped` markers and counting them in the batch.

    Each batch's `skipped_records` is the number of markers met while filling it; an
    incomplete last batch is dropped (with a warning if it met skipped records).
    """

    def __init__(self, parent: grain.IterDataset, batch_size: int, memory: BatchMemory):
        super().__init__(parent)
        self._batch_size = batch_size
        self._memory = memory

    def __iter__(self) -> grain.DatasetIterator:
        return _SkippingBatchIterator(self._parent.__iter__(), self._batch_size, self._memory)

    def __str__(self) -> str:
        return f"SkippingBatchIterDataset(batch_size={self._batch_size})"


# Batches are built from whole parent elements, so the parent's state is the state.
class _SkippingBatchIterator(shared_blocks.PassThroughStateIterator):
    def __init__(self, parent: grain.DatasetIterator, batch_size: int, memory: BatchMemory):
        super().__init__(parent)
        self._batch_size = batch_size
        self._memory = memory

    def __next__(self) -> dict[str, np.ndarray]:
        rows, skipped = [], 0
        while len(rows) < self._batch_size:
            try:
                element = next(self._parent)
            except StopIteration:
                if skipped:
                    logging.warning("end of data: %d skipped records in a dropped batch", skipped)
                raise
            if isinstance(element, examples.Skipped):
                skipped += 1
            else:
                rows.append(element)
        batch = self._memory.make_batch(rows)
        batch["skipped_records"] = np.int64(skipped)
        return batch



class RunningSkipCountIterDataset(grain.IterDataset):
    """Turns per-batch `skipped_records` into this process's running total.

    Runs in the trainer process, after the workers, so the total covers all of them; it is
    part of the iterator state, so it survives checkpoint restores.
    """

    def __iter__(self) -> grain.DatasetIterator:
        return _RunningSkipCountIterator(self._parent.__iter__())


class _RunningSkipCountIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)
        self._skipped = 0

    def __next__(self) -> dict[str, np.ndarray]:
        batch = dict(next(self._parent))
        self._skipped += int(batch["skipped_records"])
        batch["skipped_records"] = np.int64(self._skipped)
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"pipeline": self._parent.get_state(), "skipped_records": self._skipped}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["pipeline"])
        self._skipped = int(state["skipped_records"])
