"""Shard sources and the example reader: (source, epoch, index) -> one example dict.

`open_sources` resolves `input.data_dirs` to ArrayRecord shard files (checking each
directory's manifest); `ExampleReader` reads a record, decodes and augments its image and
tokenizes the texts its view gives. A record that cannot be used becomes `Skipped`, which
the batcher counts (`data/batching.py`). `data/pipeline.py` puts these in grain datasets.

    python -c "from reasonclip_jax.data import examples; \\
print(examples.open_sources(['DIR'], 'train'))"
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import ml_collections
import numpy as np
from absl import logging

from reasonclip_jax.data import records, transforms, views
from reasonclip_jax.errors import UserError

TokenizeFn = Callable[[Sequence[str], int], np.ndarray]
AUGMENTS = ("random_resized_crop", "center_crop")
IMAGE_DTYPES = ("uint8", "float32")
# A record is skipped on these; anything else (a bug, an unreadable shard) still raises.
_RECORD_ERRORS = (KeyError, TypeError, *transforms.DECODE_ERRORS)


@dataclasses.dataclass(frozen=True)
class Source:
    """The shard files of one `data_dirs` entry, and where its records sit in `record_index`."""

    pattern: str
    paths: tuple[str, ...]
    num_records: int
    record_offset: int


def open_sources(data_dirs: Sequence[str], split: str) -> list[Source]:
    """Resolves `data_dirs` entries to shard files, checking each directory's manifest."""
    if not data_dirs:
        raise UserError("input.data_dirs is empty: give at least one shard directory")
    sources, offset = [], 0
    for pattern in data_dirs:
        paths = _shard_files(pattern, split)
        num_records = len(_array_record_source(paths))
        if num_records == 0:
            raise UserError(f"{pattern}: the '{split}' shards hold no records")
        sources.append(Source(pattern, tuple(paths), num_records, offset))
        offset += num_records
    return sources


def _shard_files(pattern: str, split: str) -> list[str]:
    matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not matches:
        raise UserError(f"input.data_dirs entry {pattern} matches nothing")
    paths = []
    for match in matches:
        if os.path.isdir(match):
            records.read_manifest(match)
            found = records.shard_paths(match, split)
            if not found:
                raise UserError(f"{match}: no shards for split '{split}'")
            paths.extend(found)
        elif match.endswith(".array_record") and os.path.isfile(match):
            records.read_manifest(os.path.dirname(match) or ".")
            paths.append(match)
        else:
            raise UserError(f"{match} is neither a shard directory nor an .array_record file")
    return paths


def _array_record_source(paths: Sequence[str]) -> Any:
    from array_record.python import array_record_data_source

    return array_record_data_source.ArrayRecordDataSource(list(paths))


def _check_view(source: Source, view: views.View) -> None:
    """Fails early, in one line, when a source's records cannot serve the view at all."""
    data = _array_record_source(source.paths)
    for index in range(min(16, source.num_records)):
        try:
            record = records.decode_record(data[index])
        except (ValueError, KeyError, TypeError):
            continue
        try:
            view.check(record)
        except ValueError as e:
            raise UserError(
                f"{source.pattern}: {type(view).__name__} cannot use its records: {e}"
            ) from None
        return
    raise UserError(f"{source.pattern}: none of its first records decodes; is it a shard dir?")


# ------------------------------------------------------------------------ record -> example
# (runs in grain workers; everything here must pickle)


class Skipped(NamedTuple):
    """Stands for a record that could not be used, so the batcher can count it."""

    record_index: int


def _clip_tokenize(texts: Sequence[str], context_length: int) -> np.ndarray:
    from reasonclip_jax.models.tokenizer import tokenize  # imported where it runs: in the worker

    return tokenize(list(texts), context_length)


@functools.cache
def _loaded_tokenizer(kind: str, directory: str) -> Any:
    from reasonclip_jax.models.siglip_tokenizer import load_tokenizer

    return load_tokenizer(kind, directory)


def _model_tokenize(kind: str, directory: str, texts: Sequence[str],
                    context_length: int) -> np.ndarray:
    """A SigLIP tokenizer's rows; loaded once per process (picklable as a partial)."""
    return _loaded_tokenizer(kind, directory)(list(texts), context_length)


def tokenize_fn_of(cfg: ml_collections.ConfigDict) -> TokenizeFn:
    """`input.tokenizer`'s tokenize function; a SigLIP tokenizer's files are checked now."""
    kind, directory = cfg.get("tokenizer", "clip"), cfg.get("tokenizer_dir", "")
    if kind == "clip":
        return _clip_tokenize
    if not directory:
        raise UserError(f"input.tokenizer '{kind}' needs input.tokenizer_dir: the imported "
                        "checkpoint's tokenizer/ directory")
    _loaded_tokenizer(kind, directory)  # fails here, not in a worker
    return functools.partial(_model_tokenize, kind, directory)


@dataclasses.dataclass(frozen=True)
class ExampleReader:
    """Reads item (source, epoch, index in the view's space) -> example dict or `Skipped`.

    Examples carry uint8 pixels; `collate` normalises whole batches if asked.
    """

    sources: tuple[Source, ...]
    view: views.View
    image_size: int
    context_length: int
    augment: str  # "random_resized_crop" | "center_crop"
    rrc_scale: tuple[float, float]
    rrc_ratio: tuple[float, float]
    hflip: bool
    seed: int
    tokenize_fn: TokenizeFn

    @functools.cached_property
    def _data(self) -> list[Any]:
        return [_array_record_source(s.paths) for s in self.sources]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_data", None)  # open the shards again in the worker
        return state

    def __call__(self, item: tuple[int, int, int]) -> dict[str, np.ndarray] | Skipped:
        source_id, epoch, index = item
        source = self.sources[source_id]
        record_id, variant = divmod(index, self.view.examples_per_record)
        record_index = source.record_offset + record_id
        data = self._data[source_id][record_id]  # outside the try: a read error is no skip
        try:
            record = records.decode_record(data)
            self.view.check(record)
            image = transforms.decode_image(record.image)
        except _RECORD_ERRORS as e:
            logging.warning("skipping record %d of %s: %s", record_id, source.pattern, e)
            return Skipped(record_index)
        if self.augment == "center_crop":
            pixels = transforms.eval_pixels(image, self.image_size)
        else:
            rng = np.random.default_rng([self.seed, source_id, epoch, index])
            pixels = transforms.train_pixels(
                image, self.image_size, rng, self.rrc_scale, self.rrc_ratio, self.hflip
            )
        texts = self.view.texts(record, variant, self.seed, epoch, record_index)
        tokens = np.asarray(self.tokenize_fn(texts, self.context_length), np.int32)
        return {
            "image": pixels,
            **dict(zip(self.view.text_keys, tokens, strict=True)),
            **self.view.labels(record),
            "record_index": np.int64(record_index),
        }

    def padding(self) -> dict[str, np.ndarray]:
        """An all-zero example (record_index -1) with the shapes of a real one."""
        size, length = self.image_size, self.context_length
        return {
            "image": np.zeros((size, size, 3), np.uint8),
            **{k: np.zeros(length, np.int32) for k in self.view.text_keys},
            **self.view.label_zeros(),
            "record_index": np.int64(-1),
        }


def host_normalizes(cfg: ml_collections.ConfigDict) -> bool:
    if cfg.image_dtype not in IMAGE_DTYPES:
        raise UserError(f"input.image_dtype '{cfg.image_dtype}': use one of "
                        f"{', '.join(IMAGE_DTYPES)}")
    return cfg.image_dtype == "float32"


def make_reader(cfg: ml_collections.ConfigDict, view: views.View, sources: Sequence[Source],
                 augment: str, tokenize_fn: TokenizeFn | None) -> ExampleReader:
    if augment not in AUGMENTS:
        raise UserError(f"input.augment '{augment}': use one of {', '.join(AUGMENTS)}")
    if cfg.shuffle_seed < 0:
        raise UserError(f"input.shuffle_seed {cfg.shuffle_seed}: use a non-negative integer")
    for source in sources:
        _check_view(source, view)
    return ExampleReader(
        sources=tuple(sources), view=view, image_size=cfg.image_size,
        context_length=cfg.context_length, augment=augment,
        rrc_scale=tuple(cfg.rrc_scale), rrc_ratio=tuple(cfg.rrc_ratio), hflip=cfg.hflip,
        seed=cfg.shuffle_seed, tokenize_fn=tokenize_fn or tokenize_fn_of(cfg),
    )
