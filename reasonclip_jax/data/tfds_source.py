"""A TFDS split as a random-access source, read without TensorFlow.

`open_split` is `tfds.data_source(name, split=..., data_dir=..., download=False)`: TFDS
reads a prepared dataset's ArrayRecord files with `array_record` and parses its examples in
numpy, so `tensorflow-datasets` is needed and TensorFlow is not; nothing is downloaded (a
dataset must already be prepared in `data_dir`, in the ArrayRecord file format). Features
named in `encoded` come back as their stored bytes (an image's PNG/JPEG), so images take the
project's own decode and transforms like every other format. Errors a user can cause (no
such dataset or split, a TFRecord-only copy, an unknown feature) are `UserError`s.

The zero-shot evaluator (`zero_shot_tfds`) and the preprocessing's `tfds` source read
through the same three calls: `open_split`, `read_images` (the examples with their image
bytes) and, for captions, `texts` (a text feature's strings, or a class label's name).

    python -c "from reasonclip_jax.data import tfds_source as t; \
s = t.open_split('tiny_colours', 'test', 'tests/data/tfds', encoded=['photo']); \
print(len(s), t.class_names(s, 'colour'), sorted(s[0]))"
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

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


def read_images(split: TfdsSplit, image_key: str, start: int = 0, stop: int | None = None
                ) -> Iterator[tuple[int, bytes, Mapping[str, Any]]]:
    """(index, the image's stored bytes, the example) for examples [start, stop) of a split
    opened with `encoded=[image_key]`."""
    import tensorflow_datasets as tfds

    feature = split.feature(image_key)
    if not isinstance(feature, tfds.features.Image):  # checked now, not at the first example
        raise UserError(f"{split.where}: feature '{image_key}' is a {type(feature).__name__}, "
                        "not an Image")

    def examples() -> Iterator[tuple[int, bytes, Mapping[str, Any]]]:
        for index in range(start, len(split) if stop is None else stop):
            example = split[index]
            yield index, example[image_key], example

    return examples()


def _caption_feature(split: TfdsSplit, key: str) -> Any:
    """The feature `key` names, "a/b" reaching into a (sequence of) feature dicts, with a
    Sequence unwrapped to its element."""
    import tensorflow_datasets as tfds

    names = key.split("/")
    feature = split.feature(names[0])
    for name in names[1:]:
        if isinstance(feature, tfds.features.Sequence):
            feature = feature.feature
        if not isinstance(feature, tfds.features.FeaturesDict) or name not in feature:
            raise UserError(f"{split.where}: no feature '{key}'")
        feature = feature[name]
    return feature.feature if isinstance(feature, tfds.features.Sequence) else feature


def text_feature_kind(split: TfdsSplit, key: str) -> str:
    """"label" for a `ClassLabel` feature, "text" for a `Text` one (either alone, or a
    sequence of them); anything else cannot give a caption."""
    import tensorflow_datasets as tfds

    feature = _caption_feature(split, key)
    if isinstance(feature, tfds.features.ClassLabel):
        return "label"
    if isinstance(feature, tfds.features.Text):
        return "text"
    raise UserError(f"{split.where}: feature '{key}' is a {type(feature).__name__}; captions "
                    "come from a Text feature, a ClassLabel, or a Sequence of either")


def texts(split: TfdsSplit, example: Mapping[str, Any], key: str,
          label_template: str = "{}") -> list[Any]:
    """The captions of an example's feature `key`: its strings as stored (bytes, checked as
    UTF-8 later), or each class label's name in `label_template` ("a photo of a {}.")."""
    value = example
    for name in key.split("/"):
        value = value[name]
    values = [value] if isinstance(value, (bytes, str)) else list(
        np.asarray(value, dtype=object).reshape(-1))
    if text_feature_kind(split, key) == "label":
        names = _caption_feature(split, key).names
        return [label_template.format(names[int(v)]) for v in values]
    return values
