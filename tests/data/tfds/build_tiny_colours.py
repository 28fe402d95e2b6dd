"""Builds the TFDS fixture `tiny_colours` (ArrayRecord files) that tests/test_zero_shot.py reads.

Run once, with TensorFlow in a throwaway virtualenv (the project itself reads TFDS without
TensorFlow, through `tfds.data_source`):

    python3.11 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu tensorflow-datasets==4.9.10 array-record==0.8.6
    /tmp/tfvenv/bin/python tests/data/tfds/build_tiny_colours.py tests/data/tfds

Features: `photo` (16x16 RGB, PNG) and `colour` (ClassLabel red/green/blue); splits `test`
(6 solid-colour images, one labelled wrong on purpose) and `train` (2, one wrong).
"""

from __future__ import annotations

import sys

import numpy as np
import tensorflow_datasets as tfds

NAMES = ["red", "green", "blue"]
SPLITS = {  # (RGB colour of the image, label index)
    "test": [((255, 0, 0), 0), ((0, 255, 0), 1), ((0, 0, 255), 2),
             ((200, 30, 30), 0), ((30, 200, 30), 0), ((20, 20, 220), 2)],
    "train": [((255, 0, 0), 0), ((0, 0, 255), 1)],
}


class TinyColours(tfds.core.GeneratorBasedBuilder):
    """Solid-colour 16x16 images labelled with a colour name."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "photo": tfds.features.Image(shape=(16, 16, 3), encoding_format="png"),
                "colour": tfds.features.ClassLabel(names=NAMES),
            }),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(rows) for split, rows in SPLITS.items()}

    def _generate_examples(self, rows):
        for i, (rgb, label) in enumerate(rows):
            yield i, {"photo": np.full((16, 16, 3), rgb, np.uint8), "colour": label}


if __name__ == "__main__":
    builder = TinyColours(data_dir=sys.argv[1], file_format="array_record")
    builder.download_and_prepare()
    print(builder.info)
