"""Zero-shot classification against the release's eval/eval_zeroshot_imagenet.py, transcribed
here, and each reader on small files: webdataset tars, an image folder, the TFDS fixture.

    .venv/bin/python -m pytest -q tests/test_zero_shot.py

The TFDS fixture (tests/data/tfds/tiny_colours, built once by build_tiny_colours.py there) is
read with `tfds.data_source` in this virtualenv, which has no TensorFlow.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from collections.abc import Sequence

import numpy as np
import PIL.Image
import pytest
import torch
from test_evaluators import PlantedEmbedder, basis, png

from reasonclip_jax import evaluators
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators import common, zero_shot, zero_shot_formats
from reasonclip_jax.evaluators.imagenet_templates import OPENAI_IMAGENET_TEMPLATES
from reasonclip_jax.models.preprocessing import OPENAI_MEAN, OPENAI_STD
from reasonclip_jax.tools import evaluate

SIZE = 16
TFDS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tfds")

# ----------------------------------------------------------------------------------------------
# The release, transcribed (eval/eval_zeroshot_imagenet.py).
# ----------------------------------------------------------------------------------------------


def create_text_features(classnames, templates, encode_text) -> torch.Tensor:
    """The release's `create_text_features`, `encode_text` standing for the model's text
    tower (unnormalised features of a list of prompts)."""
    all_text_features = []
    for classname in classnames:
        class_prompts = [template.format(c=classname) for template in templates]
        text_features = encode_text(class_prompts)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        class_text_feature = text_features.mean(dim=0, keepdim=True)
        class_text_feature = class_text_feature / class_text_feature.norm(dim=-1, keepdim=True)
        all_text_features.append(class_text_feature)
    return torch.cat(all_text_features, dim=0)


def release_accuracies(image_features: torch.Tensor, labels: torch.Tensor,
                       text_features: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """The release's evaluation loop (fractions here, percentages there)."""
    top1, top5, total = 0, 0, 0
    k = min(5, text_features.shape[0])
    for s in range(0, len(labels), batch_size):
        feats = image_features[s : s + batch_size]
        feats = feats / feats.norm(dim=-1, keepdim=True)
        logits = feats @ text_features.T
        topk = logits.topk(k, dim=-1).indices
        top1 += (topk[:, 0] == labels[s : s + batch_size]).sum().item()
        if k >= 5:
            top5 += (topk == labels[s : s + batch_size].unsqueeze(1)).any(dim=1).sum().item()
        total += len(feats)
    return {"top1": top1 / total, **({"top5": top5 / total} if k >= 5 else {})}


# ----------------------------------------------------------------------------------------------
# Fakes.
# ----------------------------------------------------------------------------------------------


class ArrayEmbedder(PlantedEmbedder):
    """Images are their own embeddings: the first `dim` values of each pixel array."""

    def images(self, pixels: np.ndarray) -> np.ndarray:
        return common.normalize(pixels.reshape(len(pixels), -1)[:, : self.dim])


def as_pixels(vectors: np.ndarray) -> np.ndarray:
    out = np.zeros((len(vectors), SIZE, SIZE, 3), np.float32)
    out.reshape(len(vectors), -1)[:, : vectors.shape[1]] = vectors
    return out


class ColourEmbedder:
    """Images: their mean RGB (the eval normalisation undone); texts: which of red, green,
    blue they name. A solid image then scores highest with the class of its main colour."""

    image_size = SIZE
    words = ("red", "green", "blue")

    def images(self, pixels: np.ndarray) -> np.ndarray:
        rgb = pixels.mean(axis=(1, 2)) * np.array(OPENAI_STD) + np.array(OPENAI_MEAN)
        return common.normalize(rgb)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        return common.normalize(np.array([[w in t for w in self.words] for t in texts], float))


def solid(rgb: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    PIL.Image.new("RGB", (20, 24), rgb).save(out, format=fmt)
    return out.getvalue()


def reference_class_matrix(embedder, classnames, templates) -> np.ndarray:
    rows = []
    for c in classnames:
        prompts = [t.replace("{c}", c).replace("{}", c) for t in templates]
        vecs = np.stack([embedder.text_vector(p) for p in prompts]).astype(np.float64)
        mean = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


class UnnormalisedTexts(ArrayEmbedder):
    """Text vectors of unequal norms, as planted: the ensemble must normalise each prompt."""

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.text_vector(t) for t in texts]).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The protocol.
# ----------------------------------------------------------------------------------------------


def test_template_ensemble_is_normalised_mean_in_float64():
    rng = np.random.default_rng(2)
    classnames, templates = ["cat", "dog", "car"], ["a photo of a {c}.", "{} again", "art of {c}"]
    embedder = UnnormalisedTexts({}, {}, dim=4)
    for c in classnames:
        for t in templates:
            prompt = t.replace("{c}", c).replace("{}", c)
            embedder._texts[prompt] = rng.normal(size=4) * rng.uniform(0.1, 10)
    got = zero_shot.class_embeddings(embedder, classnames, templates)
    np.testing.assert_allclose(got, reference_class_matrix(embedder, classnames, templates),
                               atol=1e-6)
    with pytest.raises(UserError, match="placeholder"):
        zero_shot.class_embeddings(embedder, classnames, ["no placeholder"])
    # A name given to two classes (ImageNet's "missile", "sunglasses") is one embedding.
    twice = zero_shot.class_embeddings(embedder, ["cat", "dog", "cat"], templates)
    assert np.array_equal(twice[0], twice[2]) and np.array_equal(twice[:2], got[:2])


def test_zero_shot_known_class_directions_and_ties():
    classnames = [f"class{i}" for i in range(8)]
    templates = ["a {c}"]
    dim = 8
    embedder = ArrayEmbedder({}, {f"a class{i}": basis(dim, i) for i in range(8)}, dim)
    images = np.array([
        basis(dim, 0),                                  # label 0: right
        basis(dim, 1) + 0.5 * basis(dim, 2),            # label 2: second -> top5 only
        basis(dim, 3) + basis(dim, 4),                  # label 3: tied with 4 -> top5 only
        sum(basis(dim, i) for i in range(1, 7)),        # label 0: six classes above it -> miss
    ])
    # The tie as CPU torch.topk(logits, 5) breaks it: class 4 first.
    assert torch.topk(torch.tensor([0.0, 0, 0, 1, 1, 0, 0, 0]), 5).indices.tolist()[0] == 4
    labels = np.array([0, 2, 3, 0])
    got = zero_shot.evaluate_arrays(embedder, as_pixels(images), labels, classnames, templates)
    assert got == {"top1": 1 / 4, "top5": 3 / 4, "num_images": 4.0, "num_skipped": 0.0}
    few = zero_shot.evaluate_arrays(embedder, as_pixels(images[:1]), labels[:1], classnames[:3],
                                    templates)
    assert set(few) == {"top1", "num_images", "num_skipped"}  # no top5 below 5 classes
    five = zero_shot.evaluate_arrays(embedder, as_pixels(images[:1]), labels[:1],
                                     classnames[:5], templates)
    assert five["top5"] == 1.0  # the release reports top5 from 5 classes on (k = min(5, C))


def halves(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """n unit vectors with four entries +-1/2: every logit between two is exact."""
    out = np.zeros((n, dim))
    for v in out:
        v[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return out


@pytest.mark.parametrize("num_classes", [12, 400])  # topk's nth_element and partial_sort
def test_zero_shot_equals_the_release_with_repeated_class_names(num_classes):
    rng = np.random.default_rng(num_classes)
    names = [f"c{i}" for i in range(num_classes)]
    names[5], names[7] = names[1], names[2]  # as ImageNet's two "missile" classes
    templates = ["a photo of {c}", "{c} art"]
    vectors = dict(zip(dict.fromkeys(names), halves(rng, num_classes, 6), strict=False))
    embedder = ArrayEmbedder({}, {t.format(c=c): 2 * vectors[c] for c in names for t in templates},
                             dim=6)
    labels = rng.integers(0, num_classes, 300)
    labels[:40] = [1, 5, 2, 7] * 10  # the repeated names: ties between two classes decide top1
    images = halves(rng, 300, 6)
    images[::2] = [vectors[names[label]] for label in labels[::2]]  # half look like their class
    got = zero_shot.evaluate_arrays(embedder, as_pixels(images), labels, names, templates)
    encode = lambda prompts: torch.tensor(  # noqa: E731
        np.stack([embedder.text_vector(p) for p in prompts]), dtype=torch.float32)
    want = release_accuracies(torch.tensor(images, dtype=torch.float32), torch.tensor(labels),
                              create_text_features(names, templates, encode))
    assert {k: got[k] for k in want} == want
    assert 0 < want["top1"] < want["top5"] < 1


# ----------------------------------------------------------------------------------------------
# Readers: webdataset tars, image folders, TFDS.
# ----------------------------------------------------------------------------------------------


def write_wds(root: str, samples: Sequence[tuple[str, dict[str, bytes]]], split: str = "test"):
    os.makedirs(os.path.join(root, split), exist_ok=True)
    half = len(samples) // 2
    for shard, part in ((10, samples[half:]), (2, samples[:half])):  # natural order: 2, 10
        with tarfile.open(os.path.join(root, split, f"{shard}.tar"), "w") as tar:
            for key, files in part:
                for ext, data in files.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def test_zero_shot_webdataset_directory(tmp_path):
    root = str(tmp_path / "wds_tiny")
    classnames, templates = ["apple", "boat", "cloud"], ["a photo of a {c}.", "a {c}."]
    os.makedirs(root)
    with open(os.path.join(root, zero_shot.CLASSNAMES_FILE), "w") as f:
        f.write("\n".join(classnames) + "\n")
    with open(os.path.join(root, zero_shot.TEMPLATES_FILE), "w") as f:
        f.write("\n".join(templates) + "\n")
    dim = 3
    text_vectors = {t.replace("{c}", c): basis(dim, i)
                    for i, c in enumerate(classnames) for t in templates}
    images = [png(300 + i) for i in range(5)]
    labels = [0, 1, 2, 1, 0]
    answers = [0, 1, 2, 0, 0]  # the image points at this class: 4 of 5 right
    image_vectors = {img: basis(dim, a) for img, a in zip(images, answers, strict=True)}
    samples = [(f"s{i:04d}", {"jpg" if i % 2 else "png": img, "cls": f"{lab}\n".encode()})
               for i, (img, lab) in enumerate(zip(images, labels, strict=True))]
    samples.insert(2, ("s_nolabel", {"png": png(399)}))
    samples.insert(4, ("s_corrupt", {"webp": b"garbage", "cls": b"1"}))
    write_wds(root, samples)
    embedder = PlantedEmbedder(image_vectors, text_vectors, dim)
    got = zero_shot.evaluate(embedder, root)
    assert got == {"top1": 4 / 5, "num_images": 5.0, "num_skipped": 2.0}
    # The first 4 samples in shard order: s0000, s0001, s_nolabel, s0002.
    assert zero_shot.evaluate(embedder, root, max_examples=4) == {
        "top1": 1.0, "num_images": 3.0, "num_skipped": 1.0,
    }


def write_folder(root: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)


RED, GREEN, BLUE = (250, 10, 10), (10, 250, 10), (10, 10, 250)


def test_zero_shot_image_folder(tmp_path):
    # ImageFolder order: folders sorted (blue, green, red -> labels 0, 1, 2), then files
    # sorted, subfolders walked in order. Two images in the wrong folder, one corrupt file,
    # one text file (not an image: ignored).
    root = str(tmp_path / "colours")
    write_folder(os.path.join(root, "val"), {
        "red/b.png": solid(RED), "red/a.JPG": solid(RED, "JPEG"), "red/c.png": solid(GREEN),
        "red/deeper/d.webp": solid(RED, "WEBP"), "red/notes.txt": b"not an image",
        "green/x.bmp": solid(GREEN, "BMP"), "green/y.png": solid(BLUE),
        "blue/z.png": solid(BLUE), "blue/broken.jpg": b"\xff\xd8 truncated",
    })
    embedder = ColourEmbedder()
    classes, images = zero_shot_formats.folder_images(os.path.join(root, "val"))
    assert classes == ["blue", "green", "red"]
    assert [os.path.relpath(p, os.path.join(root, "val")) for p, _ in images] == [
        "blue/broken.jpg", "blue/z.png", "green/x.bmp", "green/y.png",
        "red/a.JPG", "red/b.png", "red/c.png", "red/deeper/d.webp"]
    got = zero_shot_formats.evaluate_folder(embedder, root, split="val")
    assert got == {"top1": 5 / 7, "num_images": 7.0, "num_skipped": 1.0}  # 80 default templates
    # The first 4 files: broken, z (right), x (right), y (wrong).
    assert zero_shot_formats.evaluate_folder(embedder, root, split="val", max_examples=4) == {
        "top1": 2 / 3, "num_images": 3.0, "num_skipped": 1.0}
    # classnames.txt beside the split names the sorted folders; a wrong count is an error.
    (tmp_path / "colours" / "classnames.txt").write_text("blue\ngreen\nred\n")
    (tmp_path / "colours" / "zeroshot_classification_templates.txt").write_text("a {c} thing\n")
    assert zero_shot_formats.evaluate_folder(embedder, root, split="val")["top1"] == 5 / 7
    (tmp_path / "names.txt").write_text("blue\ngreen\n")
    with pytest.raises(UserError, match="2 class names for the 3 classes"):
        zero_shot_formats.evaluate_folder(embedder, root, split="val",
                                          classnames_file=str(tmp_path / "names.txt"))
    with pytest.raises(UserError, match="no class folders"):
        zero_shot_formats.evaluate_folder(embedder, str(tmp_path / "colours" / "val" / "blue"))


def test_zero_shot_image_folder_names_its_classes_from_a_file(tmp_path):
    # wnid-style folders, names from the file: folder n02 is "green" though it sorts second.
    write_folder(str(tmp_path), {"n01/a.png": solid(RED), "n02/b.png": solid(GREEN),
                                 "n03/c.png": solid(GREEN)})
    (tmp_path / "names.txt").write_text("red\ngreen\nblue\n")
    (tmp_path / "t.txt").write_text("a photo of a {c}.\n")
    got = zero_shot_formats.evaluate_folder(ColourEmbedder(), str(tmp_path),
                                            classnames_file=str(tmp_path / "names.txt"),
                                            templates_file=str(tmp_path / "t.txt"))
    assert got == {"top1": 2 / 3, "num_images": 3.0, "num_skipped": 0.0}


def test_openai_templates_are_the_releases_80():
    # The release's wds_imagenet1k/zeroshot_classification_templates.txt: 80 lines, in order.
    assert len(OPENAI_IMAGENET_TEMPLATES) == len(set(OPENAI_IMAGENET_TEMPLATES)) == 80
    assert OPENAI_IMAGENET_TEMPLATES[0] == "a bad photo of a {c}."
    assert OPENAI_IMAGENET_TEMPLATES[-1] == "a tattoo of the {c}."
    assert all(t.count("{c}") == 1 for t in OPENAI_IMAGENET_TEMPLATES)


def fixture_files() -> dict[str, int]:
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(TFDS_DIR) for f in files}


def test_zero_shot_tfds_fixture_without_tensorflow():
    before = fixture_files()
    embedder = ColourEmbedder()
    kwargs = dict(dataset="tiny_colours", image_key="photo", label_key="colour")
    # test: 6 solid images, the fifth green one labelled red (see build_tiny_colours.py).
    assert zero_shot_formats.evaluate_tfds(embedder, TFDS_DIR, **kwargs) == {
        "top1": 5 / 6, "num_images": 6.0, "num_skipped": 0.0}
    assert zero_shot_formats.evaluate_tfds(embedder, TFDS_DIR, split="train", **kwargs) == {
        "top1": 1 / 2, "num_images": 2.0, "num_skipped": 0.0}
    assert zero_shot_formats.evaluate_tfds(embedder, TFDS_DIR, max_examples=2, **kwargs)[
        "num_images"] == 2.0
    assert "tensorflow" not in sys.modules  # tfds read it with array_record and numpy only
    assert fixture_files() == before  # and wrote nothing there


@pytest.mark.parametrize("kwargs, message", [
    (dict(dataset="tiny_colours"), r"no feature 'image'; it has \['colour', 'photo'\]"),
    (dict(dataset="tiny_colours", image_key="photo"), "no feature 'label'"),
    (dict(dataset="tiny_colours", image_key="photo", label_key="colour", split="validation"),
     "Unknown split 'validation'"),
    (dict(dataset="no_such_dataset"), "Dataset no_such_dataset not found"),
    (dict(dataset="mnist"), "not prepared there"),
])
def test_zero_shot_tfds_errors_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        zero_shot_formats.evaluate_tfds(ColourEmbedder(), TFDS_DIR, **kwargs)


def test_zero_shot_readers_through_the_registry_and_command_line(tmp_path):
    # The fixture's test split in file order (TFDS shuffled it when building): green, the
    # green one labelled red, red, blue, blue, red; its first 4: 3 right.
    config = evaluate.eval_config([f"zero_shot_tfds:{TFDS_DIR}", "dataset=tiny_colours",
                                   "image_key=photo", "label_key=colour", "split=test[:4]"])
    assert evaluators.run_evaluators([config], ColourEmbedder()) == {
        "zero_shot_tfds/top1": 3 / 4, "zero_shot_tfds/num_images": 4.0,
        "zero_shot_tfds/num_skipped": 0.0}
    write_folder(str(tmp_path), {"red/a.png": solid(RED), "blue/b.png": solid(RED)})
    config = evaluate.eval_config([f"zero_shot_folder:{tmp_path}", "split=none", "name=folder"])
    assert config["split"] is None
    assert evaluators.run_evaluators([config], ColourEmbedder())["folder/top1"] == 1 / 2
    with pytest.raises(UserError, match=r"missing keys \['dataset'\]"):
        evaluators.check_config({"type": "zero_shot_tfds", "data_dir": TFDS_DIR})
