"""Zero-shot classification read straight from image folders and TFDS datasets.

Two layouts, each an evaluator type (metrics and protocol: zero_shot.py):

  zero_shot_folder   DATA_DIR[/SPLIT]/CLASS/**/*.jpg (torchvision ImageFolder's layout and
                     order): the classes are the sorted folder names, label i the i-th; the
                     images of each class in sorted order, its subfolders walked sorted; files
                     are images by extension (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp,
                     any case), others are ignored (and counted in the log).
  zero_shot_tfds     a TFDS dataset prepared in DATA_DIR (ArrayRecord files), read with
                     `tfds.data_source` and no TensorFlow (`reasonclip_jax.data.tfds_source`):
                     `dataset` (its TFDS name), `split`, and the names of its image and
                     label features (`image_key`, `label_key`); class names from the
                     label's ClassLabel.

Class names: `classnames_file` (one per line, label order) if given, else DATA_DIR/
classnames.txt if it exists, else the folder names / the ClassLabel names. Templates:
`templates_file` if given, else DATA_DIR/zeroshot_classification_templates.txt if it exists,
else OpenAI's 80 ImageNet templates (`imagenet_templates`). Undecodable images are skipped
and counted (`num_skipped`).

    python -m reasonclip_jax.evaluate --checkpoint CKPT \
        --eval zero_shot_folder:data/imagenet split=val classnames_file=data/classnames.txt \
        --eval zero_shot_tfds:tests/data/tfds dataset=tiny_colours image_key=photo label_key=colour
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from absl import logging

from reasonclip_jax.data import tfds_source
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators import common, streams, zero_shot
from reasonclip_jax.evaluators.imagenet_templates import OPENAI_IMAGENET_TEMPLATES

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _names_and_templates(
    data_dir: str, classnames_file: str | None, templates_file: str | None
) -> tuple[list[str] | None, list[str]]:
    """(class names from a file, or None for the layout's own; the templates)."""
    classnames_file = classnames_file or _existing(data_dir, zero_shot.CLASSNAMES_FILE)
    templates_file = templates_file or _existing(data_dir, zero_shot.TEMPLATES_FILE)
    classnames = streams.read_lines(classnames_file) if classnames_file else None
    templates = streams.read_lines(templates_file) if templates_file else None
    return classnames, templates or list(OPENAI_IMAGENET_TEMPLATES)


def _existing(data_dir: str, name: str) -> str | None:
    path = os.path.join(data_dir, name)
    return path if os.path.isfile(path) else None


def _check_count(classnames: Sequence[str], num_classes: int, what: str) -> None:
    if len(classnames) != num_classes:
        raise UserError(f"{len(classnames)} class names for the {num_classes} classes of {what}")


def folder_images(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(class folder names, sorted; (image path, label) per image) in ImageFolder's order."""
    if not os.path.isdir(root):
        raise UserError(f"{root} is not a directory")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise UserError(f"{root}: no class folders (expected {root}/CLASS_NAME/*.jpg)")
    images, ignored = [], 0
    for label, name in enumerate(classes):
        for folder, _, files in sorted(os.walk(os.path.join(root, name), followlinks=True)):
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    images.append((os.path.join(folder, file), label))
                else:
                    ignored += 1
    if ignored:
        logging.info("%s: ignored %d files that are not images by extension", root, ignored)
    return classes, images


def _folder_samples(images: Sequence[tuple[str, int]]) -> Iterator[tuple[bytes, int] | None]:
    for path, label in images:
        try:
            with open(path, "rb") as f:
                yield f.read(), label
        except OSError as e:
            logging.warning("zero_shot_folder: cannot read %s: %s", path, e)
            yield None


def evaluate_folder(
    embedder: common.Embedder,
    data_dir: str,
    split: str | None = None,
    classnames_file: str | None = None,
    templates_file: str | None = None,
    max_examples: int | None = None,
) -> dict[str, float]:
    """Zero-shot metrics of the first `max_examples` images (all if None, in ImageFolder
    order: class by class) under DATA_DIR[/SPLIT]."""
    root = os.path.join(data_dir, split) if split else data_dir
    classnames, templates = _names_and_templates(data_dir, classnames_file, templates_file)
    folders, images = folder_images(root)
    if classnames is None:
        classnames = folders
    _check_count(classnames, len(folders), f"{root} (its class folders)")
    return zero_shot.evaluate_samples(embedder, _folder_samples(images), classnames, templates,
                                      max_examples, root)


def _tfds_samples(
    split: tfds_source.TfdsSplit, image_key: str, label_key: str
) -> Iterator[tuple[bytes, int] | None]:
    for _, image, example in tfds_source.read_images(split, image_key):
        try:
            yield image, int(example[label_key])
        except (TypeError, ValueError):
            yield None


def evaluate_tfds(
    embedder: common.Embedder,
    data_dir: str,
    dataset: str,
    split: str = "test",
    image_key: str = "image",
    label_key: str = "label",
    classnames_file: str | None = None,
    templates_file: str | None = None,
    max_examples: int | None = None,
) -> dict[str, float]:
    """Zero-shot metrics of the first `max_examples` examples (all if None) of the TFDS
    dataset `dataset` ("name[/config][:version]"), split `split` ("test", "train[:1000]")."""
    classnames, templates = _names_and_templates(data_dir, classnames_file, templates_file)
    source = tfds_source.open_split(dataset, split, data_dir, encoded=[image_key])
    label_names = getattr(source.feature(label_key), "names", None)
    if classnames is None:
        classnames = tfds_source.class_names(source, label_key)
    elif label_names:
        _check_count(classnames, len(label_names), f"{source.where} (ClassLabel '{label_key}')")
    return zero_shot.evaluate_samples(embedder, _tfds_samples(source, image_key, label_key),
                                      classnames, templates, max_examples, source.where)
