"""A TFDS split as a random-access source, read without TensorFlow.

`open_split` is `tfds.data_source(name, split=..., data_dir=..., download=False)`: TFDS
reads a prepared dataset's ArrayRecord files with `array_record` and parses its examples in
numpy, so `tensorflow-datasets` is needed and TensorFlow is not; nothing is downloaded (a
dataset must already be prepared in `data_dir`, in the ArrayRecord file format). Features
named in `encoded` come back as their stored bytes (an image's PNG/JPEG), so images take the
project's own decode and transforms like every other format. Errors a user can cause (no
such dataset or split, a TFRecord-only copy, an unknown feature) are `UserError`s.

    python -c "from reasonclip_jax.data import tfds_source as t; \
s = t.open_split('tiny_colours', 'test', 'tests/data/tfds', encoded=['photo']); \
print(len(s), t.class_names(s, 'colour'), sorted(s[0]))"
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reasonclip_jax.errors import UserError


class TfdsSplit(Sequence):
    """The examples of one split (dicts of feature name -> value) and the dataset's features."""

    def __init__(self, source: Sequence[Mapping[str, Any]], features: Any, where: str):
        self.source, self.features, self.where = source, features, where

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index):  # type: ignore[override]
        return self.source[index]

    def feature(self, key: str) -> Any:
        """The feature `key` of the dataset (a `tfds.features` object)."""
        if key not in self.features:
            raise UserError(f"{self.where}: no feature '{key}'; it has {sorted(self.features)}")
        return self.features[key]


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def open_split(
    name: str, split: str, data_dir: str, encoded: Iterable[str] = ()
) -> TfdsSplit:
    """The split `split` (any TFDS split string: "test", "train[:1000]") of the dataset
    `name` ("name[/config][:version]") prepared in `data_dir`; the features in `encoded`
    left undecoded (bytes)."""
    import tensorflow_datasets as tfds  # here: only this source needs it (and it is slow)

    where = f"tfds {name} in {data_dir}"
    try:
        with warnings.catch_warnings():  # protobuf's label() deprecation, from tfds' internals
            warnings.simplefilter("ignore", DeprecationWarning)
            builder = tfds.builder(name, data_dir=data_dir)
    except (ValueError, FileNotFoundError) as e:  # DatasetNotFoundError is a ValueError
        raise UserError(f"{where}: {_first_line(e)}") from None
    if not builder.is_prepared():
        raise UserError(f"{where}: not prepared there (no {builder.data_dir}); nothing is "
                        "downloaded, prepare it first (tfds build, file format array_record)")
    encoded = list(encoded)
    for key in encoded:
        if key not in builder.info.features:
            raise UserError(f"{where}: no feature '{key}'; it has {sorted(builder.info.features)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            source = tfds.data_source(
                name, split=split, data_dir=data_dir, download=False,
                decoders={key: tfds.decode.SkipDecoding() for key in encoded},
            )
    except (ValueError, NotImplementedError, FileNotFoundError, AssertionError) as e:
        raise UserError(f"{where}, split '{split}': {_first_line(e)}") from None
    return TfdsSplit(source, builder.info.features, f"{where}, split '{split}'")


def class_names(split: TfdsSplit, key: str) -> list[str]:
    """The names of the `ClassLabel` feature `key`, in label order."""
    feature = split.feature(key)
    names = getattr(feature, "names", None)
    if not names:
        raise UserError(f"{split.where}: feature '{key}' is not a ClassLabel with names; "
                        "give classnames_file")
    return list(names)
