"""Evaluators against hand-computed cases and independent float64 references.

    .venv/bin/python -m pytest tests/test_evaluators.py -q -p no:warnings

Fake embedders plant embeddings (images are looked up by their preprocessed pixels, texts by
their string), so every expected metric is known in advance; one end-to-end test builds a
small scenes bench with the data pipeline and runs the command line on a random checkpoint.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
import PIL.Image
import pytest
from array_record.python import array_record_module

from reasonclip_jax import evaluators
from reasonclip_jax.data import records, transforms
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators import common, rclip_bench, retrieval
from reasonclip_jax.evaluators.encoder import Encoder
from reasonclip_jax.models import tokenizer
from reasonclip_jax.models.clip import CLIP, get_preset, param_shapes
from reasonclip_jax.tools import evaluate
from reasonclip_jax.train import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16  # image side the fake embedders ask for


# ----------------------------------------------------------------------------------------------
# Fakes and data helpers.
# ----------------------------------------------------------------------------------------------


def png(seed: int, size: int = 20) -> bytes:
    """A small image of random pixels, distinct per seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size + 4, 3), np.uint8)
    out = io.BytesIO()
    PIL.Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def fingerprint(pixels: np.ndarray) -> bytes:
    return np.ascontiguousarray(pixels, np.float32).tobytes()


def pixels_of(data: bytes, size: int = SIZE) -> np.ndarray:
    return transforms.eval_transform(transforms.decode_image(data), size)


class PlantedEmbedder:
    """An `Embedder` with fixed answers: images by their preprocessed pixels, texts by string.

    `image_vectors` maps encoded image bytes to a vector; texts not in `text_vectors` get a
    random one derived from the string. Vectors are returned normalised, as a model's are.
    """

    def __init__(
        self,
        image_vectors: dict[bytes, np.ndarray],
        text_vectors: dict[str, np.ndarray],
        dim: int,
        image_size: int = SIZE,
    ):
        self.image_size, self.dim = image_size, dim
        self._images = {fingerprint(pixels_of(k, image_size)): v for k, v in image_vectors.items()}
        self._texts = dict(text_vectors)
        self.calls = 0

    def images(self, pixels: np.ndarray) -> np.ndarray:
        return common.normalize(np.stack([self._images[fingerprint(p)] for p in pixels]))

    def text_vector(self, text: str) -> np.ndarray:
        if text not in self._texts:
            seed = int.from_bytes(text.encode()[:32].ljust(32, b"\0"), "little") % 2**63
            self._texts[text] = np.random.default_rng([seed, len(text)]).normal(size=self.dim)
        return self._texts[text]

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return common.normalize(np.stack([self.text_vector(t) for t in texts]))


def record(i: int, image: bytes, **fields) -> records.Record:
    return records.Record(id=f"{i:032x}", source="test", key=f"k{i}", image=image, **fields)


def write_shards(path: str, recs: Sequence[records.Record], split: str = "test") -> str:
    """Two shards holding `recs` in order, and a manifest."""
    os.makedirs(path, exist_ok=True)
    half = (len(recs) + 1) // 2
    for shard, part in enumerate((recs[:half], recs[half:])):
        writer = array_record_module.ArrayRecordWriter(
            os.path.join(path, records.shard_name(split, shard, 2)), "group_size:1"
        )
        for r in part:
            writer.write(records.encode_record(r))
        writer.close()
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump({"format_version": records.FORMAT_VERSION}, f)
    return path


def basis(dim: int, i: int) -> np.ndarray:
    v = np.zeros(dim)
    v[i] = 1.0
    return v


def test_embed_images_skips_undecodable_in_any_chunk():
    good = [png(500), png(501)]
    embedder = PlantedEmbedder({good[0]: basis(3, 0), good[1]: basis(3, 2)}, {}, 3)
    embeds, kept = common.embed_images(embedder, [b"", b"junk", *good, b"\xff\xd8"], chunk_size=2)
    np.testing.assert_array_equal(kept, [False, False, True, True, False])
    np.testing.assert_array_equal(embeds, [basis(3, 0), basis(3, 2)])


# ----------------------------------------------------------------------------------------------
# RCLIP-Bench.
# ----------------------------------------------------------------------------------------------


def bench_set(tag: str, gt: str, neg: Sequence[str]) -> dict:
    return {"tag": tag, "gt": gt, "neg": list(neg)}


def test_rclip_bench_planted_answers(tmp_path):
    # Every distinct caption is its own basis vector; an image is the sum of the captions it
    # should pick, so we know each set's outcome: right, wrong, or a tie, which goes to the
    # first of the tied captions, as `torch.argmax` does in the release (a tie with the gt,
    # column 0, is right).
    sets = [
        [bench_set("S", "s0", ["n0", "n1", "n2", "n3"]),   # right
         bench_set("A", "a0", ["a1", "n4", "n5", "n6"])],  # picks a1: wrong
        [bench_set("S", "s1", ["n7", "n8", "n9", "n10"]),  # right
         bench_set("S", "s2", ["s3", "n11", "n12", "n13"])],  # s2 and s3 equal: tie, right
        [bench_set("A", "a2", ["n0", "n1", "n2", "n3"]),   # right
         bench_set("H", "h0", ["h0", "n1", "n2", "n3"]),   # a negative equal to gt: tie, right
         bench_set("H", "h1", ["n1", "h2", "h3", "n2"])],  # h2, h3 tie above h1: picks h2
    ]
    picks = [["s0", "a1"], ["s1", "s2", "s3"], ["a2", "h0", "h2", "h3"]]
    chosen = {"s0": 0, "a0": 1, "s1": 0, "s2": 0, "a2": 0, "h0": 0, "h1": 2}
    captions = sorted({c for image in sets for s in image for c in [s["gt"], *s["neg"]]})
    dim = len(captions)
    text_vectors = {c: basis(dim, i) for i, c in enumerate(captions)}
    images = [png(i) for i in range(3)]
    image_vectors = {
        img: sum(text_vectors[c] for c in pick) for img, pick in zip(images, picks, strict=True)
    }
    pairs = enumerate(zip(images, sets, strict=True))
    recs = [record(i, img, sets=tuple(s)) for i, (img, s) in pairs]
    recs.insert(1, record(9, b"not an image", sets=(bench_set("P", "p", ["q"] * 4),)))
    data_dir = write_shards(str(tmp_path / "bench"), recs)
    embedder = PlantedEmbedder(image_vectors, text_vectors, dim)

    prefix = str(tmp_path / "out")
    metrics = rclip_bench.evaluate(embedder, data_dir, results_prefix=prefix)
    assert metrics == {
        "accuracy": 5 / 7, "acc_A": 1 / 2, "acc_H": 1 / 2, "acc_S": 3 / 3,
        "num_sets": 7.0, "num_skipped": 1.0,
    }
    assert embedder.calls == 1  # all captions embedded at once, each distinct one once
    with open(f"{prefix}.items.jsonl") as f:
        items = [json.loads(line) for line in f]
    assert {i["key"]: None for i in items} == {"k0": None, "k1": None, "k2": None}  # in order
    assert {(i["key"], i["set"]): i["chosen"] for i in items} == {
        (f"k{r}", j): chosen[s["gt"]] for r, image_sets in enumerate(sets)
        for j, s in enumerate(image_sets)
    }
    assert all(i["correct"] == (i["chosen"] == 0) and "scores" not in i for i in items)
    with open(f"{prefix}.near_ties.jsonl") as f:  # exact ties at the top: s2, h0, h1
        assert sorted((t["key"], t["set"]) for t in map(json.loads, f)) == [
            ("k1", 1), ("k2", 1), ("k2", 2)]
    first = rclip_bench.evaluate(embedder, data_dir, max_examples=2)  # image 0 and the corrupt
    assert (first["accuracy"], first["num_sets"], first["num_skipped"]) == (0.5, 2.0, 1.0)


def test_rclip_bench_items_in_the_release_units_with_a_logit_scale(tmp_path):
    image = png(7)
    recs = [records.Record(id="0" * 32, source="rclip-bench", key="v1.jsonl:0", image=image,
                           sets=(bench_set("Att.", "x", ["y", "z", "w", "v"]),), source_id="17",
                           image_name="a.jpg", version="v1", set_index=(2,))]
    data_dir = write_shards(str(tmp_path / "bench"), recs)
    rng = np.random.default_rng(3)
    embedder = PlantedEmbedder({image: rng.normal(size=4)},
                               {t: rng.normal(size=4) for t in "xyzwv"}, 4)
    embedder.logit_scale = 100.0
    metrics = rclip_bench.evaluate(embedder, data_dir, results_prefix=str(tmp_path / "m"))
    assert set(metrics) == {"accuracy", "acc_Att.", "num_sets", "num_skipped"}  # tag verbatim
    with open(tmp_path / "m.items.jsonl") as f:
        (item,) = map(json.loads, f)
    image_vector = embedder.images(pixels_of(image)[None])[0].astype(np.float64)
    cosine = [float(image_vector @ embedder.texts([t])[0]) for t in "xyzwv"]
    assert (item["id"], item["image_name"], item["version"], item["set"], item["tag"]) == (
        "17", "a.jpg", "v1", 2, "Att.")
    np.testing.assert_allclose(item["cosine"], cosine, rtol=0, atol=1e-12)
    np.testing.assert_allclose(item["scores"], 100 * np.asarray(cosine), rtol=0, atol=1e-10)
    top = sorted(cosine)
    assert item["cosine_margin"] == pytest.approx(top[-1] - top[-2], abs=1e-12)
    assert item["chosen"] == int(np.argmax(cosine)) and metrics["accuracy"] == item["correct"]


def test_rclip_bench_versions_are_never_merged(tmp_path):
    rng = np.random.default_rng(5)
    images = [png(200 + i) for i in range(6)]
    versions = ["v1", "v3", "v1", "v3", "v3", "v1"]
    tags = ["Att.", "S", "Rel.", "A", "S", "Att."]
    recs = [record(i, img, version=v, sets=(bench_set(t, f"g{i}", [f"n{i}.{j}" for j in
                                                                   range(4)]),))
            for i, (img, v, t) in enumerate(zip(images, versions, tags, strict=True))]
    data_dir = write_shards(str(tmp_path / "bench"), recs)
    words = {c for r in recs for s in r.sets for c in [s["gt"], *s["neg"]]}
    embedder = PlantedEmbedder({img: rng.normal(size=5) for img in images},
                               {w: rng.normal(size=5) for w in sorted(words)}, 5)
    with pytest.raises(UserError, match="versions 'v1', 'v3'.*version=all"):
        rclip_bench.evaluate(embedder, data_dir)
    with pytest.raises(UserError, match="no records of version 'v2'; it holds 'v1', 'v3'"):
        rclip_bench.evaluate(embedder, data_dir, version="v2")
    alone = {v: rclip_bench.evaluate(embedder, data_dir, version=v) for v in ("v1", "v3")}
    assert alone["v1"]["num_sets"] == 3 and set(alone["v1"]) == {
        "accuracy", "acc_Att.", "acc_Rel.", "num_sets", "num_skipped"}
    every = rclip_bench.evaluate(embedder, data_dir, version="all")
    assert every == {"num_skipped": 0.0, **{f"{v}/{k}": x for v, m in alone.items()
                                            for k, x in m.items() if k != "num_skipped"}}
    # Reference: each version's sets scored on their own, argmax with first-index ties.
    for v, metrics in alone.items():
        hits = {}
        for r, img in zip(recs, images, strict=True):
            if r.version == v:
                s = r.sets[0]
                cos = [embedder.images(pixels_of(img)[None])[0].astype(np.float64)
                       @ embedder.texts([c])[0] for c in [s["gt"], *s["neg"]]]
                hits.setdefault(s["tag"], []).append(int(np.argmax(cos)) == 0)
        every_hit = [h for values in hits.values() for h in values]
        assert metrics["accuracy"] == sum(every_hit) / len(every_hit)
        assert all(metrics[f"acc_{t}"] == sum(h) / len(h) for t, h in hits.items())


def test_rclip_bench_matches_float64_loop(tmp_path):
    rng = np.random.default_rng(0)
    dim, words = 6, [f"w{i}" for i in range(12)]
    images = [png(100 + i) for i in range(7)]
    tags = ["S", "A", "Rel."]

    def random_set() -> dict:
        captions = [str(w) for w in rng.choice(words, 5, replace=False)]
        return bench_set(tags[int(rng.integers(3))], captions[0], captions[1:])

    sets = [tuple(random_set() for _ in range(int(rng.integers(1, 4)))) for _ in images]
    image_vectors = {img: rng.normal(size=dim) for img in images}
    embedder = PlantedEmbedder(image_vectors, {w: rng.normal(size=dim) for w in words}, dim)
    recs = [record(i, img, sets=s) for i, (img, s) in enumerate(zip(images, sets, strict=True))]
    data_dir = write_shards(str(tmp_path / "bench"), recs)

    correct: dict[str, list[bool]] = {}
    for img, image_sets in zip(images, sets, strict=True):
        v = image_vectors[img] / np.linalg.norm(image_vectors[img])
        for s in image_sets:
            cos = [
                float(np.dot(v, embedder.text_vector(c)) / np.linalg.norm(embedder.text_vector(c)))
                for c in [s["gt"], *s["neg"]]
            ]
            correct.setdefault(s["tag"], []).append(int(np.argmax(cos)) == 0)
    every = [c for values in correct.values() for c in values]
    expected = {"accuracy": sum(every) / len(every)}
    expected.update({f"acc_{t}": sum(v) / len(v) for t, v in correct.items()})
    metrics = rclip_bench.evaluate(embedder, data_dir)
    assert 0 < expected["accuracy"] < 1
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key


def test_rclip_bench_rejects_uneven_sets(tmp_path):
    recs = [record(0, png(0), sets=(bench_set("S", "a", ["b"] * 4), bench_set("S", "c", ["d"])))]
    data_dir = write_shards(str(tmp_path / "bench"), recs)
    with pytest.raises(UserError, match="same number"):
        rclip_bench.evaluate(PlantedEmbedder({png(0): np.ones(3)}, {}, 3), data_dir)


# ----------------------------------------------------------------------------------------------
# Retrieval and zero-shot classification: tests/test_retrieval.py and tests/test_zero_shot.py.
# ----------------------------------------------------------------------------------------------


def reference_recalls(
    images: np.ndarray, captions: np.ndarray, image_captions: Sequence[Sequence[int]], ks
) -> dict[str, float]:
    """The release's RCLIP retrieval (eval_RCLIP_retrieval.py, transcribed in
    tests/test_retrieval.py) of images whose gts are rows of `captions`."""
    from test_retrieval import release_recalls  # not at the top: test_retrieval imports this

    return release_recalls(images, captions, image_captions, ks)


# ----------------------------------------------------------------------------------------------
# Registry, configs, command line.
# ----------------------------------------------------------------------------------------------


def test_run_evaluators_prefixes_and_checks(tmp_path):
    image, other = png(400), png(401)
    data_dir = write_shards(str(tmp_path / "d"), [
        record(0, image, desc=("x",), sets=(bench_set("T", "x", ["y"] * 4),)),
        record(1, other, desc=("y",), sets=(bench_set("T", "y", ["x"] * 4),)),
    ])
    embedder = PlantedEmbedder({image: basis(2, 0), other: basis(2, 1)},
                               {"x": basis(2, 0), "y": basis(2, 1)}, 2)
    configs = [
        ml_collections.ConfigDict({"type": "rclip_bench", "name": "bench", "data_dir": data_dir,
                                   "split": "test", "max_examples": None}),
        {"type": "retrieval", "data_dir": data_dir},
    ]
    got = evaluators.run_evaluators(configs, embedder)
    assert got["bench/accuracy"] == 1.0 and got["bench/acc_T"] == 1.0
    assert got["retrieval/i2t_r1"] == 1.0 and got["retrieval/t2i_r10"] == 1.0
    assert set(evaluators.EVALUATORS) == {
        "rclip_bench", "retrieval", "rclip_retrieval", "retrieval_karpathy", "retrieval_wds",
        "zero_shot", "zero_shot_folder", "zero_shot_tfds"}

    bad = [
        ({"type": "nope", "data_dir": data_dir}, "unknown evaluator type"),
        ({"type": "retrieval", "data_dir": data_dir, "spilt": "test"}, "unknown keys"),
        ({"type": "zero_shot"}, "missing keys"),
        ({"type": "zero_shot", "data_dir": str(tmp_path / "none")}, "not a directory"),
    ]
    for config, message in bad:
        with pytest.raises(UserError, match=message):
            evaluators.run_evaluators([config], embedder)
    with pytest.raises(UserError, match="repeat"):
        evaluators.run_evaluators([configs[1], configs[1]], embedder)


class ImagesOnly:
    """Half an `Embedder`: no `texts`."""

    image_size = SIZE

    def images(self, pixels: np.ndarray) -> np.ndarray:
        return common.normalize(pixels.reshape(len(pixels), -1))


def test_encoder_is_an_embedder():
    config = get_preset("tiny", image_size=32)
    params = random_params(config)
    embedder = Encoder(params, config, batch_size=4)
    assert isinstance(embedder, common.Embedder) and embedder.image_size == 32
    assert not isinstance(ImagesOnly(), common.Embedder)  # the Protocol does check names

    # What the Protocol promises, for 5 images and 3 texts (each a full and a padded batch):
    # float32 [B, embed_dim] rows of unit norm, in input order, and the padding of the last
    # batch changes nothing. Reference: the model's unnormalised features of the whole
    # input in one call, normalised here in float64.
    pixels = np.random.default_rng(7).normal(size=(5, 32, 32, 3)).astype(np.float32)
    texts = ["a red cube", "two blue spheres left of a green cube", "a"]
    model = CLIP(config)
    for got, features in [
        (embedder.images(pixels),
         model.apply({"params": params}, pixels, method=CLIP.encode_image)),
        (embedder.texts(texts),
         model.apply({"params": params}, tokenizer.tokenize(texts, config.context_length),
                     method=CLIP.encode_text)),
    ]:
        assert type(got) is np.ndarray and got.dtype == np.float32
        assert got.shape == (len(features), config.embed_dim)
        np.testing.assert_allclose(np.linalg.norm(got.astype(np.float64), axis=1), 1.0,
                                   rtol=0, atol=1e-6)
        features = np.asarray(features, np.float64)
        want = features / np.linalg.norm(features, axis=1, keepdims=True)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        off_diagonal = ~np.eye(len(got), dtype=bool)
        assert np.abs(got[:, None] - got[None]).max(-1)[off_diagonal].min() > 1e-3  # distinct
    for got in (embedder.images(pixels[:0]), embedder.texts([])):
        assert got.shape == (0, config.embed_dim) and got.dtype == np.float32


def random_params(config, seed: int = 0, std: float = 0.02):
    """Random weights of the model's shapes: normal(std) matrices, LayerNorms at identity.

    (`init_params` would compile the whole model; the evaluators only need random weights.)
    """
    rng = np.random.default_rng(seed)

    def fill(path, shape):
        name = jax.tree_util.keystr(path)
        if "scale" in name and "logit" not in name:
            return np.ones(shape.shape, np.float32)
        if "bias" in name:
            return np.zeros(shape.shape, np.float32)
        if "logit_scale" in name:
            return np.full(shape.shape, math.log(1 / 0.07), np.float32)
        return rng.normal(0, std, shape.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, param_shapes(CLIP(config)))


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    from data_pipeline import build

    out = str(tmp_path_factory.mktemp("scenes"))
    build.run(["--source", "scenes", "--num-scenes", "20", "--seed", "5", "--image-size", "32",
               "--output", out])
    return out


def min_rank_gap(scores: np.ndarray, positive: np.ndarray) -> float:
    """The smallest |best positive - negative| score gap over the queries: float32 noise
    below it could not change any rank."""
    best = np.where(positive, scores, -np.inf).max(axis=1, keepdims=True)
    return float(np.abs(scores - best)[~positive].min())


def reference_scenes_metrics(encoder: Encoder, bench: str) -> tuple[dict[str, float], float]:
    """The CLI's RCLIP-Bench and gt-retrieval metrics recomputed here: one embedding per image
    and per distinct caption (sorted, not the evaluators' order), float64 loops over the
    sets and the sorting reference. Also the smallest score gap any outcome turns on."""
    recs = records.ShardDirectory(bench, "test").read_all()
    images = encoder.images(np.stack([pixels_of(r.image, encoder.image_size) for r in recs]))
    captions = sorted({c for r in recs for s in r.sets for c in [s["gt"], *s["neg"]]})
    row = {c: i for i, c in enumerate(captions)}
    images, texts = images.astype(np.float64), encoder.texts(captions).astype(np.float64)
    correct: dict[str, list[bool]] = {}
    gaps = []
    for image, r in zip(images, recs, strict=True):
        for s in r.sets:
            scores = [float(np.dot(image, texts[row[c]])) for c in [s["gt"], *s["neg"]]]
            correct.setdefault(s["tag"], []).append(scores[0] > max(scores[1:]))
            gaps += [abs(scores[0] - x) for c, x in zip(s["neg"], scores[1:], strict=True)
                     if c != s["gt"]]  # an identical string is an exact tie, not noise
    every = [c for values in correct.values() for c in values]
    expected = {"rclip_bench/accuracy": sum(every) / len(every)}
    expected.update({f"rclip_bench/acc_{t}": sum(v) / len(v) for t, v in correct.items()})
    image_captions = [[row[s["gt"]] for s in r.sets] for r in recs]
    got = reference_recalls(images, texts, image_captions, (1, 5, 10))
    expected.update({f"retrieval/{k}": v for k, v in got.items()})
    queries = [(i, x) for i, rows in enumerate(image_captions) for x in rows]
    t2i_pos = np.array([[x in rows for rows in image_captions] for _, x in queries])
    text_embeds = texts[[x for _, x in queries]]
    gaps += [min_rank_gap(images @ text_embeds.T, t2i_pos.T),  # images without captions: inf
             min_rank_gap(text_embeds @ images.T, t2i_pos)]
    return expected, min(gaps)


def test_cli_end_to_end_on_scenes_bench(scenes_dir, tmp_path):
    config = get_preset("tiny", image_size=32)
    ckpt = str(tmp_path / "ckpt")
    # std 0.2: spread-out random embeddings, so no outcome is within float32 noise (at 0.02
    # some text -> image ranks turn on score gaps of 3e-7).
    params = random_params(config, std=0.2)
    checkpoint.save_model(ckpt, params, config)
    output = str(tmp_path / "metrics.json")
    bench = os.path.join(scenes_dir, "bench")
    evaluate.main(["--checkpoint", ckpt, "--eval", f"rclip_bench:{bench}",
                   "--eval", f"retrieval:{bench}", "caption_field=gt", "max_examples=none",
                   "--output", output, "--batch-size", "16"])
    with open(output) as f:
        metrics = json.load(f)
    tags = {s["tag"] for r in records.ShardDirectory(bench, "test").read_all() for s in r.sets}
    assert {f"rclip_bench/acc_{t}" for t in tags} <= set(metrics) and len(tags) >= 3
    assert metrics["rclip_bench/num_sets"] == 100 and metrics["rclip_bench/num_skipped"] == 0
    assert 0.05 <= metrics["rclip_bench/accuracy"] <= 0.45  # a random model: near 1/5
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
        assert 0.0 <= metrics[f"retrieval/{key}"] <= 1.0

    expected, gap = reference_scenes_metrics(Encoder(params, config, batch_size=16), bench)
    assert gap > 1e-5  # float32 scores in the evaluators cannot flip an outcome
    assert set(expected) == {k for k in metrics if not k.endswith(("num_sets", "num_skipped",
                                                                   "num_images", "num_texts"))}
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=0, abs=1e-12), key
    assert 0 < expected["retrieval/t2i_r1"] < expected["retrieval/t2i_r10"] < 1  # not trivial
    assert (metrics["retrieval/num_images"], metrics["retrieval/num_texts"]) == (20.0, 100.0)


class OracleEmbedder:
    """Knows the answers: image i is basis vector i, a text is the normalised indicator of the
    images it is a correct caption of (the bench's `gt`s)."""

    def __init__(self, recs: Sequence[records.Record], image_size: int):
        self.image_size = image_size
        self.index = {fingerprint(pixels_of(r.image, image_size)): i for i, r in enumerate(recs)}
        self.owners: dict[str, list[int]] = {}
        for i, r in enumerate(recs):
            for s in r.sets:
                self.owners.setdefault(s["gt"], []).append(i)
        self.dim = len(recs)

    def images(self, pixels: np.ndarray) -> np.ndarray:
        return np.stack([basis(self.dim, self.index[fingerprint(p)]) for p in pixels])

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        return common.normalize(np.stack(
            [sum((basis(self.dim, i) for i in self.owners.get(t, [])), np.zeros(self.dim))
             for t in texts]
        ))


def test_oracle_on_scenes_bench(scenes_dir):
    bench = os.path.join(scenes_dir, "bench")
    oracle = OracleEmbedder(records.ShardDirectory(bench, "test").read_all(), image_size=32)
    assert rclip_bench.evaluate(oracle, bench)["accuracy"] == 1.0
    # Retrieval: a gt several images carry is one entry per image, tied exactly, and the
    # release's topk may put another image's copy (or image) first: the oracle's R@1 is the
    # release's, below 1 here; within 10 it finds them all.
    got = retrieval.evaluate(oracle, bench, caption_field="gt")
    recs = records.ShardDirectory(bench, "test").read_all()
    rows = {c: i for i, c in enumerate(oracle.owners)}
    want = reference_recalls(np.eye(len(recs)), oracle.texts(list(oracle.owners)),
                             [[rows[s["gt"]] for s in r.sets] for r in recs], (1, 5, 10))
    assert {k: got[k] for k in want} == want
    assert got["i2t_r10"] == got["t2i_r10"] == 1.0 and min(got["i2t_r1"], got["t2i_r1"]) < 1


@pytest.mark.parametrize("args, message", [
    (["--eval", "rclip_bench:{tmp}"], "--checkpoint"),
    (["--checkpoint", "{tmp}", "--eval", "bogus:{tmp}"], "unknown type 'bogus'"),
    (["--checkpoint", "{tmp}", "--eval", "retrieval:{tmp}", "max_examples=many"], "integer"),
    (["--checkpoint", "{tmp}", "--eval", "retrieval:{tmp}", "colour=red"], "unknown keys"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err


def test_cli_bad_argument_exits_2_in_a_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "reasonclip_jax.evaluate", "--checkpoint", str(tmp_path),
         "--eval", f"rclip_bench:{tmp_path / 'missing'}"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
