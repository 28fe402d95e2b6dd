"""Zero-shot classification with prompt-template ensembles, as the release's
eval/eval_zeroshot_imagenet.py (CLIP_benchmark's protocol).

A class's embedding is the normalised mean of the normalised embeddings of its prompts, one
per template (`template` with `{c}`, or `{}`, replaced by the class name); an image's logits
are its embedding times the class matrix. Metrics: `top1`, and `top5` when there are at
least 5 classes, read off `torch.topk(logits, min(5, C))` as the release does, exact ties
ordered as CPU torch.topk orders them (`ranking`; ImageNet has two classes named "missile"
and two "sunglasses", whose embeddings tie exactly); `num_images`, `num_skipped` (samples
without a decodable image or an integer label).

Data, the CLIP_benchmark webdataset layout (e.g. `wds_imagenet1k`), evaluator type
`zero_shot`:

    DATA_DIR/classnames.txt                           one class name per line, label order
    DATA_DIR/zeroshot_classification_templates.txt   one template per line
    DATA_DIR/SPLIT/*.tar                             KEY.jpg|jpeg|png|webp + KEY.cls

read with `reasonclip_jax.data.webdataset`, shards in natural order (2.tar before 10.tar),
a sample's files adjacent in its tar as webdataset writes them. Image folders and TFDS
datasets: zero_shot_formats.py. `evaluate_arrays` takes the same inputs as arrays.

    python -m reasonclip_jax.evaluate --checkpoint CKPT --eval zero_shot:data/wds_imagenet1k
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

from reasonclip_jax.data import webdataset
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators import common, ranking, streams
from reasonclip_jax.evaluators.streams import iter_samples, read_lines, tar_paths

CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
_CLASS_CHUNK = 100  # classes whose prompts are embedded at a time
_IMAGE_CHUNK = 4096  # images scored at a time


def fill_template(template: str, classname: str) -> str:
    """`template` with its `{c}` (CLIP_benchmark) or `{}` (OpenAI) placeholder filled."""
    for placeholder in ("{c}", "{}"):
        if placeholder in template:
            return template.replace(placeholder, classname)
    raise UserError(f"template {template!r} has no '{{c}}' or '{{}}' placeholder")


def class_embeddings(
    embedder: common.Embedder, classnames: Sequence[str], templates: Sequence[str]
) -> np.ndarray:
    """[C, D]: per class, the normalised mean of its normalised template embeddings (a name
    given to several classes is embedded once: its rows are equal)."""
    if not classnames or not templates:
        raise UserError("zero-shot classification needs at least one class name and template")
    distinct = list(dict.fromkeys(classnames))
    out = []
    for start in range(0, len(distinct), _CLASS_CHUNK):
        names = distinct[start : start + _CLASS_CHUNK]
        prompts = [fill_template(t, c) for c in names for t in templates]
        embeds = common.normalize(embedder.texts(prompts)).reshape(len(names), len(templates), -1)
        out.append(common.normalize(embeds.mean(axis=1)))
    row = {c: i for i, c in enumerate(distinct)}
    return np.concatenate(out)[[row[c] for c in classnames]]


def topk_accuracies(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """`top1`, and `top5` if there are at least 5 classes: whether the label is among the
    first k of CPU `torch.topk(logits, min(5, C))` (ties included)."""
    labels = np.asarray(labels, np.int64)
    ks = (1, 5) if logits.shape[1] >= 5 else (1,)
    if not len(labels):
        return {f"top{k}": 0.0 for k in ks}
    classes = np.arange(logits.shape[1])
    hits = np.concatenate([
        # ks (1, 5) always: the release takes topk(min(5, C)), and K decides the tie order.
        ranking.hits_at(logits[s : s + _IMAGE_CHUNK],
                        classes[None, :] == labels[s : s + _IMAGE_CHUNK, None], (1, 5))
        for s in range(0, len(labels), _IMAGE_CHUNK)
    ], axis=1)
    return {f"top{k}": float(hits[j].mean()) for j, k in enumerate(ks)}


def _metrics(
    image_embeds: np.ndarray, labels: Sequence[int], classes: np.ndarray, num_skipped: int
) -> dict[str, float]:
    labels_array = np.asarray(labels, np.int64)
    bad = (labels_array < 0) | (labels_array >= len(classes))
    if bad.any():
        raise UserError(f"label {labels_array[bad][0]} is outside the {len(classes)} class names")
    distinct, index = ranking.distinct_rows(classes)
    logits = (common.normalize(image_embeds) @ distinct.T)[:, index]
    metrics = topk_accuracies(logits, labels_array)
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


def evaluate_samples(
    embedder: common.Embedder,
    samples: Iterable[tuple[bytes, int] | None],
    classnames: Sequence[str],
    templates: Sequence[str],
    max_examples: int | None,
    where: str,
) -> dict[str, float]:
    """Zero-shot metrics of the first `max_examples` (encoded image, label) samples (None: an
    unusable sample, counted as skipped); what every reader ends in."""
    classes = class_embeddings(embedder, classnames, templates)  # a bad template fails first
    embeds, labels, skipped = streams.embed_samples(embedder, samples, max_examples, where)
    return _metrics(embeds, labels, classes, skipped)


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
    samples = (_image_and_label(files) for _, files in iter_samples(tar_paths(data_dir, split)))
    return evaluate_samples(embedder, samples, classnames, templates, max_examples,
                            f"{data_dir}/{split}")
