"""Input sources: how each kind of input is split into units and read into `RawRow`s.

A unit is one input file (or, for `scenes`, a range of scene indices); units are read in
parallel, each into rows whose `key` is "NAME:ROW" (NAME: the file's path relative to the input
root, ROW: 0-based) or "NAME:KEY" for a webdataset sample, so that ids do not depend on where the
data lives. Reading never raises: a file that cannot be read becomes one row carrying an error.

    source          input                                               record fields
    reasonclip-s1   parquet: image_path, tb[3], trl[3]                  desc, reason
    reasonclip-s2   parquet: image_path, trp, trp_cls, trp_cls_ls[3]    cat_caption, cat_label,
                                                                        image_labels
    webdataset      tar: KEY.jpg|jpeg|png|webp + KEY.txt and/or KEY.json desc
    jsonl           image_path | image_b64, desc|tb, reason|trl, trp,   any of the above
                    trp_cls, trp_cls_ls, sets
    rclip-bench     parquet of build_rclip_parquet.py: id, image_name,  sets, source_id,
                    text, version, sets, image{bytes,path}; or jsonl:   image_name, text, version
                    id, image_path, text, version, sets                 (split "test")
    scenes          synthetic (data_pipeline.synthetic); three outputs  stage1/, stage2/, bench/
    tfds            a TFDS dataset prepared as ArrayRecord in --input   desc
                    (its data_dir): --tfds-image-key, and a Text,
                    Sequence(Text) or ClassLabel --tfds-caption-key

A TFDS dataset is read with `tfds.data_source` (no TensorFlow), in units of
EXAMPLES_PER_UNIT examples, each row keyed "DATASET/SPLIT:INDEX"; a class label becomes the
caption `--tfds-label-template` ("a photo of a {}.") of its name. Its data_dir is read by
array_record's own reader: a local path, or a bucket mounted with Cloud Storage FUSE.

Where an image path points (`resolve_image_path`; ROOT is --image-root, or else the input
file's directory):
  1. with --image-root-strip PREFIX, the path must lie under PREFIX (compared component by
     component after normalisation; a path outside it is a "missing image file" rejection)
     and ROOT/(the rest of the path) is read;
  2. otherwise a relative path is read at ROOT/path;
  3. otherwise (an absolute path) it is read as it is, or, when --image-root is given, at
     --image-root/basename(path): what the release's build_rclip_parquet.py does
     (`image_dir / Path(image_path).name`).

RCLIP-Bench rows keep the release's fields verbatim as `str(...)` of them (id -> source_id;
image_name: the parquet column, or the JSONL path's basename as build_rclip_parquet.py names
it), and their version is the row's `version`, or, when that is missing, null or empty, the first
"v1"/"v2"/"v3" in the input file's name (how the release tells its JSONL files apart). JSONL
images are decoded as the release's JSONL path does (no EXIF orientation); parquet images as
its parquet path does (`datasets.Image`: EXIF orientation applied).

Try it:

    python -c "from data_pipeline import sources as s; print(s.list_units(
        s.SOURCES['jsonl'], 'rows.jsonl', s.SourceConfig()))"
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from data_pipeline import filesystem
from data_pipeline.process import (
    ANY_COUNT,
    MALFORMED,
    MISSING_FILE,
    UNREADABLE_INPUT,
    RawRow,
    Schema,
)
from reasonclip_jax.data import webdataset
from reasonclip_jax.errors import UserError

SCENES_PER_UNIT = 32
EXAMPLES_PER_UNIT = 256  # tfds


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """What reading needs besides the unit; from the command line."""

    image_root: str | None = None
    image_root_strip: str | None = None  # rule 1 of the module docstring
    json_caption_fields: tuple[str, ...] = ("caption",)
    num_scenes: int = 0
    num_bench_scenes: int = 0  # held out: scene indices after the training scenes
    scene_group_size: int = 1  # training scenes come in sibling groups of this size
    seed: int = 0
    image_size: int = 64
    scene_jitter: bool = False  # facts vary in size and offset within their slots
    tfds_dataset: str = ""  # "name[/config][:version]"
    tfds_split: str = "train"  # any TFDS split string ("train[:1000]")
    tfds_image_key: str = "image"
    tfds_caption_key: str = "caption"
    tfds_label_template: str = "a photo of a {}."  # a ClassLabel caption feature's caption


@dataclasses.dataclass(frozen=True)
class Unit:
    """One independently readable piece of input: a file, or a range of scene indices."""

    path: str = ""
    name: str = ""  # the file's path relative to the input root: the prefix of row keys
    start: int = 0
    stop: int = 0


@dataclasses.dataclass(frozen=True)
class Output:
    """One shard directory a source writes."""

    subdir: str  # relative to --output; "" for the output directory itself
    name: str  # Record.source of its records
    schema: Schema
    eval_only: bool = False  # every record goes to split "test"


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    outputs: tuple[Output, ...]
    read: Callable[[Unit, SourceConfig], Iterator[RawRow]]
    extensions: tuple[str, ...] = ()  # files taken when --input is a directory


# ----------------------------------------------------------------------------------------------
# Listing units.
# ----------------------------------------------------------------------------------------------


def list_units(source: Source, pattern: str | None, config: SourceConfig) -> list[Unit]:
    """The source's units in a fixed order; a UserError when there is nothing to read."""
    if source.name == "scenes":
        if config.num_scenes < 1:
            raise UserError("--source scenes needs --num-scenes N with N >= 1")
        total = config.num_scenes + config.num_bench_scenes
        return [
            Unit(name="scenes", start=i, stop=min(i + SCENES_PER_UNIT, total))
            for i in range(0, total, SCENES_PER_UNIT)
        ]
    if not pattern:
        raise UserError(f"--source {source.name} needs --input PATH_OR_GLOB")
    if source.name == "tfds":
        return _tfds_units(pattern, config)
    root, paths = filesystem.list_inputs(pattern, source.extensions)
    if not paths:
        raise UserError(f"--input {pattern}: no {source.name} input files there")
    return [Unit(path=p, name=filesystem.relative(p, root)) for p in sorted(paths)]


def resolve_image_path(
    path: str, input_dir: str, image_root: str | None, strip: str | None = None
) -> str:
    """Where an image path of the input points (the rules of the module docstring); raises
    ValueError for a path outside `strip`."""
    root = input_dir if image_root is None else image_root
    if "://" in path and strip is None:  # a URL (gs://...) is absolute
        return path if image_root is None else os.path.join(image_root, path.rsplit("/", 1)[1])
    if strip is not None:
        rest = os.path.relpath(os.path.normpath(path), os.path.normpath(strip))
        if os.path.isabs(path) != os.path.isabs(strip) or rest.split(os.sep)[0] == os.pardir:
            raise ValueError(f"{path} is not under --image-root-strip {strip}")
        return os.path.join(root, rest) if rest != os.curdir else root
    if not os.path.isabs(path):
        return os.path.join(root, path)
    return path if image_root is None else os.path.join(image_root, os.path.basename(path))


def _image(path: Any, key: str, unit: Unit, config: SourceConfig, **row: Any) -> RawRow:
    """A row whose image is the file at `path` (resolved), or a rejection saying why not."""
    if not isinstance(path, str) or not path:
        return RawRow(key=key, **row)  # process_row rejects it: the row names no image
    try:
        resolved = resolve_image_path(
            path, os.path.dirname(unit.path), config.image_root, config.image_root_strip
        )
    except ValueError as e:
        return RawRow(key=key, error=(MISSING_FILE, str(e)[:200]))
    return RawRow(key=key, image_path=resolved, **row)


def _unreadable(unit: Unit, done: int, error: Exception) -> RawRow:
    detail = f"after {done} rows: {type(error).__name__}: {error}"[:200]
    return RawRow(key=unit.name, error=(UNREADABLE_INPUT, detail))


# ----------------------------------------------------------------------------------------------
# Parquet and JSONL rows.
# ----------------------------------------------------------------------------------------------


def _parquet_rows(unit: Unit) -> Iterator[tuple[int, dict[str, Any]] | RawRow]:
    import pyarrow.parquet as pq

    index = 0
    try:
        with filesystem.open_read(unit.path) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=64):
                for row in batch.to_pylist():
                    yield index, row
                    index += 1
    except Exception as e:
        yield _unreadable(unit, index, e)


def _jsonl_rows(unit: Unit) -> Iterator[tuple[int, dict[str, Any]] | RawRow]:
    index = 0
    try:
        with filesystem.open_read(unit.path) as f:
            for index, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    yield RawRow(
                        key=f"{unit.name}:{index}", error=(MALFORMED, f"bad JSON: {e}"[:200])
                    )
                    continue
                if not isinstance(row, dict):
                    yield RawRow(key=f"{unit.name}:{index}", error=(MALFORMED, "not a JSON object"))
                    continue
                yield index, row
    except Exception as e:
        yield _unreadable(unit, index, e)


def _first(row: dict[str, Any], *names: str) -> Any:
    return next((row[n] for n in names if row.get(n) is not None), None)


def _from_jsonl(index: int, row: dict[str, Any], unit: Unit, config: SourceConfig) -> RawRow:
    key = f"{unit.name}:{index}"
    fields = {
        "desc": _first(row, "desc", "tb"),
        "reason": _first(row, "reason", "trl"),
        "cat_caption": _first(row, "cat_caption", "trp"),
        "cat_label": _first(row, "cat_label", "trp_cls"),
        "image_labels": _first(row, "image_labels", "trp_cls_ls"),
        "sets": row.get("sets"),
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    if row.get("image_b64") is not None:
        try:
            image = base64.b64decode(row["image_b64"], validate=True)
        except (binascii.Error, TypeError, ValueError) as e:
            return RawRow(key=key, error=(MALFORMED, f"image_b64: {e}"[:200]))
        return RawRow(key=key, image_bytes=image, fields=fields)
    return _image(row.get("image_path"), key, unit, config, fields=fields)


def _read_rows(
    unit: Unit,
    config: SourceConfig,
    rows: Callable[[Unit], Iterator[tuple[int, dict[str, Any]] | RawRow]],
    convert: Callable[[int, dict[str, Any], Unit, SourceConfig], RawRow],
) -> Iterator[RawRow]:
    for item in rows(unit):
        yield item if isinstance(item, RawRow) else convert(*item, unit, config)


def _from_stage1(index: int, row: dict[str, Any], unit: Unit, config: SourceConfig) -> RawRow:
    fields = {"desc": row.get("tb"), "reason": row.get("trl")}
    return _image(row.get("image_path"), f"{unit.name}:{index}", unit, config, fields=fields)


def _from_stage2(index: int, row: dict[str, Any], unit: Unit, config: SourceConfig) -> RawRow:
    fields = {
        "cat_caption": row.get("trp"),
        "cat_label": row.get("trp_cls"),
        "image_labels": row.get("trp_cls_ls"),
    }
    return _image(row.get("image_path"), f"{unit.name}:{index}", unit, config, fields=fields)


_VERSION_IN_NAME = re.compile(r"v[123]")  # the release's `_replace_data_version` token


def _bench_fields(row: dict[str, Any], unit: Unit, image_name: str) -> dict[str, Any]:
    """The row's sets and its release metadata, each `str(...)`'d as the release does."""
    version = str(row.get("version", "") or "")
    if not version:
        match = _VERSION_IN_NAME.search(os.path.basename(unit.name))
        version = match.group(0) if match else ""
    return {
        "sets": row.get("sets"),
        "source_id": str(row.get("id", "")),
        "image_name": image_name,
        "text": str(row.get("text", "")),
        "version": version,
    }


def _from_bench_parquet(
    index: int, row: dict[str, Any], unit: Unit, config: SourceConfig
) -> RawRow:
    """A row of build_rclip_parquet.py; decoded later as `datasets.Image` does (EXIF applied)."""
    key = f"{unit.name}:{index}"
    image = row.get("image") if isinstance(row.get("image"), dict) else {}
    fields = _bench_fields(row, unit, str(row.get("image_name", "")))
    if image.get("bytes"):
        return RawRow(key=key, image_bytes=image["bytes"], fields=fields)
    return _image(image.get("path") or row.get("image_path"), key, unit, config, fields=fields)


def _from_bench_jsonl(index: int, row: dict[str, Any], unit: Unit, config: SourceConfig) -> RawRow:
    """A row of the release's JSONL; decoded later as `open_image_rgb` does (no EXIF)."""
    key, path = f"{unit.name}:{index}", row.get("image_path")
    fields = _bench_fields(row, unit, os.path.basename(path) if isinstance(path, str) else "")
    if row.get("image_b64") is not None:  # this project's inline images (jsonl source)
        converted = _from_jsonl(index, row, unit, config)
        return dataclasses.replace(converted, fields=fields, exif_transpose=False)
    return _image(path, key, unit, config, fields=fields, exif_transpose=False)


def read_stage1(unit: Unit, config: SourceConfig) -> Iterator[RawRow]:
    return _read_rows(unit, config, _parquet_rows, _from_stage1)


def read_stage2(unit: Unit, config: SourceConfig) -> Iterator[RawRow]:
    return _read_rows(unit, config, _parquet_rows, _from_stage2)


def read_jsonl(unit: Unit, config: SourceConfig) -> Iterator[RawRow]:
    return _read_rows(unit, config, _jsonl_rows, _from_jsonl)


def read_bench(unit: Unit, config: SourceConfig) -> Iterator[RawRow]:
    if unit.path.endswith(".parquet"):
        return _read_rows(unit, config, _parquet_rows, _from_bench_parquet)
    return _read_rows(unit, config, _jsonl_rows, _from_bench_jsonl)


# ----------------------------------------------------------------------------------------------
# Webdataset tars.
# ----------------------------------------------------------------------------------------------


def _webdataset_row(key: str, files: dict[str, bytes], unit: Unit, config: SourceConfig) -> RawRow:
    row_key = f"{unit.name}:{key}"
    image = webdataset.first_image(files)
    if image is None:
        return RawRow(
            key=row_key, error=(MISSING_FILE, f"no image member ({', '.join(sorted(files))})")
        )
    captions: list[Any] = [files["txt"]] if "txt" in files else []
    if "json" in files:
        try:
            meta = json.loads(files["json"])
        except ValueError as e:
            return RawRow(key=row_key, error=(MALFORMED, f"{key}.json: {e}"[:200]))
        for field in config.json_caption_fields:
            value = meta.get(field) if isinstance(meta, dict) else None
            captions.extend(value if isinstance(value, list) else [] if value is None else [value])
    return RawRow(key=row_key, image_bytes=image, fields={"desc": captions})


def read_webdataset(unit: Unit, config: SourceConfig) -> Iterator[RawRow]:
    """Samples are consecutive members sharing a key, as webdataset writes them."""
    done = 0
    try:
        with filesystem.open_read(unit.path) as f:
            for key, files in webdataset.iter_tar(f):
                yield _webdataset_row(key, files, unit, config)
                done += 1
    except Exception as e:  # truncated or corrupt tar: the sample being read is lost with it
        yield _unreadable(unit, done, e)


# ----------------------------------------------------------------------------------------------
# Synthetic scenes.
# ----------------------------------------------------------------------------------------------


def read_scenes(unit: Unit, config: SourceConfig) -> Iterator[RawRow]:
    """A training scene (index < num_scenes) gives one stage-1 row and one stage-2 row per
    category caption; a held-out scene (the next num_bench_scenes indices) one bench row, so
    the benchmark never shows an image the model trained on."""
    from data_pipeline.synthetic import scenes
    from reasonclip_jax.data.records import CATEGORIES

    for index in range(unit.start, unit.stop):
        try:
            held_out = index >= config.num_scenes
            group_size = 1 if held_out else config.scene_group_size
            scene = scenes.make_scene(index, config.seed, config.image_size, group_size,
                                      config.scene_jitter)
            png = io.BytesIO()
            scene.image.save(png, "PNG")
        except Exception as e:
            for output in ("bench",) if held_out else ("stage1", "stage2"):
                yield dataclasses.replace(
                    _unreadable(unit, index - unit.start, e), key=f"scene:{index}", output=output
                )
            continue
        image = png.getvalue()
        group = scenes.group_key(index, config.seed, group_size)
        if held_out:
            yield RawRow(
                key=scene.key, image_bytes=image, output="bench",
                fields={"sets": list(scene.bench_sets), "desc": list(scene.desc)},
            )
            continue
        yield RawRow(
            key=scene.key,
            image_bytes=image,
            output="stage1",
            fields={"desc": list(scene.desc), "reason": list(scene.reason), "group": group},
        )
        for label, caption in scene.cat_captions:
            yield RawRow(
                key=f"{scene.key}/{CATEGORIES[label]}",
                image_bytes=image,
                output="stage2",
                fields={
                    "cat_caption": caption,
                    "cat_label": label,
                    "image_labels": list(scene.image_labels),
                    # siblings share the layout: this category is the same family in each
                    "group": f"{group}/{CATEGORIES[label]}" if group else "",
                },
            )


# ----------------------------------------------------------------------------------------------
# TFDS datasets.
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _tfds_split(data_dir: str, dataset: str, split: str, image_key: str) -> Any:
    """The split, opened once per process (workers read many units of it)."""
    from reasonclip_jax.data import tfds_source

    return tfds_source.open_split(dataset, split, data_dir, encoded=[image_key])


def _tfds_units(data_dir: str, config: SourceConfig) -> list[Unit]:
    """Ranges of example indices; the dataset, split and features are checked here, once."""
    from reasonclip_jax.data import tfds_source

    if not config.tfds_dataset:
        raise UserError("--source tfds needs --tfds-dataset NAME[/CONFIG][:VERSION] (and "
                        "--input, the directory it is prepared in)")
    split = _tfds_split(data_dir, config.tfds_dataset, config.tfds_split, config.tfds_image_key)
    tfds_source.read_images(split, config.tfds_image_key)
    tfds_source.text_feature_kind(split, config.tfds_caption_key)
    name = f"{config.tfds_dataset}/{config.tfds_split}"
    return [Unit(path=data_dir, name=name, start=i, stop=min(i + EXAMPLES_PER_UNIT, len(split)))
            for i in range(0, len(split), EXAMPLES_PER_UNIT)]


def read_tfds(unit: Unit, config: SourceConfig) -> Iterator[RawRow]:
    """One row per example: its image bytes as stored, its captions as `desc`."""
    from reasonclip_jax.data import tfds_source

    done = 0
    try:
        split = _tfds_split(unit.path, config.tfds_dataset, config.tfds_split,
                            config.tfds_image_key)
        for index, image, example in tfds_source.read_images(
                split, config.tfds_image_key, unit.start, unit.stop):
            key = f"{unit.name}:{index}"
            try:
                captions = tfds_source.texts(split, example, config.tfds_caption_key,
                                             config.tfds_label_template)
            except (IndexError, TypeError, ValueError) as e:  # a label outside its names
                yield RawRow(key=key, error=(MALFORMED, f"{config.tfds_caption_key}: {e}"[:200]))
                continue
            yield RawRow(key=key, image_bytes=image, fields={"desc": captions})
            done += 1
    except Exception as e:
        yield _unreadable(unit, done, e)


# ----------------------------------------------------------------------------------------------
# The registry.
# ----------------------------------------------------------------------------------------------

_STAGE1 = Schema(desc=(3, 3), reason=(3, 3))
_STAGE2 = Schema(cat_caption=True, image_labels=True)
_BENCH = Schema(sets=True)
_SCENES_BENCH = Schema(sets=True, desc=(3, 3))  # desc: descriptive retrieval on held-out scenes

SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "reasonclip-s1", (Output("", "reasonclip-s1", _STAGE1),), read_stage1, (".parquet",)
        ),
        Source(
            "reasonclip-s2", (Output("", "reasonclip-s2", _STAGE2),), read_stage2, (".parquet",)
        ),
        Source(
            "webdataset",
            (Output("", "webdataset", Schema(desc=(1, ANY_COUNT), unique_desc=True)),),
            read_webdataset,
            (".tar",),
        ),
        Source("jsonl", (Output("", "jsonl", Schema()),), read_jsonl, (".jsonl",)),
        Source(
            "tfds",
            (Output("", "tfds", Schema(desc=(1, ANY_COUNT), unique_desc=True)),),
            read_tfds,
        ),
        Source(
            "rclip-bench",
            (Output("", "rclip-bench", _BENCH, eval_only=True),),
            read_bench,
            (".parquet", ".jsonl"),
        ),
        Source(
            "scenes",
            (
                Output("stage1", "scenes-stage1", _STAGE1),
                Output("stage2", "scenes-stage2", _STAGE2),
                Output("bench", "scenes-bench", _SCENES_BENCH, eval_only=True),
            ),
            read_scenes,
        ),
    )
}
