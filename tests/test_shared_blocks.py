"""Tests of the reusable worker -> trainer shared-memory blocks.

    python -m pytest tests/test_shared_blocks.py
"""

from __future__ import annotations

import gc
import multiprocessing
import os

import numpy as np
import pytest
from grain.multiprocessing import SharedMemoryArray

from reasonclip_jax.data import shared_blocks

SHAPE = (4, 8, 8, 3)


def shm_exists(name: str) -> bool:
    return os.path.exists(os.path.join("/dev/shm", name.lstrip("/")))


@pytest.fixture
def blocks():
    pool = shared_blocks.WorkerBlocks(max_blocks=2)
    yield pool
    shared_blocks._unlink_all(pool._blocks)


def test_a_block_comes_back_once_its_array_and_views_are_gone(blocks):
    reader = shared_blocks.BlockReader()
    ref, out = blocks.take(SHAPE, np.uint8)
    out[...] = 7
    array = reader.open(ref)
    assert type(array) is np.ndarray and array.shape == SHAPE and (array == 7).all()
    assert not shm_exists(ref.name)  # the trainer unlinked the name once it had mapped it
    view = array[1:3]
    del array
    gc.collect()
    second, _ = blocks.take(SHAPE, np.uint8)
    assert second.name != ref.name  # the view still holds the first block
    del view
    gc.collect()
    third, out = blocks.take(SHAPE, np.uint8)
    assert third.name == ref.name and third.index == ref.index  # returned, reused
    assert blocks.num_blocks == 2 and blocks.fallbacks == 0
    reader.close()


def test_all_blocks_out_falls_back_to_fresh_grain_blocks(blocks):
    reader = shared_blocks.BlockReader()
    held = []
    for value in range(2):
        ref, out = blocks.take(SHAPE, np.float32)
        out[...] = value
        held.append(reader.open(ref))
    ref, out = blocks.take(SHAPE, np.float32)
    assert ref is None and isinstance(out, SharedMemoryArray) and blocks.fallbacks == 1
    out.unlink_on_del()
    del out
    assert [float(a.mean()) for a in held] == [0.0, 1.0]  # held arrays were never reused
    reader.close()


def test_blocks_are_kept_by_size(blocks):
    reader = shared_blocks.BlockReader()
    ref, _ = blocks.take(SHAPE, np.uint8)
    reader.open(ref)  # dropped at once: back in the pool
    gc.collect()
    other, _ = blocks.take(SHAPE, np.float32)  # 4x the bytes: needs its own block
    assert other.name != ref.name
    reader.close()


def test_release_to_a_closed_worker_is_ignored(blocks):
    reader = shared_blocks.BlockReader()
    ref, _ = blocks.take(SHAPE, np.uint8)
    array = reader.open(ref)
    blocks._listener.close()
    for connection, _ in blocks._connections:
        connection.close()
    blocks._collect_releases = lambda: None
    del array  # the release finds no worker: no error, nothing returned
    gc.collect()
    reader.close()


def _worker(queue: multiprocessing.Queue, count: int) -> None:
    pool = shared_blocks.WorkerBlocks(max_blocks=4)
    for value in range(count):
        ref, out = pool.take(SHAPE, np.int32)
        if ref is None:
            out.unlink_on_del()
            queue.put(("fallback", value))
            continue
        out[...] = value
        queue.put((ref, value))
    queue.put(("done", pool.num_blocks))
    queue.close()
    queue.join_thread()


def test_across_processes_blocks_are_reused_and_data_intact():
    ctx = multiprocessing.get_context("spawn")
    # One batch in the queue, one being filled, one being read, one held: 4 blocks.
    queue = ctx.Queue(maxsize=1)
    process = ctx.Process(target=_worker, args=(queue, 40))
    process.start()
    reader = shared_blocks.BlockReader()
    names, values, held = set(), [], None
    while True:
        ref, value = queue.get(timeout=60)
        if ref == "done":
            num_blocks = value
            break
        assert ref != "fallback", "the worker ran out of blocks"
        names.add(ref.name)
        array = reader.open(ref)
        values.append(int(array[0, 0, 0, 0]))
        assert (array == value).all()
        if value % 10 == 0:  # hold one for 10 batches: its block must not be overwritten
            if held is not None:
                assert (held[1] == held[0]).all()
            held = (value, array)
        del array
    process.join(timeout=60)
    assert values == list(range(40))
    assert len(names) == num_blocks <= 4
    reader.close()


def test_one_pool_per_process_and_a_forked_child_makes_its_own(monkeypatch):
    monkeypatch.setattr(shared_blocks, "_worker_blocks", None)
    first = shared_blocks.worker_blocks(3)
    assert first is not None and shared_blocks.worker_blocks(5) is first
    monkeypatch.setattr(first, "pid", first.pid + 1)  # as a child sees its parent's pool
    second = shared_blocks.worker_blocks(3)
    assert second is not first and second.pid == os.getpid()
