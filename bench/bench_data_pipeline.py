"""Throughput of the preprocessing pipeline on DirectRunner next to a plain single-process loop.

Both do the same work on the same synthetic stage-1 parquet (JPEGs of 256-400 px a side):
read rows, `process.process_row` (decode, resize, re-encode, caption checks), statistics,
placement, `encode_record`, shard files sorted by id, manifest. The loop is the floor of what
the per-row work costs; the ratio is what Beam's machinery adds (or, with workers, saves).
The two outputs are also compared byte for byte.

    python bench/bench_data_pipeline.py                # 500 rows, in-process DirectRunner
    python bench/bench_data_pipeline.py --rows 600 --workers 2   # + multi_processing, 2 workers
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipeline import build, process, sources, stats, write  # noqa: E402
from reasonclip_jax.data import records  # noqa: E402


def make_input(directory: str, num_rows: int, seed: int = 0) -> str:
    """A parquet of `num_rows` stage-1 rows with JPEG files of 256-400 px a side."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(directory, "images"))
    paths, tb, trl = [], [], []
    for i in range(num_rows):
        w, h = (int(x) for x in rng.integers(256, 401, 2))
        u, v = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
        base = rng.uniform(0, 255, (3, 1, 1)) * (0.5 + 0.5 * np.sin(6 * u + 4 * v + i))
        pixels = np.clip(base.transpose(1, 2, 0) + rng.normal(0, 12, (h, w, 3)), 0, 255)
        out = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(out, "JPEG", quality=90)
        name = f"images/{i:06d}.jpg"
        with open(os.path.join(directory, name), "wb") as f:
            f.write(out.getvalue())
        paths.append(name)
        tb.append([f"a photo number {i} of a {c} scene" for c in ("red", "green", "blue")])
        trl.append(
            [f"it was taken {j} hours after the rain, so the road is still wet" for j in range(3)]
        )
    path = os.path.join(directory, "s1.parquet")
    pq.write_table(pa.table({"image_path": paths, "tb": tb, "trl": trl}), path)
    return path


def single_process_build(argv: list[str]) -> None:
    """What the pipeline does, as one loop in this process, with the same functions."""
    args, _ = build.parse_args(argv)
    source = sources.SOURCES[args.source]
    (output,) = source.outputs
    config = sources.SourceConfig(image_root=args.image_root)
    options = process.ImageOptions(
        args.max_short_side, args.jpeg_quality, args.min_size, args.max_pixels
    )
    os.makedirs(args.output, exist_ok=True)
    input_rows, counts, rejections = 0, collections.Counter(), []
    shards: dict[tuple[str, int], list[tuple[str, bytes]]] = collections.defaultdict(list)
    for unit in sources.list_units(source, args.input, config):
        for row in source.read(unit, config):
            input_rows += 1
            result = process.process_row(row, output.name, output.schema, options)
            if isinstance(result, process.Rejection):
                rejections.append(
                    write.rejection_line(result.location, result.reason, result.detail)
                )
                continue
            split, shard = write.place(
                result.record.id, args.num_shards, args.validation_fraction, False
            )
            counts.update(stats.record_stats(result.record, split))
            shards[split, shard].append((result.record.id, records.encode_record(result.record)))
    written = [
        write.write_shard(args.output, s, i, args.num_shards, items)
        for (s, i), items in shards.items()
    ]
    header = build.manifest_header(args, source, output)
    write.finalize(
        args.output,
        header,
        input_rows,
        stats.summarize(counts),
        rejections,
        written,
        args.num_shards,
    )


def files_of(directory: str) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--num-shards", type=int, default=4)
    parser.add_argument(
        "--workers", type=int, default=0, help="also run multi_processing with N workers"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        data = make_input(tmp, args.rows)
        print(f"input: {args.rows} rows, JPEG 256-400 px, made in {time.perf_counter() - t:.1f} s")

        def argv(out: str) -> list[str]:
            return [
                "--source",
                "reasonclip-s1",
                "--input",
                data,
                "--output",
                os.path.join(tmp, out),
                "--num-shards",
                str(args.num_shards),
            ]

        # Both share one process: warm up imports and the tokenizer first, so neither pays them.
        stats.record_stats(records.Record("x", "x", "x", b"", desc=("warm up",)), "train")
        import apache_beam  # noqa: F401

        runs = [("single-process loop", lambda: single_process_build(argv("loop")), "loop")]
        runs.append(("DirectRunner in_memory", lambda: build.run(argv("beam")), "beam"))
        if args.workers:
            mp = [
                f"--direct_num_workers={args.workers}",
                "--direct_running_mode=multi_processing",
                "--default_sdk_harness_log_level=ERROR",
            ]
            runs.append(
                (
                    f"DirectRunner multi_processing x{args.workers}",
                    lambda: build.run(argv("beam_mp") + mp),
                    "beam_mp",
                )
            )
        rates = {}
        for name, fn, _ in runs:
            t = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t
            rates[name] = args.rows / seconds
            print(f"{name:34s} {seconds:6.2f} s  {rates[name]:7.1f} rows/s")
        loop = rates["single-process loop"]
        for name, rate in rates.items():
            if name != "single-process loop":
                print(f"ratio {name} / loop: {rate / loop:.2f}")
        reference = files_of(os.path.join(tmp, "loop"))
        same = all(files_of(os.path.join(tmp, out)) == reference for _, _, out in runs)
        print(f"identical output files (shards, manifest, rejected): {same}")


if __name__ == "__main__":
    main()
