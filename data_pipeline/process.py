"""Per-row work of the preprocessing: one raw row -> one `Record`, or one `Rejection`.

`process_row` depends only on the row and the options (it reads the row's image file, nothing
else), so the Beam pipeline and the benchmark's single-process loop run exactly this code.
Nothing a row contains makes it raise: every failure becomes a `Rejection` whose reason is one
of the `REASONS` below.

Image work, training data (re-encoded, the default): read the bytes, check the size from the
header before decoding (decompression bombs never get decoded), decode (JPEG at a reduced DCT
scale when that is still large enough), apply the EXIF orientation, flatten transparency onto
white, resize so the shorter side is at most `max_short_side` (aspect kept, never upscaled),
re-encode as JPEG.
Image work, evaluation data (`ImageOptions.keep_bytes`; every eval-only output): the file's
bytes are stored as they are. They must decode the way the evaluator decodes them
(`evaluators.common.decode_image`: the release's `Image.open(...).convert("RGB")`, with the
EXIF orientation first only for rows whose source says so, the RCLIP parquet); no resize, no
re-encoding, and for eval-only outputs no size floor and no pixel cap but PIL's own.
Caption work: decode UTF-8 strictly, collapse whitespace, refuse empty text, check counts and
category labels against the source's `Schema`.
Benchmark sets follow the release's `validate_set_item`: a malformed set is dropped alone (a
`Rejection` with its `set_index`, the row kept) and a row is rejected whole only when none of
its sets is valid; tags are kept verbatim, gt and negatives lose surrounding whitespace only
(`str.strip()`).

Try it:

    python -c "from data_pipeline import process as p; print(p.process_row(
        p.RawRow('x:0', image_path='img.jpg', fields={'desc': ['a cat']}),
        'demo', p.Schema(), p.ImageOptions()))"
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import warnings
from collections.abc import Mapping
from typing import Any

from PIL import ExifTags, Image, ImageOps

from data_pipeline import filesystem
from reasonclip_jax.data.records import CATEGORIES, Record
from reasonclip_jax.evaluators.common import decode_image

# Rejection reasons: the keys of the manifest's "rejections" counts.
MISSING_FILE = "missing image file"
UNREADABLE_FILE = "unreadable image file"
ZERO_BYTES = "zero-byte image"
UNDECODABLE = "undecodable image"
TRUNCATED = "truncated or corrupt image"
TOO_SMALL = "image too small"
TOO_LARGE = "image too large"  # more pixels than --max-pixels (a decompression bomb)
EMPTY_CAPTION = "empty caption"
NON_UTF8 = "non-UTF-8 caption"
WRONG_CAPTION_COUNT = "wrong number of captions"
UNKNOWN_LABEL = "unknown category label"
WRONG_LABEL_COUNT = "wrong number of category labels"
MALFORMED = "malformed row"
UNREADABLE_INPUT = "unreadable input file"
DUPLICATE = "duplicate image"
BAD_SET = "malformed benchmark set"  # one set dropped (with set_index), or, row: none valid
UNEXPECTED = "unexpected error"
REASONS = (
    MISSING_FILE,
    UNREADABLE_FILE,
    ZERO_BYTES,
    UNDECODABLE,
    TRUNCATED,
    TOO_SMALL,
    TOO_LARGE,
    EMPTY_CAPTION,
    NON_UTF8,
    WRONG_CAPTION_COUNT,
    UNKNOWN_LABEL,
    WRONG_LABEL_COUNT,
    MALFORMED,
    UNREADABLE_INPUT,
    DUPLICATE,
    BAD_SET,
    UNEXPECTED,
)

NUM_IMAGE_LABELS = 3  # every image of the stage-2 release has exactly 3 of the 5 categories
NUM_NEGATIVES = 4  # every RCLIP-Bench set is one correct caption and 4 negatives
ANY_COUNT = 1 << 30

# Our own --max-pixels check replaces PIL's warning; PIL's hard error (2x its limit) is caught.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


@dataclasses.dataclass(frozen=True)
class RawRow:
    """One input row as a source read it, before any checking.

    `fields` uses the record's names: desc, reason (lists of str or bytes), cat_caption,
    cat_label, image_labels, sets, the benchmark's source_id, image_name, text, version
    (str, kept verbatim), and group (a hard-negative group key, str). `error` is set when
    the source could not read the row at all.
    """

    key: str  # the row's location: "file:row" or "shard.tar:KEY"
    image_bytes: bytes | None = None
    image_path: str | None = None
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    error: tuple[str, str] | None = None  # (reason, detail)
    output: str = ""  # sub-directory of the output this row goes to ("" for most sources)
    # Kept bytes only: whether the source's own reader applies the EXIF orientation (the
    # release's JSONL path does not; its parquet path, through `datasets.Image`, does).
    exif_transpose: bool = True


@dataclasses.dataclass(frozen=True)
class Schema:
    """What one source's rows must carry. Counts are inclusive (min, max) ranges."""

    desc: tuple[int, int] = (0, ANY_COUNT)
    reason: tuple[int, int] = (0, ANY_COUNT)
    cat_caption: bool = False  # a category caption and its label are required
    image_labels: bool = False  # exactly NUM_IMAGE_LABELS distinct labels are required
    sets: bool = False  # at least one benchmark set is required
    unique_desc: bool = False  # drop repeated descriptive captions (webdataset txt == json)


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    max_short_side: int = 256
    jpeg_quality: int = 95
    min_size: int = 32  # shorter side of the input image, in pixels
    max_pixels: int | None = 50_000_000  # None: only PIL's own decompression-bomb limit
    keep_bytes: bool = False  # store the input file's bytes instead of a resized JPEG


# Evaluation data: the original bytes, every image the release would score (no size floor).
EVAL_IMAGE_OPTIONS = ImageOptions(min_size=1, max_pixels=None, keep_bytes=True)


@dataclasses.dataclass(frozen=True)
class Rejection:
    location: str
    reason: str
    detail: str = ""
    set_index: int | None = None  # a dropped benchmark set of a kept row; None: the whole row


@dataclasses.dataclass(frozen=True)
class Processed:
    record: Record
    image_sha256: str  # of the input image bytes; what --dedup compares
    dropped_sets: tuple[Rejection, ...] = ()  # the row's malformed sets, each left out


class _Reject(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def record_id(source: str, key: str) -> str:
    """Stable id of a row: 32 hex digits of sha256(source, key)."""
    return hashlib.sha256(f"{source}\0{key}".encode()).hexdigest()[:32]


def process_row(
    row: RawRow, source: str, schema: Schema, options: ImageOptions
) -> Processed | Rejection:
    """Checks and converts one row; never raises."""
    if row.error is not None:
        return Rejection(row.key, *row.error)
    try:
        texts, dropped = clean_fields(row.fields, schema)
        data = read_image_bytes(row)
        if options.keep_bytes:
            image, width, height, exif = check_kept_image(data, options, row.exif_transpose)
        else:
            (image, width, height), exif = encode_image(data, options), False
    except _Reject as r:
        return Rejection(row.key, r.reason, r.detail)
    except Exception as e:  # a bug or an input nobody foresaw: dead-letter it, keep going
        return Rejection(row.key, UNEXPECTED, _short(f"{type(e).__name__}: {e}"))
    record = Record(
        id=record_id(source, row.key),
        source=source,
        key=row.key,
        image=image,
        width=width,
        height=height,
        exif_transpose=exif,
        **texts,
    )
    drops = tuple(Rejection(row.key, BAD_SET, detail, i) for i, detail in dropped)
    return Processed(record, hashlib.sha256(data).hexdigest(), drops)


def dedup_key(processed: Processed) -> str:
    """Rows with equal keys are duplicates: same image bytes (and, for stage 2, same category)."""
    return f"{processed.image_sha256}:{processed.record.cat_label}"


# ----------------------------------------------------------------------------------------------
# Captions and labels.
# ----------------------------------------------------------------------------------------------


def clean_caption(value: Any, what: str) -> str:
    """Strict UTF-8, whitespace collapsed to single spaces, non-empty."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _Reject(NON_UTF8, what) from e
    if not isinstance(value, str):
        raise _Reject(MALFORMED, f"{what}: not text")
    try:
        value.encode("utf-8")  # lone surrogates (e.g. a JSON "\udc80") are not UTF-8
    except UnicodeEncodeError as e:
        raise _Reject(NON_UTF8, what) from e
    text = " ".join(value.split())
    if not text:
        raise _Reject(EMPTY_CAPTION, what)
    return text


def parse_label(value: Any, what: str) -> int:
    """A category letter (S/A/H/T/P) or its index -> the index."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str) and value.strip() in CATEGORIES:
        return CATEGORIES.index(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(CATEGORIES):
        return value
    raise _Reject(UNKNOWN_LABEL, _short(f"{what}: {value!r}"))


def _as_list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise _Reject(MALFORMED, f"{what}: expected a list")


def _captions(
    fields: Mapping[str, Any], name: str, count: tuple[int, int], unique: bool = False
) -> tuple[str, ...]:
    texts = [
        clean_caption(v, f"{name}[{i}]") for i, v in enumerate(_as_list(fields.get(name), name))
    ]
    if unique:
        texts = list(dict.fromkeys(texts))
    lo, hi = count
    if not lo <= len(texts) <= hi:
        expected = str(lo) if lo == hi else f"at least {lo}" if hi == ANY_COUNT else f"{lo} to {hi}"
        raise _Reject(WRONG_CAPTION_COUNT, f"{name}: {len(texts)} captions, expected {expected}")
    return tuple(texts)


def bench_set(value: Any) -> dict[str, Any]:
    """One benchmark set, checked and cleaned as the release's `validate_set_item`
    (`eval/eval_RCLIP.py`): raises `_Reject(BAD_SET, why)` for a set the release drops (why
    starts with its words: "bad tag", "bad gt", "bad neg")."""
    if not isinstance(value, Mapping):
        raise _Reject(BAD_SET, f"not an object: {type(value).__name__}")
    tag, gt, neg = value.get("tag", ""), value.get("gt", ""), value.get("neg", [])
    if not isinstance(tag, str) or not tag:
        raise _Reject(BAD_SET, _short(f"bad tag: {tag!r}"))
    if not isinstance(gt, str) or not gt.strip():
        raise _Reject(BAD_SET, _short(f"bad gt: {gt!r}"))
    if not isinstance(neg, list) or len(neg) != NUM_NEGATIVES:
        count = f"{len(neg)} captions" if isinstance(neg, list) else type(neg).__name__
        raise _Reject(BAD_SET, f"bad neg: {count}, expected a list of {NUM_NEGATIVES}")
    for i, x in enumerate(neg):
        if not isinstance(x, str) or not x.strip():
            raise _Reject(BAD_SET, _short(f"bad neg: neg[{i}] is {x!r}"))
    for text in (tag, gt, *neg):
        _check_utf8(text, "set text")
    return {"tag": tag, "gt": gt.strip(), "neg": [x.strip() for x in neg]}


def _check_utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")  # lone surrogates (a JSON "\udc80") cannot go in a record header
    except UnicodeEncodeError as e:
        raise _Reject(NON_UTF8, what) from e


def bench_sets(
    fields: Mapping[str, Any], required: bool
) -> tuple[list[dict[str, Any]], list[int], list[tuple[int, str]]]:
    """(kept sets, their positions in the row's `sets`, (position, why) of each dropped one).

    Raises when the row has no sets but must.
    """
    sets = _as_list(fields.get("sets"), "sets")
    if required and not sets:
        raise _Reject(WRONG_CAPTION_COUNT, "sets: none")
    kept, positions, dropped = [], [], []
    for i, value in enumerate(sets):
        try:
            kept.append(bench_set(value))
            positions.append(i)
        except _Reject as r:
            dropped.append((i, r.detail if r.reason == BAD_SET else f"{r.reason}: {r.detail}"))
    return kept, positions, dropped


_BENCH_META = ("source_id", "image_name", "text", "version")


def clean_fields(
    fields: Mapping[str, Any], schema: Schema
) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """The row's text fields as `Record` keyword arguments, checked against `schema`, and
    the (position, why) of each benchmark set left out."""
    out: dict[str, Any] = {
        "desc": _captions(fields, "desc", schema.desc, schema.unique_desc),
        "reason": _captions(fields, "reason", schema.reason),
    }
    caption, label = fields.get("cat_caption"), fields.get("cat_label")
    if schema.cat_caption or caption is not None or label is not None:
        if caption is None:
            raise _Reject(WRONG_CAPTION_COUNT, "cat_caption: missing")
        out["cat_caption"] = clean_caption(caption, "cat_caption")
        out["cat_label"] = parse_label(label, "cat_label")
    raw_labels = fields.get("image_labels")
    if schema.image_labels or raw_labels is not None:
        labels = [
            parse_label(v, f"image_labels[{i}]")
            for i, v in enumerate(_as_list(raw_labels, "image_labels"))
        ]
        if len(labels) != NUM_IMAGE_LABELS or len(set(labels)) != len(labels):
            raise _Reject(
                WRONG_LABEL_COUNT,
                f"image_labels: {len(labels)} labels, {len(set(labels))} distinct, "
                f"expected {NUM_IMAGE_LABELS} distinct",
            )
        out["image_labels"] = tuple(labels)
    sets, positions, dropped = bench_sets(fields, schema.sets)
    if dropped and not sets and (schema.sets or not (out["desc"] or out["reason"] or caption)):
        # The row goes whole; short reasons ("bad neg") so that every set fits the detail.
        why = "; ".join(f"sets[{i}] {d.split(':')[0]}" for i, d in dropped)
        raise _Reject(BAD_SET, _short(f"no valid set: {why}"))
    out["sets"] = tuple(sets)
    if dropped:  # positions only when they are not simply 0, 1, 2, ...
        out["set_index"] = tuple(positions)
    group = fields.get("group", "")
    if not isinstance(group, str):
        raise _Reject(MALFORMED, "group: not text")
    out["group"] = group
    for name in _BENCH_META:  # verbatim, as the release keeps them
        value = fields.get(name, "")
        if not isinstance(value, str):
            raise _Reject(MALFORMED, f"{name}: not text")
        _check_utf8(value, name)
        out[name] = value
    if not (out["desc"] or out["reason"] or out.get("cat_caption") or out["sets"]):
        raise _Reject(WRONG_CAPTION_COUNT, "no caption")
    return out, dropped


# ----------------------------------------------------------------------------------------------
# Images.
# ----------------------------------------------------------------------------------------------


def read_image_bytes(row: RawRow) -> bytes:
    if row.image_bytes is not None:
        data = row.image_bytes
    elif row.image_path is None:
        raise _Reject(MISSING_FILE, "row names no image")
    else:
        try:
            data = filesystem.read_bytes(row.image_path)
        except Exception as e:  # a disk's OSError, a bucket's API errors
            if filesystem.is_missing(e):
                raise _Reject(MISSING_FILE, row.image_path) from e
            detail = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise _Reject(UNREADABLE_FILE, _short(f"{row.image_path}: {detail}")) from e
    if not data:
        raise _Reject(ZERO_BYTES, row.image_path or "")
    return data


def target_size(width: int, height: int, max_short_side: int) -> tuple[int, int]:
    """Size with the shorter side at most `max_short_side`, aspect kept, never larger."""
    if min(width, height) <= max_short_side:
        return width, height
    if width <= height:
        return max_short_side, max(1, round(height * max_short_side / width))
    return max(1, round(width * max_short_side / height)), max_short_side


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _open(data: bytes, options: ImageOptions) -> Image.Image:
    """The image opened (header only) once its size passed the checks; nothing decoded yet."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise _Reject(TOO_LARGE, _short(str(e))) from e
    except Exception as e:
        raise _Reject(UNDECODABLE, _short(f"{type(e).__name__}: {e}")) from e
    width, height = image.size
    if options.max_pixels is not None and width * height > options.max_pixels:
        image.close()
        raise _Reject(TOO_LARGE, f"{width}x{height} > {options.max_pixels} pixels")
    if min(width, height) < options.min_size:
        image.close()
        raise _Reject(TOO_SMALL, f"{width}x{height}, shorter side < {options.min_size}")
    return image


def encode_image(data: bytes, options: ImageOptions) -> tuple[bytes, int, int]:
    """Encoded image bytes -> (JPEG bytes, width, height) of the resized RGB image."""
    with _open(data, options) as image:
        width, height = image.size
        # JPEG: let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers the target.
        image.draft("RGB", target_size(width, height, options.max_short_side))
        try:
            image.load()
        except Exception as e:
            raise _Reject(TRUNCATED, _short(f"{type(e).__name__}: {e}")) from e
        rgb = _to_rgb(ImageOps.exif_transpose(image))
    size = target_size(*rgb.size, options.max_short_side)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=options.jpeg_quality)
    return out.getvalue(), rgb.width, rgb.height


def check_kept_image(
    data: bytes, options: ImageOptions, exif_rule: bool
) -> tuple[bytes, int, int, bool]:
    """(the input bytes unchanged, width, height, exif_transpose) of an image stored as it is.

    The image must decode as the evaluator will decode it (`evaluators.common.decode_image`);
    the size is the decoded one. `exif_transpose` is set when the source's reader applies
    EXIF orientations (`exif_rule`) and this image has an Orientation tag: exactly the images
    `datasets.Image` transposes.
    """
    with _open(data, options) as image:
        try:
            exif = exif_rule and image.getexif().get(ExifTags.Base.Orientation) is not None
            rgb = decode_image(data, exif)
        except Exception as e:
            raise _Reject(TRUNCATED, _short(f"{type(e).__name__}: {e}")) from e
    return data, rgb.width, rgb.height, exif


def _short(text: str, limit: int = 160) -> str:
    """A detail for rejected.jsonl: bounded, and free of object addresses (reruns must match)."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
