"""Shared-memory blocks that grain workers reuse to hand batches to the trainer process.

Grain sends each worker batch to the trainer in a new shared-memory block, whose pages the
kernel allocates and zeroes on every batch: about 0.1 ms per 224 px image in some virtual
machines, a few percent of the work of decoding it. Here each worker keeps its blocks and
writes the next batch into one the trainer process has finished with:

    worker   ref, out = worker_blocks(max_blocks).take(shape, dtype)   # free block or new
             out[...] = pixels; the batch carries `ref` (a small picklable BlockRef)
    trainer  array = reader.open(ref)   # a numpy view of the block, no copy
             once `array` and every view of it are gone, the block goes back to its worker

A block goes back as its 4-byte number over a Unix stream socket in Linux's abstract
namespace (nothing is left on disk if a process dies). The send and the receive are system
calls that order the trainer's last reads of a block before the worker's next writes.
`take` returns no ref, and a plain grain `SharedMemoryArray` that grain transports as
before, when the socket is unavailable (not Linux) or all `max_blocks` blocks are out: a
consumer that holds batches for long costs speed, never correctness.

The trainer unlinks a block's name as soon as it has mapped it; the memory lives until both
processes unmap it. Names the trainer never mapped (a worker stopped with batches still
queued) are unlinked by the worker when it exits, or by multiprocessing's resource tracker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import mmap
import multiprocessing.util
import os
import socket
import struct
import sys
import threading
import uuid
import weakref
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import grain
import numpy as np
from absl import logging
from grain.multiprocessing import SharedMemoryArray

_MESSAGE = struct.Struct("<I")  # a released block's number


@dataclasses.dataclass(frozen=True)
class BlockRef:
    """Stands for a worker's block in a batch on its way to the trainer process."""

    name: str  # shared-memory name
    index: int  # the block's number in its worker's pool
    address: str  # the worker's release socket, abstract namespace (without the leading NUL)
    shape: tuple[int, ...]
    dtype: str


class WorkerBlocks:
    """One worker process's blocks: hands out free ones, takes back released ones."""

    def __init__(self, max_blocks: int):
        self.max_blocks = max_blocks
        self.pid = os.getpid()
        self.address = f"reasonclip-blocks-{os.getpid()}-{uuid.uuid4().hex}"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind("\0" + self.address)
        self._listener.listen(8)
        self._listener.setblocking(False)
        self._connections: list[tuple[socket.socket, bytearray]] = []
        self._blocks: list[shared_memory.SharedMemory] = []
        self._free: set[int] = set()
        self.fallbacks = 0  # batches sent in fresh grain blocks because all were out
        self._lock = threading.Lock()  # eval batches are built in read threads
        multiprocessing.util.Finalize(self, _unlink_all, args=(self._blocks,), exitpriority=10)

    def take(self, shape: tuple[int, ...], dtype: Any) -> tuple[BlockRef | None, np.ndarray]:
        """A block for an array of `shape` and `dtype`: (ref, array to fill in place).

        Without a free block and with `max_blocks` out, (None, a fresh SharedMemoryArray).
        """
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        with self._lock:
            return self._take(tuple(shape), dtype, nbytes)

    def _take(
        self, shape: tuple[int, ...], dtype: np.dtype, nbytes: int
    ) -> tuple[BlockRef | None, np.ndarray]:
        self._collect_releases()
        index = next((i for i in self._free if self._blocks[i].size == nbytes), None)
        if index is None and len(self._blocks) < self.max_blocks:
            index = len(self._blocks)
            self._blocks.append(shared_memory.SharedMemory(create=True, size=nbytes))
        elif index is None:
            if not self.fallbacks:
                logging.warning("all %d shared-memory blocks of this worker are in use; "
                                "sending batches in fresh blocks", self.max_blocks)
            self.fallbacks += 1
            return None, SharedMemoryArray(shape, dtype)
        else:
            self._free.discard(index)
        block = self._blocks[index]
        ref = BlockRef(block.name, index, self.address, shape, dtype.str)
        return ref, np.ndarray(shape, dtype, buffer=block.buf)

    @property
    def num_blocks(self) -> int:
        return len(self._blocks)

    def _collect_releases(self) -> None:
        while True:  # new trainer connections (normally one)
            try:
                connection, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            connection.setblocking(False)
            self._connections.append((connection, bytearray()))
        for connection, pending in list(self._connections):
            while True:
                try:
                    data = connection.recv(4096)
                except (BlockingIOError, InterruptedError):
                    break
                if not data:  # the trainer side closed
                    self._connections.remove((connection, pending))
                    connection.close()
                    break
                pending += data
            whole = len(pending) - len(pending) % _MESSAGE.size
            for (index,) in _MESSAGE.iter_unpack(bytes(pending[:whole])):
                self._free.add(index)
            del pending[:whole]


def _unlink_all(blocks: list[shared_memory.SharedMemory]) -> None:
    for block in blocks:
        with contextlib.suppress(FileNotFoundError):  # the trainer mapped it: name gone
            block.unlink()


_worker_blocks: WorkerBlocks | None = None
_worker_blocks_lock = threading.Lock()
_unavailable = not sys.platform.startswith("linux")  # abstract sockets and /dev/shm


def worker_blocks(max_blocks: int) -> WorkerBlocks | None:
    """This process's `WorkerBlocks` (made on first use); None where they cannot work."""
    global _worker_blocks, _unavailable
    with _worker_blocks_lock:
        if _worker_blocks is not None and _worker_blocks.pid != os.getpid():
            _worker_blocks = None  # inherited by fork: the parent's, not ours
        if _worker_blocks is None and not _unavailable:
            try:
                _worker_blocks = WorkerBlocks(max_blocks)
            except OSError as e:
                logging.warning("reusable shared-memory blocks unavailable (%s)", e)
                _unavailable = True
        return _worker_blocks


class BlockReader:
    """Trainer side: opens `BlockRef`s as numpy arrays; returns blocks once they are dropped."""

    def __init__(self) -> None:
        self._mapped: dict[str, mmap.mmap] = {}
        self._connections: dict[str, socket.socket | None] = {}
        self._lock = threading.RLock()  # releases come from whichever thread drops an array

    def open(self, ref: BlockRef) -> np.ndarray:
        with self._lock:
            block = self._mapped.get(ref.name)
            if block is None:
                block = self._mapped[ref.name] = _map_and_unlink(ref.name)
            if ref.address not in self._connections:
                self._connections[ref.address] = _connect(ref.address)
        # The array keeps the mmap alive (its base): the memory outlives this reader.
        array = np.ndarray(ref.shape, np.dtype(ref.dtype), buffer=block)
        # Views of `array` keep it alive, so this runs when the last of them is gone.
        weakref.finalize(array, self._release, ref.address, ref.index).atexit = False
        return array

    def _release(self, address: str, index: int) -> None:
        with self._lock:
            connection = self._connections.get(address)
            if connection is None:
                return
            try:
                connection.sendall(_MESSAGE.pack(index))
            except OSError:  # the worker is gone
                connection.close()
                self._connections[address] = None

    def close(self) -> None:
        """Stops returning blocks; arrays still in use keep their memory until dropped."""
        with self._lock:
            for connection in self._connections.values():
                if connection is not None:
                    connection.close()
            self._connections = {address: None for address in self._connections}
            self._mapped.clear()


def _map_and_unlink(name: str) -> mmap.mmap:
    """Maps a worker's block and removes its name: the mapping keeps the memory.

    A plain mmap, not a `SharedMemory`, whose destructor would unmap memory that numpy
    arrays still point into.
    """
    path = os.path.join("/dev/shm", name)
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, 0)
    finally:
        os.close(fd)
        os.unlink(path)
        resource_tracker.unregister("/" + name, "shared_memory")  # the worker registered it


def _connect(address: str) -> socket.socket | None:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect("\0" + address)
    except OSError as e:  # the worker is gone: its blocks stay with it
        logging.warning("cannot return shared-memory blocks to worker %s: %s", address, e)
        connection.close()
        return None
    return connection


def open_refs(batch: dict[str, Any], reader: BlockReader) -> dict[str, Any]:
    """The batch with every `BlockRef` value opened as a numpy array."""
    return {k: reader.open(v) if isinstance(v, BlockRef) else v for k, v in batch.items()}


# ------------------------------------------------------------------------ grain iterators


class PassThroughStateIterator(grain.DatasetIterator):
    """An iterator whose state is its parent's (it maps whole parent elements)."""

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)


class OpenBlocksIterDataset(grain.IterDataset):
    """Trainer side of the workers: opens the batches' `BlockRef`s as numpy arrays.

    Each array's block goes back to its worker when the array and its views are dropped.
    """

    def __iter__(self) -> grain.DatasetIterator:
        return _OpenBlocksIterator(self._parent.__iter__())


class _OpenBlocksIterator(PassThroughStateIterator):
    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)
        self._reader = BlockReader()

    def __next__(self) -> dict[str, Any]:
        return open_refs(next(self._parent), self._reader)

    def close(self) -> None:
        self._reader.close()
        super().close()
