"""Builds the TFDS fixture `tiny_captions` (ArrayRecord files) that tests/test_data_pipeline_tfds.py
reads: an image-text dataset shaped like coco_captions.

Run once, with TensorFlow in a throwaway virtualenv (the project itself reads TFDS without
TensorFlow, through `tfds.data_source`):

    python3.11 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu tensorflow-datasets==4.9.10 array-record==0.8.6
    /tmp/tfvenv/bin/python tests/data/tfds/build_tiny_captions.py tests/data/tfds

Features: `image` (16x16 RGB, PNG), `captions` (a Sequence of {"text": Text}, as
coco_captions has them) and `title` (one Text); split `train`, 5 examples, the fourth with
only empty captions.
"""

from __future__ import annotations

import sys

import numpy as np
import tensorflow_datasets as tfds

EXAMPLES = [  # (grey level of the image, captions, title)
    (0, ["a black square", "all dark"], "black"),
    (60, ["a dark grey square"], "dark grey"),
    (120, ["a grey square", "a grey square", "mid grey"], "grey"),
    (180, ["", " "], "light grey"),
    (240, ["a white square"], "white"),
]


class TinyCaptions(tfds.core.GeneratorBasedBuilder):
    """Grey 16x16 squares with captions."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(16, 16, 3), encoding_format="png"),
                "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
                "title": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, (grey, captions, title) in enumerate(EXAMPLES):
            yield i, {"image": np.full((16, 16, 3), grey, np.uint8),
                      "captions": {"text": captions}, "title": title}


if __name__ == "__main__":
    builder = TinyCaptions(data_dir=sys.argv[1], file_format="array_record")
    builder.download_and_prepare()
    print(builder.info)
