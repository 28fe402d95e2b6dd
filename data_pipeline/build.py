"""Builds ArrayRecord shard directories from raw image-text data with Apache Beam.

    python -m data_pipeline.build --source reasonclip-s1 --input 'data/s1/*.parquet' \\
        --image-root data/images --output out/s1 --num-shards 64
    python -m data_pipeline.build --source scenes --num-scenes 1000 --seed 0 --output out/scenes
    python -m data_pipeline.build --source rclip-bench --input rclip_5k_v3.jsonl \\
        --image-root data/docci_images/images --output out/rclip_v3
    python -m data_pipeline.build --source tfds --input ~/tensorflow_datasets \\
        --tfds-dataset coco_captions --tfds-caption-key captions/text --output out/coco
    # any Beam pipeline option goes along, e.g. two local worker processes:
    python -m data_pipeline.build ... --direct_num_workers=2 --direct_running_mode=multi_processing

The graph, per output directory (`scenes` has three: stage1/, stage2/, bench/):

    units -> read -> reshuffle -> process_row -+-> records -> [dedup] -> place + encode
                                               |     -> group by (split, shard) -> write shard
                                               |     -> statistics ------------+
                                               +-> rejections -----------------+-> manifest.json
                               count rows -------------------------------------+   rejected.jsonl

Input, images and output are local paths or bucket URLs (`gs://...`): every file goes through
Beam's FileSystems (`filesystem.py`), so the same command runs on Dataflow. See
`sources.py` for the input formats and where image paths point, `process.py` for what is
checked, `write.py` for the layout. Evaluation outputs (rclip-bench, scenes' bench/) store each
image file's bytes as they are, with no size floor; training outputs store resized JPEGs
unless --keep-image-bytes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from data_pipeline import filesystem, process, sources, stats, write
from reasonclip_jax.data.records import encode_record, natural_key
from reasonclip_jax.errors import UserError
from reasonclip_jax.tools import cli

if TYPE_CHECKING:
    import apache_beam as beam

# Beam is imported where the pipeline is built, after the arguments are checked: a bad command
# line answers at once, in one line, without Beam's import time and import-time warnings.

_REJECTED = "rejected"


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m data_pipeline.build",
        formatter_class=argparse.HelpFormatter,
        description="Raw image-text data -> ArrayRecord shards + manifest.json + rejected.jsonl. "
        "Unrecognised flags are passed to Beam as pipeline options.",
    )
    p.add_argument("--source", required=True, choices=sorted(sources.SOURCES))
    p.add_argument("--input", help="input file, glob or directory (all but --source scenes)")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--num-shards", type=int, default=1, help="shards per split")
    p.add_argument(
        "--image-root",
        help="base of relative image paths (default: each input file's directory); absolute "
        "paths are read at IMAGE_ROOT/their basename",
    )
    p.add_argument(
        "--image-root-strip", metavar="PREFIX",
        help="image paths must start with PREFIX, which is replaced by the image root",
    )
    p.add_argument(
        "--keep-image-bytes", action="store_true",
        help="training outputs too store the image files as they are (no resize, no re-encoding; "
        "evaluation outputs always do)",
    )
    p.add_argument(
        "--max-short-side", type=int, default=256, help="resize so the shorter side is at most this"
    )
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument(
        "--min-size", type=int, default=32,
        help="reject images whose shorter side is smaller (training outputs)",
    )
    p.add_argument(
        "--max-pixels", type=int, default=50_000_000,
        help="reject larger images before decoding (training outputs)",
    )
    p.add_argument("--validation-fraction", type=float, default=0.002)
    p.add_argument(
        "--dedup", action="store_true", help="keep one row per identical image (first by key)"
    )
    p.add_argument(
        "--json-caption-fields", default="caption", help="webdataset: comma-separated json fields"
    )
    p.add_argument("--num-scenes", type=int, default=0, help="scenes: how many to train on")
    p.add_argument("--num-bench-scenes", type=int, default=None,
                   help="scenes: held-out benchmark scenes (default: as many as --num-scenes)")
    p.add_argument("--seed", type=int, default=0, help="scenes: random seed")
    p.add_argument("--image-size", type=int, default=64, help="scenes: image side in pixels")
    p.add_argument("--tfds-dataset", metavar="NAME[/CONFIG][:VERSION]",
                   help="tfds: the dataset, prepared as ArrayRecord in --input (its data_dir)")
    p.add_argument("--tfds-split", default="train", help="tfds: the split ('train[:1000]')")
    p.add_argument("--tfds-image-key", default="image", help="tfds: the Image feature")
    p.add_argument("--tfds-caption-key", default="caption",
                   help="tfds: the captions: a Text feature, a Sequence of them, or a ClassLabel")
    p.add_argument("--tfds-label-template", default="a photo of a {}.",
                   help="tfds: the caption of a ClassLabel, its name in place of {}")
    p.add_argument("--scene-group-size", type=int, default=1,
                   help="scenes: training scenes in sibling groups of this size (the same "
                        "families in other states), written next to each other for "
                        "input.group_size")
    p.add_argument("--scene-jitter", action="store_true",
                   help="scenes: vary each fact's size and offset within its slot (default: "
                        "every fact fills its third of the image, aligned to the ViT patches "
                        "when the image size divides by 3 x the patch size)")
    return p


def _check_beam_args(beam_args: list[str]) -> None:
    """A flag that neither we nor Beam know is a typo: refuse it instead of dropping it."""
    if not beam_args:
        return
    from apache_beam.options.pipeline_options import PipelineOptions

    parsers: list[argparse.ArgumentParser] = []
    PipelineOptions(beam_args).get_all_options(add_extra_args_fn=parsers.append)
    _, unknown = parsers[0].parse_known_args(beam_args)
    if unknown:
        raise UserError(f"unrecognised arguments: {' '.join(unknown)} (see --help)")


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our flags, checked, and the rest (Beam pipeline options, checked in `run`)."""
    args, beam_args = _parser().parse_known_args(list(argv))
    for flag, value, lo, hi in (
        ("--num-shards", args.num_shards, 1, 99999),
        ("--max-short-side", args.max_short_side, 1, None),
        ("--jpeg-quality", args.jpeg_quality, 1, 100),
        ("--min-size", args.min_size, 1, None),
        ("--max-pixels", args.max_pixels, 1, None),
        ("--image-size", args.image_size, 1, None),
        ("--scene-group-size", args.scene_group_size, 1, None),
    ):
        if value < lo or (hi is not None and value > hi):
            raise UserError(f"{flag} {value}: must be in [{lo}, {hi if hi is not None else 'inf'})")
    if args.tfds_label_template.count("{}") != 1 or "{" in args.tfds_label_template.replace(
            "{}", "", 1):
        raise UserError(f"--tfds-label-template {args.tfds_label_template!r}: must hold one {{}}")
    if not 0.0 <= args.validation_fraction < 1.0:
        raise UserError(f"--validation-fraction {args.validation_fraction}: must be in [0, 1)")
    if (not filesystem.is_remote(args.output) and os.path.exists(args.output)
            and not os.path.isdir(args.output)):
        raise UserError(f"--output {args.output}: exists and is not a directory")
    return args, beam_args


# ----------------------------------------------------------------------------------------------
# Steps of the graph (module-level functions: they are pickled to workers by reference).
# ----------------------------------------------------------------------------------------------


def _process(
    row: process.RawRow, output: sources.Output, options: process.ImageOptions
) -> Iterator[Any]:
    from apache_beam import pvalue

    result = process.process_row(row, output.name, output.schema, options)
    if isinstance(result, process.Rejection):
        yield pvalue.TaggedOutput(_REJECTED, result)
    else:
        for dropped in result.dropped_sets:  # the row stays; each left-out set is reported
            yield pvalue.TaggedOutput(_REJECTED, dropped)
        yield result


def _by_image(p: process.Processed) -> tuple[str, process.Processed]:
    return process.dedup_key(p), p


def _keep_first(item: tuple[str, Iterable[process.Processed]]) -> Iterator[Any]:
    from apache_beam import pvalue

    ordered = sorted(item[1], key=lambda p: natural_key(p.record.key))
    yield ordered[0]
    for dup in ordered[1:]:
        rejection = process.Rejection(
            dup.record.key, process.DUPLICATE, f"same image as {ordered[0].record.key}"
        )
        yield pvalue.TaggedOutput(_REJECTED, rejection)


def _place_and_encode(
    p: process.Processed, num_shards: int, fraction: float, eval_only: bool
) -> Any:
    order = write.order_key(p.record.id, p.record.group)
    return _place(p, num_shards, fraction, eval_only), (order, encode_record(p.record))


def _place(
    p: process.Processed, num_shards: int, fraction: float, eval_only: bool
) -> tuple[str, int]:
    return write.place(write.placement_id(p.record.id, p.record.group), num_shards, fraction,
                       eval_only)


def _stats(p: process.Processed, num_shards: int, fraction: float, eval_only: bool) -> Counter:
    return stats.record_stats(p.record, _place(p, num_shards, fraction, eval_only)[0])


def _write_group(
    item: tuple[tuple[str, int], Iterable[tuple[str, bytes]]], directory: str, num_shards: int
) -> str:
    (split, shard), items = item
    return write.write_shard(directory, split, shard, num_shards, items)


def _rejection_line(r: process.Rejection) -> dict[str, Any]:
    return write.rejection_line(r.location, r.reason, r.detail, r.set_index)


def _finalize(
    _: Any,
    directory: str,
    header: dict[str, Any],
    num_shards: int,
    input_rows: int,
    counts: Counter,
    rejections: list[dict[str, Any]],
    written: list[str],
) -> None:
    write.finalize(
        directory, header, input_rows, stats.summarize(counts), rejections, written, num_shards
    )


def _add_output(
    p: beam.Pipeline,
    rows: beam.PCollection,
    output: sources.Output,
    directory: str,
    args: argparse.Namespace,
    header: dict[str, Any],
) -> None:
    """Appends the graph of one output directory to the pipeline."""
    import apache_beam as beam

    label = output.subdir or "output"
    options = image_options(args, output)
    placing = (args.num_shards, args.validation_fraction, output.eval_only)
    results = rows | f"{label}/Process" >> beam.FlatMap(_process, output, options).with_outputs(
        _REJECTED, main="records"
    )
    kept, rejected = results.records, [results[_REJECTED]]
    if args.dedup:
        deduped = (
            kept
            | f"{label}/KeyByImage" >> beam.Map(_by_image)
            | f"{label}/GroupByImage" >> beam.GroupByKey()
            | f"{label}/KeepFirst"
            >> beam.FlatMap(_keep_first).with_outputs(_REJECTED, main="records")
        )
        kept = deduped.records
        rejected.append(deduped[_REJECTED])
    written = (
        kept
        | f"{label}/PlaceAndEncode" >> beam.Map(_place_and_encode, *placing)
        | f"{label}/GroupByShard" >> beam.GroupByKey()
        | f"{label}/WriteShard" >> beam.Map(_write_group, directory, args.num_shards)
    )
    counts = (
        kept
        | f"{label}/Stats" >> beam.Map(_stats, *placing)
        | f"{label}/MergeStats" >> beam.CombineGlobally(stats.merge)
    )
    rejections = (
        rejected
        | f"{label}/AllRejections" >> beam.Flatten()
        | f"{label}/RejectionLines" >> beam.Map(_rejection_line)
        | f"{label}/CollectRejections" >> beam.combiners.ToList()
    )
    input_rows = rows | f"{label}/CountRows" >> beam.combiners.Count.Globally()
    _ = (
        p
        | f"{label}/Start" >> beam.Create([None])
        | f"{label}/Finalize"
        >> beam.Map(
            _finalize,
            directory,
            header,
            args.num_shards,
            beam.pvalue.AsSingleton(input_rows),
            beam.pvalue.AsSingleton(counts),
            beam.pvalue.AsSingleton(rejections),
            beam.pvalue.AsList(written),
        )
    )


def image_options(args: argparse.Namespace, output: sources.Output) -> process.ImageOptions:
    """Evaluation outputs keep every image as it is; training outputs follow the flags."""
    if output.eval_only:
        return process.EVAL_IMAGE_OPTIONS
    return process.ImageOptions(
        args.max_short_side, args.jpeg_quality, args.min_size, args.max_pixels,
        keep_bytes=args.keep_image_bytes,
    )


def manifest_header(
    args: argparse.Namespace, source: sources.Source, output: sources.Output
) -> dict[str, Any]:
    """What the manifest records about how it was made (no Beam runner options: same data,
    same manifest, however it was run)."""
    options = {
        k: getattr(args, k)
        for k in (
            "input",
            "image_root",
            "max_short_side",
            "jpeg_quality",
            "min_size",
            "max_pixels",
            "validation_fraction",
            "dedup",
        )
    }
    image = image_options(args, output)
    if args.image_root_strip is not None:
        options["image_root_strip"] = args.image_root_strip
    if image.keep_bytes:  # the options that applied: no resize, no re-encoding
        options.update(keep_image_bytes=True, max_short_side=None, jpeg_quality=None,
                       min_size=image.min_size, max_pixels=image.max_pixels)
    if source.name == "webdataset":
        options["json_caption_fields"] = args.json_caption_fields
    if source.name == "tfds":
        options.update(tfds_dataset=args.tfds_dataset, tfds_split=args.tfds_split,
                       tfds_image_key=args.tfds_image_key,
                       tfds_caption_key=args.tfds_caption_key,
                       tfds_label_template=args.tfds_label_template)
    if source.name == "scenes":
        options.update(num_scenes=args.num_scenes, num_bench_scenes=_num_bench(args),
                       seed=args.seed, image_size=args.image_size)
        if args.scene_jitter:
            options["scene_jitter"] = True
        if args.scene_group_size > 1 and not output.eval_only:
            options["scene_group_size"] = args.scene_group_size
            return {"source": output.name, "options": options,
                    "group_size": args.scene_group_size}
    return {"source": output.name, "options": options}


def _num_bench(args: argparse.Namespace) -> int:
    return args.num_scenes if args.num_bench_scenes is None else args.num_bench_scenes


def run(argv: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Runs the pipeline; returns each written directory's manifest, keyed by directory."""
    # Before parsing: Beam's pipeline options import the module that logs the notice.
    logging.getLogger().addFilter(_BIGQUERY_NOTICE)  # once: the same filter is not added twice
    args, beam_args = parse_args(argv)
    source = sources.SOURCES[args.source]
    config = sources.SourceConfig(
        image_root=args.image_root,
        image_root_strip=args.image_root_strip,
        json_caption_fields=tuple(
            f.strip() for f in args.json_caption_fields.split(",") if f.strip()
        ),
        num_scenes=args.num_scenes,
        num_bench_scenes=_num_bench(args),
        seed=args.seed,
        image_size=args.image_size,
        scene_group_size=args.scene_group_size,
        scene_jitter=args.scene_jitter,
        tfds_dataset=args.tfds_dataset or "",
        tfds_split=args.tfds_split,
        tfds_image_key=args.tfds_image_key,
        tfds_caption_key=args.tfds_caption_key,
        tfds_label_template=args.tfds_label_template,
    )
    if args.num_scenes % args.scene_group_size:
        raise UserError(f"--num-scenes {args.num_scenes} is not a multiple of "
                        f"--scene-group-size {args.scene_group_size}")
    units = sources.list_units(source, args.input, config)
    _check_beam_args(beam_args)
    directories = {
        o.subdir: filesystem.join(args.output, o.subdir) if o.subdir else args.output
        for o in source.outputs
    }
    for d in directories.values():
        filesystem.mkdirs(d)

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
        rows = (
            p
            | "Units" >> beam.Create(units, reshuffle=False)
            | "Read" >> beam.FlatMap(source.read, config)
            | "Spread" >> beam.Reshuffle()  # one big file must not mean one busy worker
        )
        for output in source.outputs:
            output_rows = rows
            if len(source.outputs) > 1:
                output_rows = rows | f"{output.subdir}/Select" >> beam.Filter(
                    _is_for, output.subdir
                )
            _add_output(
                p,
                output_rows,
                output,
                directories[output.subdir],
                args,
                manifest_header(args, source, output),
            )

    return {d: write.read_manifest(d) for d in directories.values()}


class _NoBigQueryNotice(logging.Filter):
    """Beam tells the root logger that its BigQuery client is missing whenever google-cloud
    is installed without apitools (Beam's gcp extra); the build never uses BigQuery."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("apitools not found")


_BIGQUERY_NOTICE = _NoBigQueryNotice()


def _is_for(row: process.RawRow, subdir: str) -> bool:
    return row.output == subdir


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> None:
    for directory, m in run(sys.argv[1:] if argv is None else argv).items():
        print(
            f"{directory}: {m['written']} records {m['splits']}, {m['rejected']} rejected "
            f"{m['rejections']} of {m['input_rows']} input rows"
            + (f", {m['dropped_sets']} sets left out" if m.get("dropped_sets") else "")
        )


if __name__ == "__main__":
    main()
