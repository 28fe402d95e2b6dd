"""Zero-shot classification with prompt-template ensembles (CLIP's ImageNet protocol).

A class's embedding is the normalised mean of the normalised embeddings of its prompts, one
per template (`template` with `{c}`, or `{}`, replaced by the class name); an image's logits
are its embedding times the class matrix. Metrics: `top1`, and `top5` when there are more
than 5 classes; ties go against the model (a label ranks below every class scoring at least
as high); `num_images`, `num_skipped` (samples without a decodable image or an integer
label).

Data, the CLIP_benchmark webdataset layout (e.g. `wds_imagenet1k`):

    DATA_DIR/classnames.txt                           one class name per line, label order
    DATA_DIR/zeroshot_classification_templates.txt   one template per line
    DATA_DIR/SPLIT/*.tar                             KEY.jpg|jpeg|png|webp + KEY.cls

read with `reasonclip_jax.data.webdataset`, shards in natural order (2.tar before 10.tar),
a sample's files adjacent in its tar as webdataset writes them. `evaluate_arrays` takes the
same inputs as arrays.

    python -m reasonclip_jax.evaluate --checkpoint CKPT --eval zero_shot:data/wds_imagenet1k
"""

from __future__ import annotations

import glob
import itertools
import os
import tarfile
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging

from reasonclip_jax.data import records, webdataset
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators import common

CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
_CLASS_CHUNK = 100  # classes whose prompts are embedded at a time


def fill_template(template: str, classname: str) -> str:
    """`template` with its `{c}` (CLIP_benchmark) or `{}` (OpenAI) placeholder filled."""
    for placeholder in ("{c}", "{}"):
        if placeholder in template:
            return template.replace(placeholder, classname)
    raise UserError(f"template {template!r} has no '{{c}}' or '{{}}' placeholder")


def class_embeddings(
    embedder: common.Embedder, classnames: Sequence[str], templates: Sequence[str]
) -> np.ndarray:
    """[C, D]: per class, the normalised mean of its normalised template embeddings."""
    if not classnames or not templates:
        raise UserError("zero-shot classification needs at least one class name and template")
    out = []
    for start in range(0, len(classnames), _CLASS_CHUNK):
        names = classnames[start : start + _CLASS_CHUNK]
        prompts = [fill_template(t, c) for c in names for t in templates]
        embeds = common.normalize(embedder.texts(prompts)).reshape(len(names), len(templates), -1)
        out.append(common.normalize(embeds.mean(axis=1)))
    return np.concatenate(out)


def topk_accuracies(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """`top1`, and `top5` if there are more than 5 classes; ties go against the model."""
    labels = np.asarray(labels, np.int64)
    own = logits[np.arange(len(labels)), labels]
    num_above = np.sum(logits >= own[:, None], axis=1) - 1  # other classes at least as high
    ks = (1, 5) if logits.shape[1] > 5 else (1,)
    return {f"top{k}": float(np.mean(num_above < k)) if len(labels) else 0.0 for k in ks}


def _metrics(
    image_embeds: np.ndarray, labels: Sequence[int], classes: np.ndarray, num_skipped: int
) -> dict[str, float]:
    labels_array = np.asarray(labels, np.int64)
    bad = (labels_array < 0) | (labels_array >= len(classes))
    if bad.any():
        raise UserError(f"label {labels_array[bad][0]} is outside the {len(classes)} class names")
    metrics = topk_accuracies(common.normalize(image_embeds) @ classes.T, labels_array)
    metrics.update(num_images=float(len(labels_array)), num_skipped=float(num_skipped))
    return metrics


def evaluate_arrays(
    embedder: common.Embedder,
    pixels: np.ndarray,
    labels: np.ndarray,
    classnames: Sequence[str],
    templates: Sequence[str],
) -> dict[str, float]:
    """Zero-shot metrics of preprocessed images [N, S, S, 3] with integer labels [N]."""
    classes = class_embeddings(embedder, classnames, templates)
    return _metrics(embedder.images(pixels), labels, classes, num_skipped=0)


def read_lines(path: str) -> list[str]:
    """The non-empty lines of a text file, without surrounding whitespace."""
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def tar_paths(data_dir: str, split: str) -> list[str]:
    """The split's tar shards in natural order."""
    paths = glob.glob(os.path.join(data_dir, split, "*.tar"))
    paths.sort(key=lambda p: records.natural_key(os.path.basename(p)))
    if not paths:
        raise UserError(f"{data_dir}: no {split}/*.tar webdataset shards")
    return paths


def iter_samples(paths: Sequence[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Webdataset samples: (key, {lower-case extension: bytes}) of the files sharing a key,
    adjacent in a tar."""
    for path in paths:
        try:
            yield from webdataset.iter_tar(path)
        except tarfile.TarError as e:
            raise UserError(f"cannot read webdataset shard {path}: {e}") from None


def _image_and_label(sample: dict[str, bytes]) -> tuple[bytes, int] | None:
    image = webdataset.first_image(sample)
    try:
        label = int(sample["cls"].decode().strip())
    except (KeyError, UnicodeDecodeError, ValueError):
        return None
    return (image, label) if image is not None else None


def evaluate(
    embedder: common.Embedder,
    data_dir: str,
    split: str = "test",
    max_examples: int | None = None,
) -> dict[str, float]:
    """Zero-shot metrics of the first `max_examples` samples (all if None; skipped ones count)
    of a CLIP_benchmark webdataset split."""
    classnames = read_lines(os.path.join(data_dir, CLASSNAMES_FILE))
    templates = read_lines(os.path.join(data_dir, TEMPLATES_FILE))
    paths = tar_paths(data_dir, split)
    classes = class_embeddings(embedder, classnames, templates)
    embeds, labels, skipped = [], [], 0
    samples = itertools.islice(iter_samples(paths), max_examples)
    parsed = (_image_and_label(files) for _, files in samples)
    while chunk := list(itertools.islice(parsed, common.DEFAULT_CHUNK)):
        usable = [p for p in chunk if p is not None]
        chunk_embeds, kept = common.embed_images(embedder, [image for image, _ in usable])
        if len(chunk_embeds):
            embeds.append(chunk_embeds)
        labels.extend(label for (_, label), k in zip(usable, kept, strict=True) if k)
        skipped += len(chunk) - int(kept.sum())
    if skipped:
        logging.warning("%s/%s: skipped %d samples", data_dir, split, skipped)
    if not labels:
        raise UserError(f"{data_dir}/{split}: no sample with a decodable image and a label")
    return _metrics(np.concatenate(embeds), labels, classes, skipped)
