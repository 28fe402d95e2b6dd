"""Throughput and CPU cost of the training input pipeline against a bare single-process loop.

Both read the same synthetic stage-1 shards (256 px JPEGs, two ~25-word captions per example)
and do the same work per image: read the record, decode the JPEG, random resized crop to 224,
normalise, tokenize the two captions to 77 tokens, stack batches. The bare loop is plain
Python in this process; the pipeline is `input_pipeline.make_train_iterator` with 0, 1 and 2
grain workers. Reported per run:

  images/s          images over the wall time spent producing them (best round)
  cpu ms/img        CPU seconds of this process and its worker processes per image (best)
  overhead          CPU per image over the bare loop's, minus 1: the pipeline's extra CPU
                    work per image (threads, worker IPC, shared memory); the median over
                    rounds of the ratio to the mean of the bare runs just before and after
  rounds            the range of that ratio over the rounds; for the bare loop, the range
                    of its own CPU time around its median (the host's noise floor)

Each round runs bare, 0 workers, bare, 1 worker, bare, 2 workers, bare, so every pipeline run
is compared with bare runs made under the same load of the host. The target is an overhead
of at most 15%: then N cores give at least N / 1.15 bare loops. The last line measures one
cost the workers cannot avoid: each float32 batch crosses to the trainer process in a new
shared-memory block, whose pages the kernel allocates and zeroes (cheap on bare metal, about
1 ms per MB in some virtual machines).

    python bench/bench_input_pipeline.py [--images 320] [--batch 32] [--rounds 5]
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
from reasonclip_jax import example_views, image_transforms, input_pipeline, records, tokenizer

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


def bare_loop(directory: str, num_images: int, batch: int) -> tuple[float, float]:
    """The same per-image work, in order, in this process. Returns (wall s, cpu s)."""
    source = array_record_data_source.ArrayRecordDataSource(records.shard_paths(directory, "train"))
    view = example_views.make_view("stage1")
    order = np.random.default_rng(0).permutation(len(source) * 9)[:num_images]
    start_wall, start_cpu = time.perf_counter(), cpu_seconds()
    rows = []
    for k in order:
        record_id, variant = divmod(int(k), 9)
        record = records.decode_record(source[record_id])
        view.check(record)
        image = image_transforms.decode_image(record.image)
        pixels = image_transforms.train_pixels(
            image, CROP, np.random.default_rng([0, 0, 0, int(k)])
        )
        tokens = tokenizer.tokenize(view.texts(record, variant, 0, 0, record_id), CONTEXT)
        rows.append({"image": pixels, "text_desc": tokens[0], "text_reason": tokens[1],
                     "record_index": np.int64(record_id)})
        if len(rows) == batch:
            stacked = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
            image_transforms.normalize(stacked["image"])
            rows = []
    return time.perf_counter() - start_wall, cpu_seconds() - start_cpu


def make_pipeline(directory: str, batch: int, workers: int) -> Any:
    """`make_train_iterator` over the same shards, with `workers` grain worker processes."""
    cfg = input_pipeline.get_config()
    cfg.update(dict(
        data_dirs=[directory], view="stage1", batch_size=batch, image_size=CROP,
        context_length=CONTEXT, shuffle_seed=0, worker_count=workers, worker_buffer_size=1,
        read_threads=2 if workers == 0 else 0, read_buffer_size=2 * batch, prefetch=1,
    ))
    return input_pipeline.make_train_iterator(cfg, process_index=0, process_count=1)


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


def wait_until_idle(poll_s: float = 0.05, quiet_s: float = 0.3, timeout_s: float = 20.0) -> float:
    """Waits until this process and its workers stop working; returns when they stopped.

    Working means a thread is runnable or at least one clock tick of CPU went by in a poll
    interval (a runnable thread starved by other processes still counts as working). Idle
    pipelines block on their full buffers, so they go quiet once every buffer is full.
    """
    start = last_busy = time.perf_counter()
    last_cpu = cpu_seconds()
    while True:
        time.sleep(poll_s)
        now, cpu = time.perf_counter(), cpu_seconds()
        if cpu - last_cpu >= 0.01 or runnable_threads():
            last_busy = now
        last_cpu = cpu
        if now - last_busy >= quiet_s or now - start >= timeout_s:
            return last_busy


def measure(iterator: Any, num_images: int, batch: int) -> tuple[float, float]:
    """(wall s, cpu s) the pipeline spends producing `num_images`.

    Measured from idle with full buffers to idle with full buffers again: in between the
    pipeline produced exactly the batches taken, whatever its buffer sizes, and the wall time
    ends when it stopped working.
    """
    wait_until_idle()
    start_wall, start_cpu = time.perf_counter(), cpu_seconds()
    for _ in range(num_images // batch):
        next(iterator)
    end_wall = wait_until_idle()
    return end_wall - start_wall, cpu_seconds() - start_cpu


def fresh_shared_memory_ms(batch: int, repeats: int = 10) -> float:
    """CPU ms per image of writing a batch into new shared memory rather than reused memory.

    Grain workers hand each batch over in a new shared-memory block, so every batch lands on
    pages the kernel must allocate and zero; a single process reuses its heap instead.
    """
    shape = (batch, CROP, CROP, 3)
    reused = np.empty(shape, np.float32)

    def fill(fresh: bool) -> float:
        start = time.process_time()
        for _ in range(repeats):
            out = SharedMemoryArray(shape, np.float32) if fresh else reused
            out[...] = 1.0
            if fresh:
                out.unlink_on_del()
            del out
        return time.process_time() - start

    fill(True), fill(False)
    return 1e3 * (fill(True) - fill(False)) / (repeats * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=320, help="images measured per run")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    num_images = args.images // args.batch * args.batch
    bare = "bare loop (1 process)"
    names = [bare] + [f"pipeline, {w} workers" for w in (0, 1, 2)]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names[1:]}
    with tempfile.TemporaryDirectory() as directory:
        write_shards(directory, num_records=256)
        print(f"cores: {os.cpu_count()}  images per run: {num_images}  batch: {args.batch}  "
              f"rounds: {args.rounds}  load average: {os.getloadavg()[0]:.2f}")
        pipelines = {w: make_pipeline(directory, args.batch, w) for w in (0, 1, 2)}
        for iterator in pipelines.values():
            next(iterator)  # start the workers outside the measurements

        def run_bare() -> float:
            wait_until_idle()
            runs[bare].append(bare_loop(directory, num_images, args.batch))
            return runs[bare][-1][1]

        for _ in range(args.rounds):
            before = run_bare()
            for name in names[1:]:  # each pipeline run between two bare runs
                runs[name].append(measure(pipelines[int(name.split()[1])], num_images, args.batch))
                after = run_bare()
                ratios[name].append(runs[name][-1][1] / ((before + after) / 2))
                before = after
        for iterator in pipelines.values():
            iterator.close()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"{'run':<26}{'images/s':>10}{'cpu ms/img':>12}{'overhead':>10}  rounds")
    overheads = {}
    for name in names:
        wall = min(w for w, _ in runs[name])
        cpu = min(c for _, c in runs[name])
        if name in ratios:
            overheads[name] = float(np.median(ratios[name])) - 1
            low, high = min(ratios[name]) - 1, max(ratios[name]) - 1
        else:  # the bare runs' own spread: the noise floor of this host
            cpus = np.array([c for _, c in runs[name]])
            low, high = cpus.min() / np.median(cpus) - 1, cpus.max() / np.median(cpus) - 1
        spread = f"  {low:+.0%} .. {high:+.0%}"
        print(f"{name:<26}{num_images / wall:>10.1f}{1e3 * cpu / num_images:>12.2f}"
              f"{overheads.get(name, 0.0):>+10.1%}{spread}")
    worst = max(overheads.values())
    print(f"per-core overhead target <= 15%: {'holds' if worst <= 0.15 else 'does NOT hold'}"
          f" (worst median {worst:+.1%})")
    bare_ms = 1e3 * min(c for _, c in runs[bare]) / num_images
    fresh = fresh_shared_memory_ms(args.batch)
    print(f"of which fresh shared-memory pages for float32 batches (with workers): "
          f"{fresh:.2f} ms/img = {fresh / bare_ms:+.1%} of the bare loop")


if __name__ == "__main__":
    main()
