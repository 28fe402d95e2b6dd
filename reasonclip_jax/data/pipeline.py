"""Grain input pipelines: ArrayRecord shards -> per-process numpy batches -> global jax.Arrays.

Training (`make_train_iterator`), for each source i of `data_dirs`:

    view index space [0, records * examples_per_record)   (data/views.py: 1 or 9 per record)
    -> index shuffle, a new permutation every epoch        (seed from shuffle_seed and i)
    -> repeat num_epochs times                              (None: forever)

then: weighted mix of the sources (grain's MapDataset.mix: deterministic, each source keeps its
own order) -> this process's slice `[process_index::process_count]`, so over all processes each
example of an epoch is read exactly once -> read, decode, augment, tokenize (in
`worker_count` grain worker processes, or in this process when 0) -> batches of
`batch_size // process_count` -> thread prefetch. The mixed stream is infinite when
num_epochs is None; otherwise it stops when any source has run its epochs, and the last
incomplete batch of each worker is dropped (up to worker_count * (batch - 1) examples).
Worker w batches positions w, w + W, ... of the process's stream, so the batches depend on
worker_count (deterministically); the examples of each epoch do not.

A record that cannot be used (bad magic, corrupt header or JPEG, fields the view needs
missing) is logged, left out of its batch, and counted: every batch carries
`skipped_records`, this process's running count of skipped records (a scalar int64, part of
the checkpointed iterator state), so a trainer can log it as a metric.

Evaluation (`make_eval_iterator`): the same examples without shuffling, augmentation or
repetition; the sources are concatenated. Every process gets `num_eval_batches()` batches
(equal counts, so hosts stay in step); global batch j holds examples [j * B, (j + 1) * B),
process p its rows [p * b, (p + 1) * b) with b = B // process_count. Rows past the end, and
records that cannot be used, are padding: `mask` False, every field zero, `record_index` -1.

Images leave the pipeline as raw uint8 pixels by default (`image_dtype`): the model
normalises integer pixels on the device (`model.normalize_pixels`, the same formula), which
keeps that work off the host CPUs and sends a quarter of the bytes to the accelerator.
With `image_dtype="float32"` the batches are CLIP-normalised here instead.

With workers, each batch reaches the trainer process in shared memory: a worker writes its
images into one of its reusable blocks (`shared_blocks`), and the trainer's arrays are views
of that block, which goes back to the worker when the batch is dropped. Tokens and labels
cross in the pickle.

Batch keys (B = per-process batch, L = context_length, S = image_size):
    image          uint8   [B, S, S, 3]  raw pixels (float32, CLIP-normalised, if asked)
    text           int32   [B, L]        stage0, stage2
    text_desc      int32   [B, L]        stage1
    text_reason    int32   [B, L]        stage1
    cat_label      int32   [B]           stage2
    image_labels   float32 [B, 5]        stage2 (multi-hot)
    record_index   int64   [B]           record's index across data_dirs (in order), -1 = pad
    mask           bool    [B]           eval only
    skipped_records int64  []            running count of skipped records in this process

Checkpointing: the iterators are grain `DatasetIterator`s; `get_state()` / `set_state()` give
and take a JSON-able dict, and `checkpoint_save_args` / `checkpoint_restore_args` wrap an
iterator for an orbax `CheckpointManager` item (grain's CheckpointHandler: one JSON file per
process). A restored iterator continues with the batches the uninterrupted one would have
produced, given the same config, worker_count and process layout.

Config keys (`get_config()`; a training config sets them under `config.input`):
    data_dirs           list of shard directories, or globs of directories or of
                        `*.array_record` files (their directory's manifest.json is checked)
    weights             mixture weights, one per data_dirs entry; None = proportional to
                        each source's examples per epoch (the sources shuffled together)
    split               shard split name, e.g. "train"
    text_fields         the caption pool of a `CaptionView` (stage 0): ("desc",),
                        ("reason", "cat_caption"), ...
    batch_size          global batch size (divided by the process count)
    image_size          output side in pixels
    image_dtype         "uint8" (raw pixels, normalised by the model on device) | "float32"
                        (CLIP-normalised on the host)
    context_length      text tokens per caption (77 CLIP, 64 SigLIP)
    tokenizer           the model's: "clip" (the vendored OpenAI BPE) | "siglip" | "gemma"
    tokenizer_dir       siglip / gemma: the directory of the tokenizer files (an imported
                        checkpoint's `tokenizer/`, `models/siglip_tokenizer.py`)
    augment             "random_resized_crop" | "center_crop" (training only)
    rrc_scale           random resized crop area fraction range
    rrc_ratio           random resized crop aspect-ratio range
    hflip               random horizontal flips (off: captions say left and right)
    shuffle_seed        seed of the shuffles, caption choices and augmentations
    num_epochs          epochs to run; None = forever (training counts steps)
    worker_count        grain worker processes per host; 0 = decode in this process
    worker_buffer_size  batches each worker keeps ready
    reuse_worker_blocks workers write batches into shared-memory blocks they reuse once the
                        trainer drops a batch (`shared_blocks`, Linux); False: grain's stock
                        path, a fresh shared-memory block per batch
    read_threads        threads per process (the trainer's, or each worker's) reading and
                        decoding examples; 0 = in the iterating thread. Every example then
                        crosses threads and they contend for the GIL, which costs CPU
                        (bench: +13% for 2 threads in one process), so use workers for more
                        cores and threads only to hide slow (remote) reads
    read_buffer_size    examples buffered per process ahead of batching
    prefetch            batches a background thread of the trainer keeps ready; 0 = none
    group_size          1, or G > 1: hard-negative groups. Records [kG, (k+1)G) of every shard
                        are one group (siblings the preprocessing wrote together, manifest
                        `group_size` G, e.g. `data_pipeline.build --scene-group-size G`);
                        the shuffle then permutes (group, variant) units and each unit gives
                        its G records' examples of that variant one after another, so a
                        batch holds whole groups (batch_size / process_count must be a
                        multiple of G; workers get whole groups too). Every epoch still
                        reads each example once.

Try it (a shard directory from data_pipeline/):

    python -c "from reasonclip_jax.data import pipeline as ip; c = ip.get_config(); \\
c.data_dirs = ['DIR']; c.batch_size = 8; from reasonclip_jax.data import views; \\
b = next(ip.make_train_iterator(c, views.CaptionPairsView())); \\
print({k: v.shape for k, v in b.items()})"
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np

from reasonclip_jax.data import batching, examples, shared_blocks, transforms, views
from reasonclip_jax.errors import UserError

_MIN_SHM_BYTES = 64 * 1024


def get_config() -> ml_collections.ConfigDict:
    """Every input key with its default; see the module docstring for their meaning."""
    return ml_collections.ConfigDict(
        dict(
            data_dirs=[],
            weights=None,
            split="train",
            text_fields=("desc",),
            batch_size=256,
            image_size=224,
            image_dtype="uint8",
            context_length=77,
            tokenizer="clip",
            tokenizer_dir="",
            augment="random_resized_crop",
            rrc_scale=transforms.DEFAULT_RRC_SCALE,
            rrc_ratio=transforms.DEFAULT_RRC_RATIO,
            hflip=False,
            shuffle_seed=42,
            num_epochs=None,
            worker_count=0,
            worker_buffer_size=2,
            reuse_worker_blocks=True,
            read_threads=0,
            read_buffer_size=64,
            prefetch=2,
            group_size=1,
        )
    )


# ---------------------------------------------------------------------------------------------
# Training pipeline.


def _process_layout(
    batch_size: int, process_index: int | None, process_count: int | None
) -> tuple[int, int, int]:
    """(process_index, process_count, per-process batch); JAX's process by default."""
    if process_index is None or process_count is None:
        import jax  # workers never need jax: keep it out of their imports

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if batch_size % process_count:
        raise UserError(
            f"input.batch_size {batch_size} is not divisible by the {process_count} processes"
        )
    return process_index, process_count, batch_size // process_count


def _tag_item(source_id: int, epoch_size: int, position: int, index: int) -> tuple[int, ...]:
    return source_id, position // epoch_size, index


def _mixture_weights(cfg: ml_collections.ConfigDict, epoch_sizes: Sequence[int]) -> list[float]:
    if cfg.weights is None:
        return [float(n) for n in epoch_sizes]
    weights = [float(w) for w in cfg.weights]
    if len(weights) != len(epoch_sizes) or min(weights) <= 0:
        raise UserError(
            f"input.weights {weights}: give one positive weight per data_dirs entry "
            f"({len(epoch_sizes)})"
        )
    return weights


def _ensure_absl_flags_parsed() -> None:
    """Grain reads absl flags; outside `app.run` nobody parsed them, so use their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _batch_memory(cfg: ml_collections.ConfigDict) -> batching.BatchMemory:
    # A worker's blocks in flight: its buffer, the batch grain's reader thread holds, the
    # trainer's prefetch buffer and the batches the trainer is using.
    max_blocks = cfg.worker_buffer_size + cfg.prefetch + 4
    return batching.BatchMemory(cfg.worker_count > 0, examples.host_normalizes(cfg),
                       max_blocks if cfg.reuse_worker_blocks else 0)


def _finish(ds: grain.IterDataset, cfg: ml_collections.ConfigDict) -> grain.IterDataset:
    """Worker processes, the running skip count and the trainer-side prefetch thread."""
    _ensure_absl_flags_parsed()
    if cfg.worker_count > 0:
        # Small arrays (tokens, labels) cross in the pickle: a shared-memory block costs more.
        ds = grain.experimental.WithOptionsIterDataset(
            ds, grain.experimental.DatasetOptions(min_shm_size=_MIN_SHM_BYTES)
        )
    ds = ds.mp_prefetch(
        grain.MultiprocessingOptions(
            num_workers=cfg.worker_count, per_worker_buffer_size=cfg.worker_buffer_size
        )
    )
    if cfg.worker_count > 0 and cfg.reuse_worker_blocks:
        ds = shared_blocks.OpenBlocksIterDataset(ds)
    ds = batching.RunningSkipCountIterDataset(ds)
    if cfg.prefetch:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=cfg.prefetch)
    return ds


def _check_groups(sources: Sequence[examples.Source], group_size: int, local_batch: int
                  ) -> None:
    """Every shard must hold whole groups of `group_size` records, written as groups."""
    import os

    from array_record.python import array_record_data_source

    from reasonclip_jax.data import records

    if local_batch % group_size:
        raise UserError(f"input.group_size {group_size} does not divide the per-process batch "
                        f"{local_batch}")
    for source in sources:
        for path in source.paths:
            written = records.read_manifest(os.path.dirname(path) or ".").get("group_size", 1)
            if written != group_size:
                raise UserError(f"{path} was written in groups of {written}, but "
                                f"input.group_size is {group_size}")
            count = len(array_record_data_source.ArrayRecordDataSource([path]))
            if count % group_size:
                raise UserError(f"{path}: {count} records, not whole groups of {group_size} "
                                f"(a record of a group was rejected?)")


@dataclasses.dataclass(frozen=True)
class _GroupReader:
    """(source, epoch, unit) -> the unit's `group_size` examples: group g = unit // E of the
    source's records, variant v = unit % E, member m -> example ((g * G + m) * E + v)."""

    reader: examples.ExampleReader
    group_size: int

    def __call__(self, item: tuple[int, int, int]) -> list[Any]:
        source_id, epoch, unit = item
        per_record = self.reader.view.examples_per_record
        group, variant = divmod(unit, per_record)
        first = group * self.group_size
        return [self.reader((source_id, epoch, (first + m) * per_record + variant))
                for m in range(self.group_size)]


class _Flatten(grain.experimental.FlatMapTransform):
    def __init__(self, group_size: int):
        self.max_fan_out = group_size

    def flat_map(self, element: list[Any]) -> list[Any]:
        return element


def _read_options(cfg: ml_collections.ConfigDict) -> grain.ReadOptions:
    return grain.ReadOptions(
        num_threads=cfg.read_threads, prefetch_buffer_size=cfg.read_buffer_size
    )


def make_train_dataset(
    cfg: ml_collections.ConfigDict,
    view: views.View,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    tokenize_fn: examples.TokenizeFn | None = None,
    start_position: int = 0,
) -> grain.IterDataset:
    """The training pipeline of the module docstring, for one process, of `view`'s examples
    (the stage's: `train.stages.get_stage(name).make_view(cfg.text_fields)`).

    `process_index` / `process_count` default to JAX's; `tokenize_fn(texts, length)` to the
    CLIP tokenizer. `start_position` skips that many examples of the mixed stream (all
    processes together): `step * batch_size` resumes a run saved with another process count
    at the batch it would have read next (exact when no record was skipped as corrupt).
    """
    process_index, process_count, local_batch = _process_layout(
        cfg.batch_size, process_index, process_count
    )
    sources = examples.open_sources(cfg.data_dirs, cfg.split)
    reader = examples.make_reader(cfg, view, sources, cfg.augment, tokenize_fn)
    group = cfg.get("group_size", 1)
    if group > 1:
        _check_groups(sources, group, local_batch)
        if start_position % group:
            raise UserError(f"start position {start_position} splits a group of {group}")
    per_source = []
    for source_id, source in enumerate(sources):
        # With groups the shuffled space is (group, variant) units, group examples each.
        epoch_size = source.num_records // group * reader.view.examples_per_record
        seed = views.seeded_int(cfg.shuffle_seed, source_id) % 2**32
        ds = grain.MapDataset.range(epoch_size).shuffle(seed).repeat(cfg.num_epochs)
        per_source.append(ds.map_with_index(functools.partial(_tag_item, source_id, epoch_size)))
    if len(per_source) == 1:
        ds = per_source[0]
    else:
        epoch_sizes = [s.num_records * reader.view.examples_per_record for s in sources]
        ds = grain.MapDataset.mix(per_source, _mixture_weights(cfg, epoch_sizes))
    if start_position:
        ds = ds[start_position // group:]
    ds = ds[process_index::process_count]
    if group > 1:
        ds = ds.map(_GroupReader(reader, group)).to_iter_dataset(_read_options(cfg))
        ds = grain.experimental.FlatMapIterDataset(ds, _Flatten(group))
    else:
        ds = ds.map(reader).to_iter_dataset(_read_options(cfg))
    ds = batching.SkippingBatchIterDataset(ds, local_batch, _batch_memory(cfg))
    return _finish(ds, cfg)


def make_train_iterator(cfg: ml_collections.ConfigDict, view: views.View, **kwargs: Any
                        ) -> grain.DatasetIterator:
    """`iter(make_train_dataset(cfg, view, **kwargs))`; close it when done to stop workers."""
    return iter(make_train_dataset(cfg, view, **kwargs))


# ---------------------------------------------------------------------------------------------
# Evaluation pipeline.


@dataclasses.dataclass(frozen=True)
class _EvalBatchBuilder:
    """Builds this process's part of global eval batch j, padding and masking as needed."""

    reader: examples.ExampleReader
    starts: tuple[int, ...]  # first position of each source in the concatenated space
    total: int
    global_batch: int
    local_batch: int
    process_index: int
    memory: batching.BatchMemory

    def __call__(self, batch_id: int) -> dict[str, np.ndarray]:
        rows, skipped = [], 0
        first = batch_id * self.global_batch + self.process_index * self.local_batch
        for position in range(first, first + self.local_batch):
            row: dict[str, np.ndarray] | examples.Skipped | None = None
            if position < self.total:
                source_id = bisect.bisect_right(self.starts, position) - 1
                row = self.reader((source_id, 0, position - self.starts[source_id]))
                skipped += isinstance(row, examples.Skipped)
            if isinstance(row, dict):
                rows.append({**row, "mask": np.True_})
            else:
                rows.append({**self.reader.padding(), "mask": np.False_})
        masks = np.array([row["mask"] for row in rows])
        batch = self.memory.make_batch(rows, blank=~masks)  # padding: zero when normalised too
        batch["skipped_records"] = np.int64(skipped)
        return batch


def _eval_layout(cfg: ml_collections.ConfigDict, sources: Sequence[examples.Source],
                 view: views.View) -> tuple[tuple[int, ...], int, int]:
    sizes = [s.num_records * view.examples_per_record for s in sources]
    starts = tuple(int(x) for x in np.cumsum([0, *sizes[:-1]]))
    total = sum(sizes)
    return starts, total, math.ceil(total / cfg.batch_size)


def num_eval_batches(cfg: ml_collections.ConfigDict, view: views.View) -> int:
    """Batches every process gets from `make_eval_iterator(cfg, view)`."""
    sources = examples.open_sources(cfg.data_dirs, cfg.split)
    return _eval_layout(cfg, sources, view)[2]


def make_eval_dataset(
    cfg: ml_collections.ConfigDict,
    view: views.View,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    tokenize_fn: examples.TokenizeFn | None = None,
) -> grain.IterDataset:
    """The evaluation pipeline of the module docstring: one pass, padded, masked.

    Uses `data_dirs` (concatenated, `weights` ignored), `split`,
    sizes, `shuffle_seed` (stage0's caption choice) and the worker/prefetch keys; never
    shuffles or augments.
    """
    process_index, process_count, local_batch = _process_layout(
        cfg.batch_size, process_index, process_count
    )
    sources = examples.open_sources(cfg.data_dirs, cfg.split)
    reader = examples.make_reader(cfg, view, sources, "center_crop", tokenize_fn)
    starts, total, num_batches = _eval_layout(cfg, sources, reader.view)
    builder = _EvalBatchBuilder(
        reader, starts, total, cfg.batch_size, local_batch, process_index, _batch_memory(cfg)
    )
    ds = grain.MapDataset.range(num_batches).map(builder)
    return _finish(ds.to_iter_dataset(_read_options(cfg)), cfg)


def make_eval_iterator(cfg: ml_collections.ConfigDict, view: views.View, **kwargs: Any
                       ) -> grain.DatasetIterator:
    """`iter(make_eval_dataset(cfg, view, **kwargs))`; close it when done to stop workers."""
    return iter(make_eval_dataset(cfg, view, **kwargs))


# ---------------------------------------------------------------------------------------------
# Device arrays.


def make_global_batch(
    batch: dict[str, np.ndarray], mesh: Any, batch_axes: str | Sequence[str] = ("data", "fsdp")
) -> dict[str, Any]:
    """Process-local numpy batch -> global `jax.Array`s sharded over the mesh's batch axes.

    Arrays with a batch axis become `jax.make_array_from_process_local_data(
    NamedSharding(mesh, P(batch_axes)), local)`, whose global batch is the concatenation
    over processes; scalars (`skipped_records`) stay host numpy values.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
    sharding = NamedSharding(mesh, PartitionSpec(axes))
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        if np.ndim(value) else value
        for key, value in batch.items()
    }

