"""Throughput and CPU cost of the training input pipeline against a bare single-process loop.

Both read the same synthetic stage-1 shards (256 px JPEGs, two ~25-word captions per example)
and do the same work per image: read the record, decode the JPEG, random resized crop to 224,
tokenize the two captions to 77 tokens, stack batches. The bare loop is plain Python in this
process; the pipeline is `pipeline.make_train_iterator` with its defaults (uint8 images,
which the model normalises on the accelerator; no read threads) and 0, 1 and 2 grain workers
(with 0 workers it runs in the trainer process's prefetch thread). With `--all` it also runs
float32 images normalised on the host (`image_dtype="float32"`, and the bare loop normalises
too) and 0 workers with 2 read threads (threads in one process hand every example across and
contend for the GIL, which costs CPU; not counted in the target). Reported per run:

  images/s          images over the wall time spent producing them (median round)
  img/cpu-s         images per CPU second: the rate of one fully busy core (per worker)
  cpu ms/img        CPU seconds of this process and its worker processes per image (median)
  overhead          CPU per image over the bare loop's, minus 1: the pipeline's extra CPU
                    work per image (grain, threads, worker IPC): the pipeline's CPU summed
                    over all rounds over the sum, over the same rounds, of the mean of the
                    bare runs just before and after each pipeline run
  90% CI            of that overhead, by resampling the rounds (bootstrap)
  rounds            the middle half (25th..75th percentile) of the per-round ratio; for the
                    bare loop, of its own CPU time over its median (the host's noise: this
                    VM's speed drifts by tens of percent within seconds, so runs are short
                    and many, and every pipeline run sits between two bare runs)

Per image dtype, each round runs bare, 0 workers, bare, 1 worker, bare, 2 workers, bare (and
the threads run, with `--all`), so every pipeline run is compared with bare runs of the same
work made under the same load of the host. The target is an overhead of at most 15%: then
N cores give at least N / 1.15 bare loops. The last line measures what the workers' reusable
shared-memory blocks (`shared_blocks`) save: a new block per batch costs the kernel's
allocating and zeroing its pages (cheap on bare metal, about 1 ms per MB in some VMs).

    python bench/bench_input_pipeline.py [--images 64] [--batch 32] [--rounds 80] [--all] \
        [--compare-blocks]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np
import PIL.Image
from array_record.python import array_record_data_source, array_record_module
from grain.multiprocessing import SharedMemoryArray

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from reasonclip_jax.data import pipeline, records, transforms, views
from reasonclip_jax.models import tokenizer

SIZE, CROP, CONTEXT = 256, 224, 77
WORDS = (
    "a", "the", "man", "woman", "dog", "cat", "red", "blue", "small", "large", "wooden",
    "table", "street", "car", "tree", "sky", "near", "left", "right", "under", "over",
    "holding", "wearing", "standing", "sitting", "because", "after", "before", "likely",
    "wet", "dry", "morning", "evening", "shadow", "light", "heavy", "fragile", "rolling",
    "falling", "tired", "busy", "crowded", "empty",
)


def write_shards(directory: str, num_records: int, num_shards: int = 4) -> None:
    """Synthetic stage-1 records: smooth noise JPEGs of 256 x 256..320 and random captions."""
    rng = np.random.default_rng(0)
    bounds = np.linspace(0, num_records, num_shards + 1).astype(int)
    for shard in range(num_shards):
        path = os.path.join(directory, records.shard_name("train", shard, num_shards))
        writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
        for i in range(bounds[shard], bounds[shard + 1]):
            width = int(rng.integers(SIZE, 321))
            coarse = rng.integers(0, 256, (SIZE // 8, width // 8, 3), dtype=np.uint8)
            image = PIL.Image.fromarray(coarse).resize((width, SIZE), PIL.Image.BILINEAR)
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=90)

            def caption() -> str:
                return " ".join(rng.choice(WORDS, 25))

            record = records.Record(
                id=str(i), source="bench", key=str(i), image=buf.getvalue(), width=width,
                height=SIZE, desc=tuple(caption() for _ in range(3)),
                reason=tuple(caption() for _ in range(3)),
            )
            writer.write(records.encode_record(record))
        writer.close()
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump({"format_version": records.FORMAT_VERSION}, f)


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its live child processes."""
    total = time.process_time()
    ticks = os.sysconf("SC_CLK_TCK")
    for child in multiprocessing.active_children():
        try:
            with open(f"/proc/{child.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


class BareLoop:
    """The pipeline's per-image work, in order, in this process, continuing where it stopped.

    The shards are opened and the order drawn once, outside the measured runs, as the
    pipeline opens them once too.
    """

    def __init__(self, directory: str, batch: int, normalize: bool):
        paths = records.shard_paths(directory, "train")
        self.source = array_record_data_source.ArrayRecordDataSource(paths)
        self.view = views.CaptionPairsView()
        self.order = np.random.default_rng(0).permutation(len(self.source) * 9)
        self.position, self.batch, self.normalize = 0, batch, normalize

    def run(self, num_images: int) -> tuple[float, float]:
        """Processes the next `num_images`; returns (wall s, cpu s)."""
        start_wall, start_cpu = time.perf_counter(), cpu_seconds()
        rows = []
        for _ in range(num_images):
            k = int(self.order[self.position % len(self.order)])
            self.position += 1
            record_id, variant = divmod(k, 9)
            record = records.decode_record(self.source[record_id])
            self.view.check(record)
            image = transforms.decode_image(record.image)
            pixels = transforms.train_pixels(image, CROP, np.random.default_rng([0, 0, 0, k]))
            texts = self.view.texts(record, variant, 0, 0, record_id)
            tokens = tokenizer.tokenize(texts, CONTEXT)
            rows.append({"image": pixels, "text_desc": tokens[0], "text_reason": tokens[1],
                         "record_index": np.int64(record_id)})
            if len(rows) == self.batch:
                stacked = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
                if self.normalize:
                    transforms.normalize(stacked["image"])
                rows = []
        return time.perf_counter() - start_wall, cpu_seconds() - start_cpu


def make_pipeline(directory: str, batch: int, workers: int, read_threads: int,
                  image_dtype: str, reuse_blocks: bool) -> Any:
    """`make_train_iterator` over the same shards, with `workers` grain worker processes."""
    cfg = pipeline.get_config()
    cfg.update(dict(
        data_dirs=[directory], batch_size=batch, image_size=CROP, image_dtype=image_dtype,
        context_length=CONTEXT, shuffle_seed=0, worker_count=workers, worker_buffer_size=1,
        read_threads=read_threads, read_buffer_size=2 * batch, prefetch=1,
        reuse_worker_blocks=reuse_blocks,
    ))
    return pipeline.make_train_iterator(cfg, views.CaptionPairsView(), process_index=0,
                                        process_count=1)


def runnable_threads() -> int:
    """Threads of this process (but the caller) and its workers that are running or ready."""
    count, me = 0, threading.get_native_id()
    for pid in [os.getpid()] + [c.pid for c in multiprocessing.active_children()]:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            if int(tid) == me:
                continue
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    count += f.read().rsplit(")", 1)[1].split()[0] == "R"
            except FileNotFoundError:
                pass
    return count


def wait_until_idle(
    poll_s: float = 0.02, quiet_s: float = 0.1, timeout_s: float = 20.0
) -> tuple[float, float]:
    """Waits until this process and its workers stop working.

    Returns (when they stopped, CPU seconds this waiting thread spent polling). Working means
    a thread is runnable or at least one clock tick of CPU went by in a poll interval (a
    runnable thread starved by other processes still counts as working). Idle pipelines
    block on their full buffers, so they go quiet once every buffer is full.
    """
    start = last_busy = time.perf_counter()
    start_own = time.thread_time()
    last_cpu = cpu_seconds()
    while True:
        time.sleep(poll_s)
        now, cpu = time.perf_counter(), cpu_seconds()
        if cpu - last_cpu >= 0.01 or runnable_threads():
            last_busy = now
        last_cpu = cpu
        if now - last_busy >= quiet_s or now - start >= timeout_s:
            return last_busy, time.thread_time() - start_own


def measure(iterator: Any, num_images: int, batch: int) -> tuple[float, float]:
    """(wall s, cpu s) the pipeline spends producing `num_images`.

    Measured from idle with full buffers to idle with full buffers again: in between the
    pipeline produced exactly the batches taken, whatever its buffer sizes, and the wall time
    ends when it stopped working. The CPU the waiting itself costs (reading /proc) is left out.
    """
    wait_until_idle()
    start_wall, start_cpu = time.perf_counter(), cpu_seconds()
    for _ in range(num_images // batch):
        next(iterator)
    end_wall, polling_cpu = wait_until_idle()
    return end_wall - start_wall, cpu_seconds() - start_cpu - polling_cpu


def fresh_shared_memory_ms(batch: int, dtype: np.dtype, repeats: int = 10) -> float:
    """CPU ms per image of writing a batch into new shared memory rather than reused memory.

    Grain workers hand each batch over in a new shared-memory block, so every batch lands on
    pages the kernel must allocate and zero; a single process reuses its heap instead.
    """
    shape = (batch, CROP, CROP, 3)
    reused = np.empty(shape, dtype)

    def fill(fresh: bool) -> float:
        start = time.process_time()
        for _ in range(repeats):
            out = SharedMemoryArray(shape, dtype) if fresh else reused
            out[...] = 1
            if fresh:
                out.unlink_on_del()
            del out
        return time.process_time() - start

    fill(True), fill(False)
    return 1e3 * (fill(True) - fill(False)) / (repeats * batch)


def bootstrap_ci(piped: np.ndarray, bare: np.ndarray, level: float = 0.9) -> tuple[float, ...]:
    """Confidence interval of sum(piped) / sum(bare) - 1, resampling the rounds."""
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(piped), (2000, len(piped)))
    ratios = piped[picks].sum(1) / bare[picks].sum(1) - 1
    return tuple(np.percentile(ratios, [50 * (1 - level), 50 * (1 + level)]))


def print_table(runs: dict[str, list[tuple[float, float]]],
                pairs: dict[str, list[tuple[float, float]]], num_images: int) -> dict[str, float]:
    """One table row per run; returns the overhead of each pipeline run."""
    overheads = {}
    for name in runs:
        wall = np.median([w for w, _ in runs[name]])
        cpu = np.median([c for _, c in runs[name]])
        ci = ""
        if name in pairs:
            piped, bare = np.array(pairs[name]).T
            overheads[name] = piped.sum() / bare.sum() - 1
            ratios = piped / bare
            ci = "{:+.1%} .. {:+.1%}".format(*bootstrap_ci(piped, bare))
        else:  # the bare runs' own spread: the noise floor of this host
            cpus = np.array([c for _, c in runs[name]])
            ratios = cpus / np.median(cpus)
        low, high = np.percentile(ratios, [25, 75]) - 1
        print(f"{name:<44}{num_images / wall:>10.1f}{num_images / cpu:>11.1f}"
              f"{1e3 * cpu / num_images:>12.2f}{overheads.get(name, 0.0):>+10.1%}"
              f"{ci:>20}  {low:+.0%} .. {high:+.0%}")
    return overheads


# (workers, read threads per process, reuse worker blocks, counted in the target): the
# recommended settings; with --all read threads in the trainer process, which contend for
# the GIL; with --compare-blocks workers on grain's stock path (a fresh block per batch).
SETUPS = ((0, 0, True, True), (1, 0, True, True), (2, 0, True, True))
EXTRA_SETUPS = ((0, 2, True, False),)
FRESH_BLOCK_SETUPS = ((1, 0, False, False), (2, 0, False, False))


def setup_name(dtype: str, workers: int, threads: int, reuse: bool) -> str:
    return (f"pipeline, {dtype}, {workers} workers" + (f", {threads} threads" if threads else "")
            + ("" if reuse else ", fresh blocks"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64, help="images measured per run")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=80)
    parser.add_argument("--all", action="store_true",
                        help="also float32 images and 0 workers with 2 read threads")
    parser.add_argument("--compare-blocks", action="store_true",
                        help="also 1 and 2 workers with input.reuse_worker_blocks=False")
    args = parser.parse_args()
    num_images = args.images // args.batch * args.batch
    dtypes = ("uint8", "float32") if args.all else ("uint8",)  # the default first
    setups = (SETUPS + (EXTRA_SETUPS if args.all else ())
              + (FRESH_BLOCK_SETUPS if args.compare_blocks else ()))
    bare = {d: f"bare loop, {d} (1 process)" for d in dtypes}
    piped = {(d, w, t, r): setup_name(d, w, t, r) for d in dtypes for w, t, r, _ in setups}
    runs: dict[str, list[tuple[float, float]]] = {n: [] for n in [*bare.values(), *piped.values()]}
    pairs: dict[str, list[tuple[float, float]]] = {name: [] for name in piped.values()}
    with tempfile.TemporaryDirectory() as directory:
        write_shards(directory, num_records=256)
        print(f"cores: {os.cpu_count()}  images per run: {num_images}  batch: {args.batch}  "
              f"rounds: {args.rounds}  load average: {os.getloadavg()[0]:.2f}")

        bare_loops = {d: BareLoop(directory, args.batch, normalize=d == "float32") for d in dtypes}

        def run_bare(dtype: str) -> float:
            wait_until_idle()
            runs[bare[dtype]].append(bare_loops[dtype].run(num_images))
            return runs[bare[dtype]][-1][1]

        # One dtype at a time: fewer idle pipelines, whose little polling CPU would count.
        for dtype in dtypes:
            pipelines = {(w, t, r): make_pipeline(directory, args.batch, w, t, dtype, r)
                         for w, t, r, _ in setups}
            for iterator in pipelines.values():
                next(iterator)  # start the workers outside the measurements
            for _ in range(args.rounds):
                before = run_bare(dtype)
                for (workers, threads, reuse), iterator in pipelines.items():
                    name = piped[dtype, workers, threads, reuse]  # between two bare runs
                    runs[name].append(measure(iterator, num_images, args.batch))
                    after = run_bare(dtype)
                    pairs[name].append((runs[name][-1][1], (before + after) / 2))
                    before = after
            for iterator in pipelines.values():
                iterator.close()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"{'run':<44}{'images/s':>10}{'img/cpu-s':>11}{'cpu ms/img':>12}{'overhead':>10}"
          f"{'90% CI':>20}  rounds")
    overheads = {}
    for dtype in dtypes:
        names = [bare[dtype], *(piped[dtype, w, t, r] for w, t, r, _ in setups)]
        overheads.update(print_table({n: runs[n] for n in names}, pairs, num_images))
    for dtype in dtypes:
        counted = [overheads[piped[dtype, w, t, r]] for w, t, r, in_target in setups
                   if in_target]
        worst = max(counted)
        verdict = "holds" if worst <= 0.15 else "does NOT hold"
        default = " (the default)" if dtype == dtypes[0] else ""
        print(f"per-core overhead target <= 15%, {dtype} images{default}, 0/1/2 workers without "
              f"read threads: {verdict} (worst {worst:+.1%})")
    bare_ms = 1e3 * np.median([c for _, c in runs[bare["uint8"]]]) / num_images
    fresh = fresh_shared_memory_ms(args.batch, np.dtype(np.uint8))
    print(f"saved by reusing shared-memory blocks: a fresh block per uint8 batch costs "
          f"{fresh:.2f} ms/img = {fresh / bare_ms:+.1%} of the bare loop")


if __name__ == "__main__":
    main()
