"""Retrieval against the release's own scoring, transcribed here, and CPU torch.topk.

    .venv/bin/python -m pytest -q tests/test_retrieval.py

`build_retrieval_lists` and `release_rclip_recalls` are eval/eval_RCLIP_retrieval.py's gallery
and its torch.topk scoring loop; `release_karpathy_recalls` is eval/eval_retrieval.py's
rank-based metric. Embeddings are chosen so that every score is exact in float32 (entries
0 and +-1/2), which plants exact ties on purpose: each outcome is known, and an
order-of-summation difference could never move one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from test_evaluators import PlantedEmbedder, basis, bench_set, png, record, write_shards

from reasonclip_jax import evaluators
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators import ranking, rclip_retrieval, retrieval, retrieval_formats
from reasonclip_jax.tools import evaluate

KS = (1, 5, 10)

# ----------------------------------------------------------------------------------------------
# The release, transcribed (eval/eval_RCLIP_retrieval.py, eval/eval_retrieval.py).
# ----------------------------------------------------------------------------------------------


def build_retrieval_lists(image_rows):
    """eval_RCLIP_retrieval.py's `build_retrieval_lists`, as released."""
    i2t_texts = []
    image_pos_text_ids = []
    t2i_query_texts = []
    t2i_query_gt_img_idx = []
    for img_idx, row in enumerate(image_rows):
        pos_ids = []
        for _tag, gt, _negs in row["sets"]:
            base = len(i2t_texts)
            i2t_texts.append(gt)
            pos_ids.append(base)
            t2i_query_texts.append(gt)
            t2i_query_gt_img_idx.append(img_idx)
        image_pos_text_ids.append(pos_ids)
    return i2t_texts, image_pos_text_ids, t2i_query_texts, t2i_query_gt_img_idx


def release_rclip_recalls(
    image_feats: torch.Tensor,
    encode_texts: Callable[[list], torch.Tensor],
    image_rows: list[dict],
    k_values: Sequence[int] = KS,
    sim_chunk_size: int = 512,
) -> dict[str, float]:
    """eval_RCLIP_retrieval.py's main(), steps 2-5 (lists, text features, recall), on CPU.

    One change: topk takes min(max_k, gallery size) where the release would fail on a
    gallery smaller than max_k."""
    i2t_texts, image_pos_text_ids, t2i_query_texts, t2i_query_gt_img_idx = (
        build_retrieval_lists(image_rows))
    i2t_text_feats = encode_texts(i2t_texts)
    t2i_text_feats = encode_texts(t2i_query_texts)
    max_k = max(k_values)
    i2t_hits = {k: 0 for k in k_values}
    for s in range(0, image_feats.shape[0], sim_chunk_size):
        e = min(s + sim_chunk_size, image_feats.shape[0])
        sim = image_feats[s:e] @ i2t_text_feats.t()
        topk = torch.topk(sim, k=min(max_k, sim.shape[1]), dim=1).indices.cpu()
        for i in range(topk.shape[0]):
            pos = set(image_pos_text_ids[s + i])
            row = topk[i].tolist()
            for k in k_values:
                if any(idx in pos for idx in row[:k]):
                    i2t_hits[k] += 1
    t2i_hits = {k: 0 for k in k_values}
    gt_img = torch.tensor(t2i_query_gt_img_idx, dtype=torch.long)
    for s in range(0, t2i_text_feats.shape[0], sim_chunk_size):
        e = min(s + sim_chunk_size, t2i_text_feats.shape[0])
        sim = t2i_text_feats[s:e] @ image_feats.t()
        topk = torch.topk(sim, k=min(max_k, sim.shape[1]), dim=1).indices.cpu()
        gt = gt_img[s:e]
        for k in k_values:
            t2i_hits[k] += int((topk[:, :k] == gt.unsqueeze(1)).any(dim=1).sum().item())
    out = {f"i2t_r{k}": i2t_hits[k] / image_feats.shape[0] for k in k_values}
    out.update({f"t2i_r{k}": t2i_hits[k] / t2i_text_feats.shape[0] for k in k_values})
    return out


def release_karpathy_recalls(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    image_to_captions: dict[int, list[int]],
    caption_to_image: dict[int, int],
) -> dict[str, float]:
    """eval_retrieval.py's `compute_retrieval_metrics_karpathy` (percentages, as released)."""
    num_images, num_captions = len(image_features), len(text_features)
    image_gt_caption_idx = torch.tensor(
        [image_to_captions[i] for i in range(num_images)], dtype=torch.long)
    caption_gt_image_idx = torch.tensor(
        [caption_to_image[i] for i in range(num_captions)], dtype=torch.long)
    i2t_ranks = []
    for batch_start in range(0, num_images, 100):
        batch_end = min(batch_start + 100, num_images)
        batch_sims = image_features[batch_start:batch_end] @ text_features.T
        batch_gt_scores = batch_sims.gather(
            dim=1, index=image_gt_caption_idx[batch_start:batch_end])
        batch_best_gt_scores = batch_gt_scores.max(dim=1).values
        batch_ranks = (batch_sims > batch_best_gt_scores.unsqueeze(1)).sum(dim=1) + 1
        i2t_ranks.append(batch_ranks.cpu().numpy())
    t2i_ranks = []
    for batch_start in range(0, num_captions, 500):
        batch_end = min(batch_start + 500, num_captions)
        batch_sims = text_features[batch_start:batch_end] @ image_features.T
        batch_gt_img_idx = caption_gt_image_idx[batch_start:batch_end].unsqueeze(1)
        batch_gt_scores = batch_sims.gather(dim=1, index=batch_gt_img_idx).squeeze(1)
        batch_ranks = (batch_sims > batch_gt_scores.unsqueeze(1)).sum(dim=1) + 1
        t2i_ranks.append(batch_ranks.cpu().numpy())
    i2t, t2i = np.concatenate(i2t_ranks), np.concatenate(t2i_ranks)
    out = {f"i2t_r{k}": np.mean(i2t <= k) * 100 for k in KS}
    out.update({f"t2i_r{k}": np.mean(t2i <= k) * 100 for k in KS})
    return out


def release_recalls(
    images: np.ndarray, captions: np.ndarray, image_captions: Sequence[Sequence[int]], ks=KS
) -> dict[str, float]:
    """The release's RCLIP retrieval of images whose gts are rows of `captions`
    (`image_captions[i]`, one set per row); images without captions are left out of it, as
    the release has none."""
    keep = [i for i, rows in enumerate(image_captions) if len(rows)]
    rows = [{"sets": [("T", int(r), []) for r in image_captions[i]]} for i in keep]
    captions_t = torch.from_numpy(np.asarray(captions, np.float32))  # the release's .float()
    return release_rclip_recalls(torch.from_numpy(np.asarray(images, np.float32)[keep]),
                                 lambda ids: captions_t[list(ids)], rows, ks)


# ----------------------------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------------------------


def halves(rng: np.random.Generator, n: int, dim: int = 8) -> np.ndarray:
    """n unit vectors with four entries +-1/2 and the rest 0: every dot product of two is a
    multiple of 1/4, exact in float32, and many are equal."""
    out = np.zeros((n, dim), np.float32)
    for v in out:
        v[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return out


def gallery(owners_captions: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(text rows, owners) of a gallery given each image's caption rows."""
    rows = np.array([r for c in owners_captions for r in c], np.int64)
    owner = np.repeat(np.arange(len(owners_captions)), [len(c) for c in owners_captions])
    return rows, owner


def rows_of(captions_per_image: Sequence[Sequence[str]]) -> list[dict]:
    return [{"sets": [("T", c, ["n"] * 4) for c in captions]} for captions in captions_per_image]


def encoder_of(embedder: PlantedEmbedder) -> Callable[[list], torch.Tensor]:
    def encode(texts: list) -> torch.Tensor:
        vectors = np.stack([embedder.text_vector(t) for t in texts]).astype(np.float32)
        return torch.from_numpy(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    return encode


def image_feats(embedder_vectors: dict, images: Sequence[bytes]) -> torch.Tensor:
    v = np.stack([embedder_vectors[i] for i in images]).astype(np.float32)
    return torch.from_numpy(v / np.linalg.norm(v, axis=1, keepdims=True))


# ----------------------------------------------------------------------------------------------
# The tie rule: CPU torch.topk's order.
# ----------------------------------------------------------------------------------------------


def test_topk_tie_order_is_torchs_not_index_order():
    # What the module docstring says: five equal scores, K = 1 -> index 2, neither end.
    assert torch.topk(torch.zeros(5), 1).indices.tolist() == [2]
    assert ranking.topk_indices([0.0] * 5, 1) == [2]
    # 64 * K <= n: partial_sort (heap); below: nth_element + sort. Both orders are odd.
    for n, k in ((640, 10), (639, 10), (8, 8)):
        want = torch.topk(torch.zeros(n), k).indices.tolist()
        assert ranking.topk_indices(np.zeros(n), k) == want
        assert want != list(range(k))


@pytest.mark.parametrize("sizes", [range(1, 70), [100, 639, 640, 641, 1300, 5000]])
def test_topk_indices_match_torch_with_planted_ties(sizes):
    rng = np.random.default_rng(0)
    checked = 0
    sizes = list(sizes)
    for n in sizes:
        for k in {1, 2, 5, 10, 17, min(n, 33)}:
            if k > n:
                continue
            levels = int(rng.integers(1, 8))  # few distinct values: ties everywhere
            values = (rng.integers(0, levels, (4, n)) / 4).astype(np.float32)
            values[3, rng.integers(0, n, max(1, n // 9))] = np.nan  # NaN sorts as largest
            want = torch.topk(torch.from_numpy(values), k, dim=1).indices.tolist()
            assert [ranking.topk_indices(row, k) for row in values] == want, (n, k)
            checked += 1
    assert checked >= 4 * len(sizes)  # 4 rows each: 1 to 6 values of k per size


@pytest.mark.parametrize("n", [30, 700])  # nth_element and partial_sort paths for K = 10
def test_hits_at_match_torch_topk_across_k_boundaries(n):
    rng = np.random.default_rng(n)
    q = 300
    scores = (rng.integers(0, 6, (q, n)) / 4).astype(np.float32)
    positive = np.zeros((q, n), bool)
    for i in range(q):  # 1-5 correct items, often tied with wrong ones across a boundary
        positive[i, rng.choice(n, int(rng.integers(1, 6)), replace=False)] = True
    top = torch.topk(torch.from_numpy(scores), 10, dim=1).indices.numpy()
    in_top = np.take_along_axis(positive, top, axis=1).cumsum(axis=1) > 0
    want = np.stack([in_top[:, k - 1] for k in KS])
    np.testing.assert_array_equal(ranking.hits_at(scores, positive, KS), want)
    # Many queries turn on a tie: a rule that broke ties either way would differ.
    best = np.where(positive, scores, -np.inf).max(axis=1, keepdims=True)
    above = (scores > best).sum(axis=1)
    tied = (~positive & (scores == best)).sum(axis=1)
    open_queries = [(above < k) & (above + tied >= k) for k in KS]
    assert sum(int(o.sum()) for o in open_queries) > 50
    # eval_retrieval.py's rule: rank = 1 + strictly higher scores.
    rank = (torch.from_numpy(scores) > torch.from_numpy(best)).sum(dim=1).numpy() + 1
    np.testing.assert_array_equal(ranking.hits_at(scores, positive, KS, ties="rank"),
                                  np.stack([rank <= k for k in KS]))


def test_unknown_tie_rule_is_a_user_error():
    with pytest.raises(UserError, match="unknown ties 'stable'"):
        ranking.hits_at(np.zeros((1, 2)), np.ones((1, 2), bool), KS, ties="stable")


# ----------------------------------------------------------------------------------------------
# Gallery ownership, as the release.
# ----------------------------------------------------------------------------------------------


def test_repeated_caption_belongs_to_its_own_image_hand_computed():
    # Image 0's captions are a and b, image 1's is a too, image 2's is c. Entries: E0 = a
    # (image 0), E1 = b (0), E2 = a (1), E3 = c (2). Image 0 points at b, images 1 and 2 at a.
    a, b, c = np.eye(3, dtype=np.float32)
    images = np.stack([b, a, a])
    rows, owner = gallery([[0, 1], [0], [2]])
    # The ties below, as CPU torch.topk breaks them (K = gallery size here):
    assert torch.topk(torch.tensor([1.0, 0, 1, 0]), 4).indices.tolist() == [0, 2, 3, 1]
    assert torch.topk(torch.tensor([0.0, 1, 1]), 3).indices.tolist() == [1, 2, 0]
    assert torch.topk(torch.zeros(3), 3).indices.tolist() == [0, 1, 2]
    got = retrieval.recalls(images, np.stack([a, b, c]), rows, owner)
    # i2t: image 0 -> E1, its own: hit at 1. Image 1 scores [1, 0, 1, 0]: topk puts E0 (a, but
    # image 0's) first and its own E2 second: a miss at 1 (the old rule, any image carrying
    # the string, counted it). Image 2's c (E3) comes third: a hit at 5.
    # t2i: E0 (a of image 0) scores images [0, 1, 1]: image 0 last, a hit at 5. E1 (b): image
    # 0 first. E2 (a of image 1): images 1 and 2 tie, topk puts 1 first: a hit at 1. E3 (c)
    # scores 0 everywhere: [0, 1, 2], image 2 third: a hit at 5.
    assert got == {"i2t_r1": 1 / 3, "i2t_r5": 1.0, "i2t_r10": 1.0,
                   "t2i_r1": 2 / 4, "t2i_r5": 1.0, "t2i_r10": 1.0}
    assert got == release_recalls(images, np.stack([a, b, c]), [[0, 1], [0], [2]])
    # eval_retrieval.py's rank rule gives the tie to the model: image 1 and E2 hit at 1.
    assert retrieval.recalls(images, np.stack([a, b, c]), rows, owner, ties="rank") == {
        "i2t_r1": 2 / 3, "i2t_r5": 1.0, "i2t_r10": 1.0,
        "t2i_r1": 3 / 4, "t2i_r5": 1.0, "t2i_r10": 1.0}


@pytest.mark.parametrize("num_images, vocab", [(140, 300), (660, 900)])
def test_recalls_equal_the_release_with_repeated_captions(num_images, vocab):
    # 5 gts per image drawn from a small vocabulary: strings repeat across images (and now
    # and then within one); duplicate images too. 700 or 3300 text entries: topk's
    # partial_sort path for image -> text; nth_element (140 images) and partial_sort (660)
    # for text -> image.
    rng = np.random.default_rng(num_images)
    captions = halves(rng, vocab)
    image_captions = [rng.integers(0, vocab, 5).tolist() for _ in range(num_images)]
    images = halves(rng, num_images)
    for i in range(0, num_images, 3):  # image i looks like its first gt, image i + 1 too
        images[i] = images[i + 1] = captions[image_captions[i][0]]
    images[7] = images[3]
    rows, owner = gallery(image_captions)
    want = release_recalls(images, captions, image_captions)
    assert retrieval.recalls(images, captions, rows, owner) == want
    assert 0 < want["i2t_r1"] < want["i2t_r10"] < 1 and 0 < want["t2i_r1"] < want["t2i_r10"] < 1
    # The rank rule against eval_retrieval.py's metric (5 captions per image, as it needs).
    features = torch.from_numpy(captions[rows])
    karpathy = release_karpathy_recalls(
        torch.from_numpy(images), features,
        {i: list(range(5 * i, 5 * i + 5)) for i in range(num_images)},
        {e: int(o) for e, o in enumerate(owner)})
    got = retrieval.recalls(images, captions, rows, owner, ties="rank")
    assert {k: v * 100 for k, v in got.items()} == pytest.approx(karpathy, rel=0, abs=1e-9)


def test_images_without_captions_stay_in_the_text_to_image_gallery():
    # Image 1 has no caption but is the best match of image 0's caption: a t2i miss at 1.
    a = np.array([[1, 0]], np.float32)
    images = np.array([[0.6, 0.8], [1, 0]], np.float32)
    got = retrieval.recalls(images, a, [0], [0])
    assert (got["i2t_r1"], got["t2i_r1"], got["t2i_r5"]) == (1.0, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Evaluators: shard directories.
# ----------------------------------------------------------------------------------------------


def test_rclip_retrieval_is_the_release_in_its_row_order(tmp_path):
    rng = np.random.default_rng(5)
    words = [f"w{i}" for i in range(9)]
    text_vectors = dict(zip(words, halves(rng, len(words)), strict=True))
    images = [png(600 + i) for i in range(12)]
    image_vectors = dict(zip(images, halves(rng, len(images)), strict=True))
    gts = [[str(w) for w in rng.choice(words, 5)] for _ in images]
    keys = [f"rclip_v3.parquet:{i}" for i in range(12)]  # the release's row order: 0, 1, .. 11
    recs = [record(i, img, sets=tuple(bench_set("S", f" {g} ", ["n"] * 4) for g in gt))
            for i, (img, gt) in enumerate(zip(images, gts, strict=True))]
    recs = [dataclasses.replace(r, key=k) for r, k in zip(recs, keys, strict=True)]
    recs[4] = dataclasses.replace(recs[4], image=b"not an image")
    shuffled = [recs[i] for i in rng.permutation(len(recs))]
    data_dir = write_shards(str(tmp_path / "bench"), shuffled)
    embedder = PlantedEmbedder(image_vectors, text_vectors, 8)

    def release(n: int) -> dict[str, float]:
        kept = [i for i in range(n) if i != 4]  # row 4's image does not decode: left out
        return release_rclip_recalls(image_feats(image_vectors, [images[i] for i in kept]),
                                     encoder_of(embedder), rows_of([gts[i] for i in kept]))

    got = rclip_retrieval.evaluate(embedder, data_dir)
    want = release(12)
    assert {k: got[k] for k in want} == want
    assert (got["num_images"], got["num_texts"], got["num_skipped"]) == (11.0, 55.0, 1.0)
    assert 0 < want["i2t_r1"] < 1 and 0 < want["t2i_r1"] < 1
    first = rclip_retrieval.evaluate(embedder, data_dir, max_examples=7)  # rows 0-6
    assert {k: first[k] for k in want} == release(7) and first["num_skipped"] == 1.0


def test_rclip_retrieval_rejects_an_empty_gt(tmp_path):
    data_dir = write_shards(str(tmp_path / "b"), [
        record(0, png(0), sets=(bench_set("S", "  ", ["n"] * 4),))])
    with pytest.raises(UserError, match="empty gt"):
        rclip_retrieval.evaluate(PlantedEmbedder({png(0): np.ones(2)}, {}, 2), data_dir)


@pytest.mark.parametrize("field", ["desc", "reason", "gt"])
def test_retrieval_caption_fields(tmp_path, field):
    images = [png(200 + i) for i in range(4)]
    caps = [[f"c{i}a", f"c{i}b"] for i in range(4)]
    dim = 8
    text_vectors = {c: basis(dim, i) for i, c in enumerate(c for pair in caps for c in pair)}
    # Image i points at its "a" caption; image 3 equally at its own and image 0's.
    image_vectors = {img: text_vectors[f"c{i}a"] for i, img in enumerate(images)}
    image_vectors[images[3]] = text_vectors["c3a"] + text_vectors["c0a"]
    fields = {
        "desc": lambda c: {"desc": tuple(c)},
        "reason": lambda c: {"reason": tuple(c)},
        "gt": lambda c: {"sets": tuple(bench_set("S", x, ["n"] * 4) for x in c)},
    }[field]
    pairs = enumerate(zip(images, caps, strict=True))
    recs = [record(i, img, **fields(c)) for i, (img, c) in pairs]
    data_dir = write_shards(str(tmp_path / field), recs)
    embedder = PlantedEmbedder(image_vectors, text_vectors, dim)
    got = retrieval.evaluate(embedder, data_dir, caption_field=field)
    # Entries c0a c0b c1a c1b c2a c2b c3a c3b. i2t: images 0-2 find their "a" caption first;
    # image 3's c3a (entry 6) ties c0a (entry 0), and topk of those 8 scores puts entry 6,
    # its own, first: a hit at 1 (the old rule, ties against the model, had a miss). t2i:
    # the "a" captions hit at 1 (c0a prefers image 0 to image 3); each "b" scores 0 with
    # every image, and topk of 4 equal scores gives [2, 3, 0, 1]: only c2b finds its image
    # first, the others at 2 to 4: hits at 5.
    assert torch.topk(torch.tensor([1.0, 0, 0, 0, 0, 0, 1, 0]), 8).indices[0] == 6
    assert torch.topk(torch.zeros(4), 4).indices.tolist() == [2, 3, 0, 1]
    assert (got["i2t_r1"], got["i2t_r5"], got["i2t_r10"]) == (1.0, 1.0, 1.0)
    assert (got["t2i_r1"], got["t2i_r5"], got["t2i_r10"]) == (5 / 8, 1.0, 1.0)
    assert (got["num_images"], got["num_texts"], got["num_skipped"]) == (4.0, 8.0, 0.0)
    rows = [[2 * i, 2 * i + 1] for i in range(4)]
    vectors = np.stack([image_vectors[i] for i in images])
    want = release_recalls(vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
                           np.eye(dim, dtype=np.float32), rows)
    assert {k: got[k] for k in want} == want


def test_retrieval_unknown_caption_field(tmp_path):
    data_dir = write_shards(str(tmp_path / "d"), [record(0, png(0), desc=("a",))])
    with pytest.raises(UserError, match="caption_field"):
        retrieval.evaluate(PlantedEmbedder({}, {}, 2), data_dir, caption_field="title")
    with pytest.raises(UserError, match="unknown ties"):
        retrieval.evaluate(PlantedEmbedder({}, {}, 2), data_dir, ties="first")


# ----------------------------------------------------------------------------------------------
# Evaluators: Karpathy JSON and webdataset tars.
# ----------------------------------------------------------------------------------------------


def karpathy_case(rng: np.random.Generator, n: int = 14):
    """n images with 3 to 7 captions each (words repeat across images) and their vectors."""
    words = [f"a photo of thing {i}" for i in range(12)]
    text_vectors = dict(zip(words, halves(rng, len(words)), strict=True))
    images = [png(700 + i) for i in range(n)]
    captions = [[str(w) for w in rng.choice(words, int(rng.integers(3, 8)))] for _ in images]
    vectors = halves(rng, n)
    for i in range(0, n, 2):  # half the images look like their first caption
        vectors[i] = text_vectors[captions[i][0]]
    image_vectors = dict(zip(images, vectors, strict=True))
    return images, captions, PlantedEmbedder(image_vectors, text_vectors, 8), image_vectors


def release_padded_recalls(embedder, image_vectors, images, captions, ties):
    """The release's metric of images and captions padded to 5 as its RetrievalDataset does."""
    padded = [retrieval_formats.pad_captions(c, 5) for c in captions]
    if ties == "topk":
        return release_rclip_recalls(image_feats(image_vectors, images), encoder_of(embedder),
                                     rows_of(padded))
    texts = [t for c in padded for t in c]
    got = release_karpathy_recalls(
        image_feats(image_vectors, images), encoder_of(embedder)(texts),
        {i: list(range(5 * i, 5 * i + 5)) for i in range(len(images))},
        {e: e // 5 for e in range(len(texts))})
    return {k: v / 100 for k, v in got.items()}


def test_pad_captions_is_the_releases():
    assert retrieval_formats.pad_captions(["a", "b"], 5) == ["a", "b", "a", "b", "a"]
    assert retrieval_formats.pad_captions(list("abcdefg"), 5) == list("abcde")
    assert retrieval_formats.pad_captions(["a"], None) == ["a"]
    assert retrieval_formats.pad_captions([], 5) == []


def write_karpathy(root: str, images, captions) -> str:
    """Images 0, 3, 6, ... in the test split (some under a filepath), the others in train;
    returns the JSON's path."""
    entries = []
    os.makedirs(os.path.join(root, "val2014"))
    for i, (image, caps) in enumerate(zip(images, captions, strict=True)):
        filepath = "val2014" if i % 2 else ""
        with open(os.path.join(root, filepath, f"img{i}.png"), "wb") as f:
            f.write(image)
        entry = {"filename": f"img{i}.png", "split": "test" if i % 3 == 0 else "train",
                 "sentences": [{"raw": c, "tokens": c.split()} for c in caps], "imgid": i}
        if filepath:
            entry["filepath"] = filepath
        entries.append(entry)
    entries.append({"filename": "missing.png", "split": "test", "sentences": [{"raw": "x"}]})
    path = os.path.join(root, "dataset_coco.json")
    with open(path, "w") as f:
        json.dump({"images": entries, "dataset": "coco"}, f)
    return path


@pytest.mark.parametrize("ties", ["rank", "topk"])
def test_retrieval_karpathy_json(tmp_path, ties):
    images, captions, embedder, image_vectors = karpathy_case(np.random.default_rng(8), 30)
    annotations = write_karpathy(str(tmp_path), images, captions)
    test = list(range(0, 30, 3))
    got = retrieval_formats.evaluate_karpathy(embedder, str(tmp_path), annotations, ties=ties)
    want = release_padded_recalls(embedder, image_vectors, [images[i] for i in test],
                                  [captions[i] for i in test], ties)
    assert {k: got[k] for k in want} == pytest.approx(want, rel=0, abs=1e-12)
    assert 0 < want["i2t_r1"] < 1 and 0 < want["t2i_r1"] < 1
    assert (got["num_images"], got["num_texts"], got["num_skipped"]) == (10.0, 50.0, 1.0)
    every = retrieval_formats.evaluate_karpathy(embedder, str(tmp_path), annotations,
                                                captions_per_image=None, max_examples=4)
    assert every["num_texts"] == sum(len(captions[i]) for i in test[:4])


def test_retrieval_karpathy_errors(tmp_path):
    embedder = PlantedEmbedder({}, {}, 2)
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "val",
                                            "sentences": []}]}))
    with pytest.raises(UserError, match=r"no images of split 'test'; it has \['val'\]"):
        retrieval_formats.evaluate_karpathy(embedder, str(tmp_path), str(path))
    path.write_text("{not json")
    with pytest.raises(UserError, match="cannot read Karpathy JSON"):
        retrieval_formats.evaluate_karpathy(embedder, str(tmp_path), str(path))
    with pytest.raises(UserError, match="captions_per_image"):
        retrieval_formats.evaluate_karpathy(embedder, str(tmp_path), str(path),
                                            captions_per_image=0)


def write_tars(root: str, split: str, shards: dict[str, list[tuple[str, dict[str, bytes]]]]):
    os.makedirs(os.path.join(root, split), exist_ok=True)
    for name, samples in shards.items():
        with tarfile.open(os.path.join(root, split, name), "w") as tar:
            for key, files in samples:
                for ext, data in files.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def test_retrieval_webdataset_tars(tmp_path):
    images, captions, embedder, image_vectors = karpathy_case(np.random.default_rng(9), 12)
    samples = [(f"{i:04d}", {"jpg" if i % 2 else "webp": img,
                             "txt": ("\n".join(f"  {c} " for c in caps) + "\n\n").encode()})
               for i, (img, caps) in enumerate(zip(images, captions, strict=True))]
    junk = [("no_txt", {"jpg": png(799)}), ("corrupt", {"jpg": b"garbage", "txt": b"x"})]
    # Natural order: 2.tar before 10.tar, so the samples stay in order 0..11.
    write_tars(str(tmp_path), "test", {"2.tar": samples[:5] + junk, "10.tar": samples[5:]})
    got = retrieval_formats.evaluate_wds(embedder, str(tmp_path))
    want = release_padded_recalls(embedder, image_vectors, images, captions, "rank")
    assert {k: got[k] for k in want} == pytest.approx(want, rel=0, abs=1e-12)
    assert (got["num_images"], got["num_texts"], got["num_skipped"]) == (12.0, 60.0, 2.0)
    first = retrieval_formats.evaluate_wds(embedder, str(tmp_path), max_examples=7)
    assert (first["num_images"], first["num_skipped"]) == (5.0, 2.0)  # 5 samples, the junk


def test_retrieval_formats_through_the_registry_and_command_line(tmp_path):
    images, captions, embedder, _ = karpathy_case(np.random.default_rng(10), 9)
    annotations = write_karpathy(str(tmp_path), images, captions)
    config = evaluate.eval_config([f"retrieval_karpathy:{tmp_path}", f"annotations={annotations}",
                                   "captions_per_image=none", "ties=topk", "name=coco"])
    assert config["captions_per_image"] is None
    got = evaluators.run_evaluators([config], embedder)
    direct = retrieval_formats.evaluate_karpathy(embedder, str(tmp_path), annotations,
                                                 captions_per_image=None, ties="topk")
    assert got == {f"coco/{k}": v for k, v in direct.items()}
    with pytest.raises(UserError, match=r"missing keys \['annotations'\]"):
        evaluators.check_config({"type": "retrieval_karpathy", "data_dir": str(tmp_path)})
    with pytest.raises(UserError, match="unknown keys"):
        evaluators.check_config({"type": "rclip_retrieval", "data_dir": str(tmp_path),
                                 "caption_field": "gt"})
