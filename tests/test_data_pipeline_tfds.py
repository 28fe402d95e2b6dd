"""The preprocessing's `tfds` source: TFDS datasets prepared as ArrayRecord, read with
`tfds.data_source` (no TensorFlow), image-text and image-label.

The fixtures (tests/data/tfds, built once by the scripts there) are checked against their
builders' own tables: each stored image is a solid colour that says which example it is.
"""

import io
import os
import sys

import numpy as np
import pytest
from PIL import Image

from data_pipeline import build, process, write
from reasonclip_jax.data import records
from reasonclip_jax.errors import UserError

TFDS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tfds")
# build_tiny_captions.py: grey level -> (captions, title)
CAPTIONS = {0: (["a black square", "all dark"], "black"),
            60: (["a dark grey square"], "dark grey"),
            120: (["a grey square", "a grey square", "mid grey"], "grey"),
            180: (["", " "], "light grey"),
            240: (["a white square"], "white")}
# build_tiny_colours.py, split test: colour -> label
COLOURS = {(255, 0, 0): "red", (0, 255, 0): "green", (0, 0, 255): "blue",
           (200, 30, 30): "red", (30, 200, 30): "red", (20, 20, 220): "blue"}


def _build(tmp_path, *args: str) -> tuple[dict, list[records.Record]]:
    out = str(tmp_path / "out")
    manifest = build.run(["--source", "tfds", "--input", TFDS_DIR, "--output", out,
                          "--keep-image-bytes", "--min-size", "1", "--validation-fraction", "0",
                          *args])[out]
    return manifest, list(records.ShardDirectory(out, "train").read_all())


def _colour(record: records.Record) -> tuple[int, ...]:
    with Image.open(io.BytesIO(record.image)) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels == pixels[0, 0]).all() and record.image.startswith(b"\x89PNG")
    return tuple(int(c) for c in pixels[0, 0])


def test_image_text_dataset_with_nested_captions(tmp_path):
    manifest, written = _build(tmp_path, "--tfds-dataset", "tiny_captions",
                               "--tfds-caption-key", "captions/text")
    assert manifest["input_rows"] == 5 and manifest["written"] == 4
    assert manifest["rejections"] == {process.EMPTY_CAPTION: 1}
    got = {_colour(r)[0]: r for r in written}
    assert sorted(got) == [0, 60, 120, 240]  # the grey 180 has only empty captions
    for grey, record in got.items():
        assert list(record.desc) == list(dict.fromkeys(CAPTIONS[grey][0]))
        assert record.key.startswith("tiny_captions/train:") and record.source == "tfds"
    rejected = (tmp_path / "out" / write.REJECTED).read_text().splitlines()
    assert len(rejected) == 1 and '"tiny_captions/train:' in rejected[0]
    assert manifest["options"]["tfds_caption_key"] == "captions/text"
    assert "tensorflow" not in sys.modules


def test_one_text_feature_per_example(tmp_path):
    manifest, written = _build(tmp_path, "--tfds-dataset", "tiny_captions",
                               "--tfds-caption-key", "title")
    assert manifest["written"] == 5
    assert {_colour(r)[0]: r.desc for r in written} == {
        grey: (title,) for grey, (_, title) in CAPTIONS.items()}


def test_image_label_dataset_captions_its_class_names(tmp_path):
    manifest, written = _build(tmp_path, "--tfds-dataset", "tiny_colours", "--tfds-split",
                               "test", "--tfds-image-key", "photo", "--tfds-caption-key",
                               "colour", "--tfds-label-template", "a {} square")
    assert manifest["written"] == 6 and manifest["rejected"] == 0
    assert sorted((_colour(r), r.desc) for r in written) == sorted(
        (rgb, (f"a {name} square",)) for rgb, name in COLOURS.items())


@pytest.mark.parametrize("args, message", [
    ([], "needs --tfds-dataset"),
    (["--tfds-dataset", "tiny_captions", "--tfds-caption-key", "words"],
     r"no feature 'words'; it has \['captions', 'image', 'title'\]"),
    (["--tfds-dataset", "tiny_captions", "--tfds-caption-key", "captions/words"],
     "no feature 'captions/words'"),
    (["--tfds-dataset", "tiny_captions", "--tfds-caption-key", "image"],
     "feature 'image' is a Image; captions come from"),
    (["--tfds-dataset", "tiny_colours", "--tfds-caption-key", "colour"],
     "feature 'image'"),
    (["--tfds-dataset", "tiny_captions", "--tfds-split", "test"], "Unknown split 'test'"),
    (["--tfds-dataset", "tiny_captions", "--tfds-label-template", "a photo"],
     "must hold one {}"),
])
def test_bad_tfds_options_are_one_line_errors(tmp_path, args, message):
    with pytest.raises(UserError, match=message):
        build.run(["--source", "tfds", "--input", TFDS_DIR, "--output", str(tmp_path / "o"),
                   *args])
