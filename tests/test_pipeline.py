"""Tests of the grain input pipelines on tiny shard directories (CPU, 8 simulated devices).

    python -m pytest tests/test_input_pipeline.py

Captions are short ids ("d7_2": record 7's descriptive caption 2) and a stand-in tokenizer
writes their characters as token ids, so every test can read back which caption a row got.
"""

from __future__ import annotations

import collections
import io
import json
import os

import grain  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import pytest  # noqa: E402
from array_record.python import array_record_module  # noqa: E402

from reasonclip_jax.data import pipeline as ip  # noqa: E402
from reasonclip_jax.data import records, transforms, views  # noqa: E402
from reasonclip_jax.errors import UserError  # noqa: E402

LENGTH = 8  # context length of the stand-in tokenizer
SIZE = 16  # image side


def char_tokenize(texts, context_length):
    """Stand-in tokenizer: character codes, zero padded."""
    out = np.zeros((len(texts), context_length), np.int32)
    for row, text in enumerate(texts):
        codes = [ord(c) for c in text[:context_length]]
        out[row, : len(codes)] = codes
    return out


def detokenize(tokens: np.ndarray) -> str:
    return "".join(chr(c) for c in tokens if c)


def _jpeg(seed: int, width: int = 24, height: int = 20) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_record(i: int, tag: str = "") -> records.Record:
    labels = (i % 5, (i + 1) % 5, (i + 3) % 5)
    return records.Record(
        id=f"{tag}{i}", source="test", key=str(i), image=_jpeg(i), width=24, height=20,
        desc=tuple(f"{tag}d{i}_{j}" for j in range(3)),
        reason=tuple(f"{tag}r{i}_{j}" for j in range(3)),
        cat_caption=f"{tag}c{i}", cat_label=labels[i % 3], image_labels=labels,
    )


def write_shard_dir(path, payloads: list[bytes], num_shards: int = 2, split: str = "train") -> str:
    os.makedirs(path, exist_ok=True)
    bounds = np.linspace(0, len(payloads), num_shards + 1).astype(int)
    for shard in range(num_shards):  # contiguous shards: record_index i is payload i
        name = os.path.join(path, records.shard_name(split, shard, num_shards))
        writer = array_record_module.ArrayRecordWriter(name, "group_size:1")
        for payload in payloads[bounds[shard] : bounds[shard + 1]]:
            writer.write(payload)
        writer.close()
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump({"format_version": records.FORMAT_VERSION}, f)
    return str(path)


def shard_dir(tmp_path_factory, name: str, n: int, tag: str = "", corrupt=()) -> str:
    payloads = [records.encode_record(make_record(i, tag)) for i in range(n)]
    for i in corrupt:
        if i % 2:  # bad magic
            payloads[i] = b"XXXX" + payloads[i][4:]
        else:  # valid header, truncated JPEG
            payloads[i] = payloads[i][: len(payloads[i]) - len(make_record(i, tag).image) // 2]
    return write_shard_dir(tmp_path_factory.mktemp(name), payloads)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    return shard_dir(tmp_path_factory, "small", 24)


@pytest.fixture(scope="module")
def corrupt_dir(tmp_path_factory):
    return shard_dir(tmp_path_factory, "corrupt", 12, corrupt=(3, 8))


def config(data_dirs, **overrides):
    cfg = ip.get_config()
    cfg.update(
        dict(data_dirs=list(data_dirs), batch_size=4, image_size=SIZE,
             context_length=LENGTH, shuffle_seed=0, worker_count=0, read_threads=1,
             read_buffer_size=8, prefetch=0)
    )
    cfg.update(overrides)
    return cfg


def caption_view(cfg) -> views.View:
    return views.CaptionView(tuple(cfg.text_fields))


def take(cfg, num_batches: int, state=None, view=None, **kwargs):
    """The next `num_batches` batches (plain numpy) of `view` (a `CaptionView` of the config's
    text_fields by default) and the state after them."""
    view = view or caption_view(cfg)
    it = ip.make_train_iterator(cfg, view, tokenize_fn=char_tokenize, **kwargs)
    try:
        if state is not None:
            it.set_state(state)
        batches = [{k: np.array(v) for k, v in next(it).items()} for _ in range(num_batches)]
        return batches, it.get_state()
    finally:
        it.close()


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def texts(batch, key="text") -> list[str]:
    return [detokenize(row) for row in batch[key]]


# ---------------------------------------------------------------------------------------------


def test_batch_keys_shapes_dtypes(small_dir):
    (batch,), _ = take(config([small_dir]), 1)
    assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8
    assert batch["text"].shape == (4, LENGTH) and batch["text"].dtype == np.int32
    assert batch["record_index"].dtype == np.int64
    assert batch["skipped_records"].shape == () and batch["skipped_records"] == 0
    for row, text in zip(batch["record_index"], texts(batch), strict=True):
        assert text.startswith(f"d{row}_")  # the caption belongs to the image's record


@pytest.mark.parametrize("workers", [0, 2])
def test_float32_images_are_the_normalised_uint8_images(small_dir, workers):
    raw, _ = take(config([small_dir], worker_count=workers), 3)
    normalised, _ = take(config([small_dir], worker_count=workers, image_dtype="float32"), 3)
    for r, n in zip(raw, normalised, strict=True):
        assert n["image"].dtype == np.float32
        np.testing.assert_array_equal(n["image"], transforms.normalize(r["image"]))
        for key in r.keys() - {"image"}:
            np.testing.assert_array_equal(n[key], r[key], err_msg=key)


def test_unknown_image_dtype_is_a_user_error(small_dir):
    with pytest.raises(UserError, match="image_dtype 'float16'"):
        take(config([small_dir], image_dtype="float16"), 1)


def test_deterministic_by_seed_and_seeds_differ(small_dir):
    a, _ = take(config([small_dir]), 3)
    b, _ = take(config([small_dir]), 3)
    c, _ = take(config([small_dir], shuffle_seed=1), 3)
    assert_batches_equal(a, b)
    assert not np.array_equal(a[0]["record_index"], c[0]["record_index"])


def test_augmentation_deterministic_and_varies_by_epoch(small_dir):
    # One process, batch = dataset: batch e is epoch e, sorted by record for comparison.
    cfg = config([small_dir], batch_size=24, rrc_scale=(0.3, 0.6))
    batches, _ = take(cfg, 2)
    again, _ = take(cfg, 2)
    assert_batches_equal(batches, again)
    first, second = (b["image"][np.argsort(b["record_index"])] for b in batches)
    assert not np.array_equal(first, second)
    centre, _ = take(config([small_dir], batch_size=24, augment="center_crop"), 2)
    first, second = (b["image"][np.argsort(b["record_index"])] for b in centre)
    np.testing.assert_array_equal(first, second)


def test_stage0_captions_rotate_over_epochs(small_dir):
    batches, _ = take(config([small_dir], batch_size=24), 3)
    seen = collections.defaultdict(set)
    for batch in batches:
        assert sorted(batch["record_index"]) == list(range(24))
        for r, text in zip(batch["record_index"], texts(batch), strict=True):
            seen[int(r)].add(text)
    assert all(seen[r] == {f"d{r}_{j}" for j in range(3)} for r in range(24))


def test_stage0_reasoning_pool(small_dir):
    (batch,), _ = take(config([small_dir], batch_size=24, text_fields=("reason", "cat_caption")), 1)
    for r, text in zip(batch["record_index"], texts(batch), strict=True):
        assert text in {f"r{r}_0", f"r{r}_1", f"r{r}_2", f"c{r}"}


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_partition_each_epoch(small_dir, process_count):
    cfg = config([small_dir], batch_size=8)  # 24 records: 3 global batches per epoch
    per_epoch = [[], []]
    for p in range(process_count):
        batches, _ = take(cfg, 6, process_index=p, process_count=process_count)
        assert all(b["image"].shape[0] == 8 // process_count for b in batches)
        for i, b in enumerate(batches):
            per_epoch[i // 3].extend(b["record_index"].tolist())
    for epoch in per_epoch:
        assert sorted(epoch) == list(range(24))


def test_resume_in_process(small_dir):
    cfg = config([small_dir], read_threads=2, prefetch=2)
    full, _ = take(cfg, 7)
    _, state = take(cfg, 3)
    state = json.loads(json.dumps(state))  # what a checkpoint stores
    rest, _ = take(cfg, 4, state=state)
    assert_batches_equal(full[3:], rest)


def test_resume_with_workers_and_skips(corrupt_dir):
    # 2 workers and corrupt records: the running skip count covers both workers and is
    # restored with the position.
    cfg = config([corrupt_dir], batch_size=2, worker_count=2, prefetch=1)
    it = ip.make_train_iterator(cfg, caption_view(cfg), tokenize_fn=char_tokenize)
    full, state = [], None
    for _ in range(12):  # 24 good examples: each worker is past its share of epoch 0
        full.append({k: np.array(v) for k, v in next(it).items()})
        if len(full) == 4:
            state = json.loads(json.dumps(it.get_state()))
    it.close()
    seen = set(np.concatenate([b["record_index"] for b in full]).tolist())
    assert seen == {i for i in range(12) if i not in (3, 8)}
    assert full[-1]["skipped_records"] >= 2
    rest, _ = take(cfg, 8, state=state)
    assert_batches_equal(full[4:], rest)


def test_workers_keep_each_epoch_exactly_once(small_dir):
    # Worker w batches positions w, w + 2, ... of the process's stream; 24 = 2 workers x 3
    # batches x 4 rows, so batches 0-5 are epoch 0 and 6-11 epoch 1.
    batches, _ = take(config([small_dir], worker_count=2), 12)
    for epoch in (batches[:6], batches[6:]):
        assert sorted(np.concatenate([b["record_index"] for b in epoch])) == list(range(24))


def test_batches_held_by_the_trainer_are_never_overwritten(small_dir):
    # Workers reuse their shared-memory blocks once the trainer drops a batch; a trainer
    # holding more batches than a worker has blocks must still see each batch as made.
    cfg = config([small_dir], worker_count=1, worker_buffer_size=1, prefetch=1)
    it = ip.make_train_iterator(cfg, caption_view(cfg), tokenize_fn=char_tokenize)
    held = [next(it) for _ in range(12)]  # the arrays themselves, no copies
    it.close()
    assert all(isinstance(b["image"], np.ndarray) for b in held)  # opened, not BlockRefs
    expected, _ = take(config([small_dir], worker_count=1), 12)
    assert_batches_equal([{k: np.array(v) for k, v in b.items()} for b in held], expected)


def test_corrupt_records_skipped_and_counted(corrupt_dir):
    cfg = config([corrupt_dir], batch_size=2, num_epochs=1)
    it = ip.make_train_iterator(cfg, caption_view(cfg), tokenize_fn=char_tokenize)
    batches = list(it)
    it.close()
    assert len(batches) == 5  # 10 good records
    seen = np.concatenate([b["record_index"] for b in batches]).tolist()
    assert sorted(seen) == [i for i in range(12) if i not in (3, 8)]
    counts = [int(b["skipped_records"]) for b in batches]
    assert counts == sorted(counts) and counts[-1] == 2


def test_stage1_pairs_cover_all_combinations_once_per_epoch(tmp_path_factory):
    directory = shard_dir(tmp_path_factory, "stage1", 6)
    cfg = config([directory], batch_size=6)
    for epoch in range(2):
        batches, _ = take(cfg, 9 * (epoch + 1), view=views.CaptionPairsView())
        pairs = collections.Counter()
        for b in batches[9 * epoch :]:
            for r, d, t in zip(b["record_index"], texts(b, "text_desc"), texts(b, "text_reason"),
                               strict=True):
                assert d.startswith(f"d{r}_") and t.startswith(f"r{r}_")
                pairs[(int(r), d[-1], t[-1])] += 1
        expected = {(r, str(i), str(j)) for r in range(6) for i in range(3) for j in range(3)}
        assert set(pairs) == expected and set(pairs.values()) == {1}


def test_stage2_labels(small_dir):
    (batch,), _ = take(config([small_dir], batch_size=24), 1, view=views.CategoryCaptionView())
    assert batch["cat_label"].dtype == np.int32 and batch["image_labels"].dtype == np.float32
    for row in range(24):
        record = make_record(int(batch["record_index"][row]))
        assert detokenize(batch["text"][row]) == record.cat_caption
        assert batch["cat_label"][row] == record.cat_label
        expected = np.zeros(5, np.float32)
        expected[list(record.image_labels)] = 1
        np.testing.assert_array_equal(batch["image_labels"][row], expected)
        assert batch["image_labels"][row].sum() == 3


def test_mixture_weights_and_determinism(small_dir, tmp_path_factory):
    other = shard_dir(tmp_path_factory, "other", 12, tag="o")
    cfg = config([small_dir, other], weights=[0.75, 0.25], batch_size=20)
    batches, _ = take(cfg, 10)
    again, _ = take(cfg, 10)
    assert_batches_equal(batches, again)
    index = np.concatenate([b["record_index"] for b in batches])
    from_small = index < 24  # record_index counts the first source's records first
    assert abs(from_small.mean() - 0.75) < 0.02
    text = [t for b in batches for t in texts(b)]
    assert all(t.startswith("o") == (not s) for t, s in zip(text, from_small, strict=True))
    # Each source still meets every record once per epoch of its own.
    assert sorted(index[from_small][:24]) == list(range(24))
    assert sorted(index[~from_small][:12]) == list(range(24, 36))


def test_default_weights_proportional_to_size(small_dir, tmp_path_factory):
    other = shard_dir(tmp_path_factory, "other_default", 12, tag="o")
    batches, _ = take(config([small_dir, other], batch_size=36), 2)
    for b in batches:  # 24 + 12 records: one combined epoch per batch
        assert sorted(b["record_index"]) == list(range(36))


@pytest.mark.parametrize(
    "process_count,workers,image_dtype", [(1, 0, "uint8"), (2, 0, "uint8"), (2, 1, "float32")]
)
def test_eval_padding_and_masks(corrupt_dir, process_count, workers, image_dtype):
    # 12 records -> 2 batches, 4 rows of padding, zero also when normalised
    # (2 read threads: a worker builds batches in two threads at once)
    cfg = config([corrupt_dir], batch_size=8, worker_count=workers, image_dtype=image_dtype,
                 read_threads=2)
    assert ip.num_eval_batches(cfg, caption_view(cfg)) == 2
    seen, skipped = [], 0
    for p in range(process_count):
        it = ip.make_eval_iterator(cfg, caption_view(cfg), process_index=p,
                                   process_count=process_count,
                                   tokenize_fn=char_tokenize)
        batches = list(it)
        it.close()
        assert len(batches) == 2
        for b in batches:
            assert b["mask"].dtype == bool and b["mask"].shape == (8 // process_count,)
            pad = ~b["mask"]
            assert (b["record_index"][pad] == -1).all()
            assert not b["image"][pad].any() and not b["text"][pad].any()
            seen.extend(b["record_index"][b["mask"]].tolist())
            for r, text in zip(b["record_index"], texts(b), strict=True):
                assert text.startswith(f"d{r}_") or r == -1
        skipped += int(batches[-1]["skipped_records"])
    assert sorted(seen) == [i for i in range(12) if i not in (3, 8)]
    assert skipped == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_is_in_order_and_unaugmented(small_dir, workers):
    cfg = config([small_dir], batch_size=8, worker_count=workers, image_dtype="float32")
    it = ip.make_eval_iterator(cfg, views.CategoryCaptionView(), process_index=0,
                               process_count=1, tokenize_fn=char_tokenize)
    batches = [{k: np.array(v) for k, v in b.items()} for b in it]
    it.close()
    assert np.concatenate([b["record_index"] for b in batches]).tolist() == list(range(24))
    assert all(b["mask"].all() for b in batches)
    image = transforms.eval_transform(
        transforms.decode_image(make_record(5).image), SIZE
    )
    np.testing.assert_array_equal(batches[0]["image"][5], image)


def test_orbax_checkpoint_roundtrip(small_dir, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    cfg = config([small_dir], prefetch=1)
    full, _ = take(cfg, 5)
    it = ip.make_train_iterator(cfg, caption_view(cfg), tokenize_fn=char_tokenize)
    for _ in range(2):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
    it.close()
    fresh = ip.make_train_iterator(cfg, caption_view(cfg), tokenize_fn=char_tokenize)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    rest = [{k: np.array(v) for k, v in next(fresh).items()} for _ in range(3)]
    fresh.close()
    assert_batches_equal(full[2:], rest)


def test_global_batch_sharding(small_dir):
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    (batch,), _ = take(config([small_dir], batch_size=8), 1, view=views.CategoryCaptionView())
    arrays = ip.make_global_batch(batch, mesh)
    expected = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    for key, value in batch.items():
        if key == "skipped_records":
            assert arrays[key] == value
            continue
        assert isinstance(arrays[key], jax.Array)
        assert arrays[key].sharding.is_equivalent_to(expected, value.ndim)
        assert arrays[key].shape == value.shape
        assert len(arrays[key].addressable_shards) == 8
        assert arrays[key].addressable_shards[0].data.shape[0] == 2  # 8 rows over 4 groups
        np.testing.assert_array_equal(np.asarray(arrays[key]), value)


def test_user_errors(small_dir, tmp_path):
    with pytest.raises(UserError, match="divisible"):
        take(config([small_dir], batch_size=6), 1, process_index=0, process_count=4)
    with pytest.raises(UserError, match="matches nothing"):
        take(config([str(tmp_path / "nope*")]), 1)
    with pytest.raises(UserError, match="weight"):
        take(config([small_dir, small_dir], weights=[1.0]), 1)
    with pytest.raises(UserError, match="shuffle_seed"):
        take(config([small_dir], shuffle_seed=-1), 1)
    text_only = write_shard_dir(
        tmp_path / "text_only",
        [records.encode_record(records.Record(id="t", source="s", key="k", image=b""))],
    )
    with pytest.raises(UserError, match="cannot use its records"):
        take(config([text_only]), 1)


def test_glob_of_shard_files(small_dir):
    # One shard file of two: half the records, same manifest check.
    cfg = config([os.path.join(small_dir, "train-00000-of-*.array_record")], batch_size=12)
    (batch,), _ = take(cfg, 1)
    assert sorted(batch["record_index"]) == list(range(12))


# ---------------------------------------------------------------------------------------------
# Hard-negative groups (input.group_size).

GROUP = 4


@pytest.fixture(scope="module")
def grouped_dir(tmp_path_factory):
    """24 records in groups of 4 (records 4k..4k+3), 2 shards of 12, as the preprocessing
    writes them with --scene-group-size 4."""
    path = shard_dir(tmp_path_factory, "grouped", 24)
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump({"format_version": records.FORMAT_VERSION, "group_size": GROUP}, f)
    return path


def _assert_whole_groups(batch):
    """Each run of GROUP rows is the GROUP records of one group."""
    blocks = batch["record_index"].reshape(-1, GROUP)
    assert (np.sort(blocks, axis=1) == blocks[:, :1] // GROUP * GROUP + np.arange(GROUP)).all()


@pytest.mark.parametrize("process_count,workers,batch", [(1, 0, 8), (2, 0, 8), (1, 2, 12)])
def test_groups_stay_in_one_batch_and_epochs_read_each_example_once(
        grouped_dir, process_count, workers, batch):
    # With 2 workers, 12 = 3 groups: each worker's share of an epoch is one whole batch.
    cfg = config([grouped_dir], batch_size=batch, group_size=GROUP, worker_count=workers)
    per_epoch, batches_per_epoch = [[], []], 24 // batch
    for p in range(process_count):
        batches, _ = take(cfg, 2 * batches_per_epoch, process_index=p,
                          process_count=process_count)
        for i, b in enumerate(batches):
            _assert_whole_groups(b)
            per_epoch[i // batches_per_epoch].extend(b["record_index"].tolist())
    for epoch in per_epoch:
        assert sorted(epoch) == list(range(24))


def test_groups_give_one_caption_variant_per_unit(grouped_dir):
    # Stage 1: 9 (desc, reason) variants per record; a unit is (group, variant), so a group's
    # records come with the same pair, and each epoch meets every pair of every record once.
    cfg = config([grouped_dir], batch_size=8, group_size=GROUP)
    batches, _ = take(cfg, 27, view=views.CaptionPairsView())
    pairs = []
    for b in batches:
        _assert_whole_groups(b)
        desc, reason = texts(b, "text_desc"), texts(b, "text_reason")
        for rows in np.arange(8).reshape(-1, GROUP):
            assert len({(desc[r][-1], reason[r][-1]) for r in rows}) == 1
        pairs += [(int(i), d, r) for i, d, r in zip(b["record_index"], desc, reason,
                                                     strict=True)]
    assert len(set(pairs)) == 24 * 9


def test_resume_with_groups(grouped_dir):
    cfg = config([grouped_dir], batch_size=8, group_size=GROUP, read_threads=2, prefetch=2)
    full, _ = take(cfg, 7)
    _, state = take(cfg, 3)
    rest, _ = take(cfg, 4, state=json.loads(json.dumps(state)))
    assert_batches_equal(full[3:], rest)
    # start_position (a resume with another process count) skips whole groups
    later, _ = take(cfg, 4, start_position=3 * 8)
    assert_batches_equal(full[3:], later)


def test_group_errors(grouped_dir, small_dir):
    with pytest.raises(UserError, match="does not divide the per-process batch 6"):
        take(config([grouped_dir], batch_size=6, group_size=GROUP), 1)
    with pytest.raises(UserError, match="written in groups of 1, but input.group_size is 4"):
        take(config([small_dir], batch_size=8, group_size=GROUP), 1)
    with pytest.raises(UserError, match="written in groups of 4, but input.group_size is 2"):
        take(config([grouped_dir], batch_size=8, group_size=2), 1)
