"""Tests of the reusable worker -> trainer shared-memory blocks.

    python -m pytest tests/test_shared_blocks.py
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import queue as queue_module
import sys
import time

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
    assert other.index == 1 and blocks.num_blocks == 2
    # The released uint8-sized block is free: the next uint8 batch gets it back, so the
    # pool stays at its bound of 2 (a pool that never reused would fall back here).
    again, _ = blocks.take(SHAPE, np.uint8)
    assert again is not None and (again.name, again.index) == (ref.name, ref.index)
    assert blocks.num_blocks == 2 and blocks.fallbacks == 0
    reader.close()


def test_release_to_a_closed_worker_is_ignored(blocks, monkeypatch):
    # A release runs in a weakref finaliser: an exception there would only reach this hook.
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    reader = shared_blocks.BlockReader()
    ref, _ = blocks.take(SHAPE, np.uint8)
    array = reader.open(ref)
    assert reader._connections[ref.address] is not None  # connected to the live worker
    blocks._listener.close()
    for connection, _ in blocks._connections:
        connection.close()
    blocks._collect_releases = lambda: None
    del array  # the release finds no worker: no error, nothing returned
    gc.collect()
    assert not unraisable, [u.exc_value for u in unraisable]
    assert reader._connections[ref.address] is None  # the reader gave up on that worker
    assert blocks._free == set()
    again = reader.open(ref)  # still mapped; its release now returns without sending
    del again
    gc.collect()
    assert not unraisable, [u.exc_value for u in unraisable]
    assert reader._connections[ref.address] is None
    reader.close()


def _worker(queue: multiprocessing.Queue, count: int, finished) -> None:
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
    # Exiting unlinks the names of blocks the trainer has not mapped yet: wait for it to
    # have read everything (the last batch may still be on its way to `open`).
    finished.wait(60)


def _failing_worker(queue: multiprocessing.Queue, count: int, finished) -> None:
    """Fails while filling its first batch (before sending: a block the trainer has not
    mapped yet is unlinked when its worker exits, so the trainer could not open it)."""
    pool = shared_blocks.WorkerBlocks(max_blocks=4)
    pool.take(SHAPE, np.int32)
    raise RuntimeError("the worker broke (as this test means it to)")


def _worker_exiting_3(queue: multiprocessing.Queue, count: int, finished) -> None:
    """Sends everything, then exits with status 3."""
    _worker(queue, count, finished)
    sys.exit(3)


def receive(queue: multiprocessing.Queue, process: multiprocessing.Process, timeout: float = 60):
    """The worker's next message; fails the test at once if the worker died without one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return queue.get(timeout=0.5)
        except queue_module.Empty:
            if not process.is_alive():
                try:  # it may have flushed its last message just before exiting
                    return queue.get(timeout=1)
                except queue_module.Empty:
                    pytest.fail(f"the worker exited with code {process.exitcode} mid-stream")
    pytest.fail(f"no message from the worker in {timeout} s")


def consume(target, count: int) -> tuple[set[str], list[int], int]:
    """Runs `target(queue, count, finished)` in a spawned worker and reads its batches as
    the trainer does: (block names seen, values read, the worker's final pool size). The
    worker must exit with status 0."""
    ctx = multiprocessing.get_context("spawn")
    # One batch in the queue, one being filled, one being read, one held: 4 blocks.
    queue, finished = ctx.Queue(maxsize=1), ctx.Event()
    process = ctx.Process(target=target, args=(queue, count, finished))
    process.start()
    reader = shared_blocks.BlockReader()
    names, values, held = set(), [], None
    try:
        while True:
            ref, value = receive(queue, process)
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
        finished.set()
        process.join(timeout=60)
        if process.exitcode != 0:
            pytest.fail(f"the worker exited with code {process.exitcode}")
    finally:
        if process.is_alive():
            process.terminate()
            process.join(timeout=10)
        reader.close()
    return names, values, num_blocks


def test_across_processes_blocks_are_reused_and_data_intact():
    names, values, num_blocks = consume(_worker, 40)
    assert values == list(range(40))
    assert len(names) == num_blocks <= 4


@pytest.mark.parametrize(
    ("target", "message"),
    [(_failing_worker, "exited with code 1 mid-stream"), (_worker_exiting_3, "exited with code 3")],
)
def test_a_failing_worker_fails_the_consumer(target, message):
    with pytest.raises(pytest.fail.Exception, match=message):
        consume(target, 5)


def test_one_pool_per_process_and_a_forked_child_makes_its_own(monkeypatch):
    monkeypatch.setattr(shared_blocks, "_worker_blocks", None)
    first = shared_blocks.worker_blocks(3)
    assert first is not None and shared_blocks.worker_blocks(5) is first
    monkeypatch.setattr(first, "pid", first.pid + 1)  # as a child sees its parent's pool
    second = shared_blocks.worker_blocks(3)
    assert second is not first and second.pid == os.getpid()
