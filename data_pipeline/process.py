"""Per-row work of the preprocessing: one raw row -> one `Record`, or one `Rejection`.

`process_row` depends only on the row and the options (it reads the row's image file, nothing
else), so the Beam pipeline and the benchmark's single-process loop run exactly this code.
Nothing a row contains makes it raise: every failure becomes a `Rejection` whose reason is one
of the `REASONS` below.

Image work: read the bytes, check the size from the header before decoding (decompression
bombs never get decoded), decode (JPEG at a reduced DCT scale when that is still large
enough), apply the EXIF orientation, flatten transparency onto white, resize so the shorter
side is at most `max_short_side` (aspect kept, never upscaled), re-encode as JPEG.
Caption work: decode UTF-8 strictly, collapse whitespace, refuse empty text, check counts and
category labels against the source's `Schema`.

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

from PIL import Image, ImageOps

from reasonclip_jax.data.records import CATEGORIES, Record

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
    cat_label, image_labels, sets. `error` is set when the source could not read the row at all.
    """

    key: str  # the row's location: "file:row" or "shard.tar:KEY"
    image_bytes: bytes | None = None
    image_path: str | None = None
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    error: tuple[str, str] | None = None  # (reason, detail)
    output: str = ""  # sub-directory of the output this row goes to ("" for most sources)


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
    max_pixels: int = 50_000_000


@dataclasses.dataclass(frozen=True)
class Rejection:
    location: str
    reason: str
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Processed:
    record: Record
    image_sha256: str  # of the input image bytes; what --dedup compares


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
        texts = clean_fields(row.fields, schema)
        data = read_image_bytes(row)
        image, width, height = encode_image(data, options)
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
        **texts,
    )
    return Processed(record, hashlib.sha256(data).hexdigest())


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


def _bench_set(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _Reject(MALFORMED, f"{what}: not a mapping")
    negatives = _as_list(value.get("neg"), f"{what}.neg")
    if len(negatives) != NUM_NEGATIVES:
        raise _Reject(
            WRONG_CAPTION_COUNT, f"{what}.neg: {len(negatives)} captions, expected {NUM_NEGATIVES}"
        )
    return {
        "tag": clean_caption(value.get("tag"), f"{what}.tag"),
        "gt": clean_caption(value.get("gt"), f"{what}.gt"),
        "neg": [clean_caption(n, f"{what}.neg[{i}]") for i, n in enumerate(negatives)],
    }


def clean_fields(fields: Mapping[str, Any], schema: Schema) -> dict[str, Any]:
    """The row's text fields as `Record` keyword arguments, checked against `schema`."""
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
    sets = _as_list(fields.get("sets"), "sets")
    if schema.sets and not sets:
        raise _Reject(WRONG_CAPTION_COUNT, "sets: none")
    out["sets"] = tuple(_bench_set(s, f"sets[{i}]") for i, s in enumerate(sets))
    if not (out["desc"] or out["reason"] or out.get("cat_caption") or out["sets"]):
        raise _Reject(WRONG_CAPTION_COUNT, "no caption")
    return out


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
            with open(row.image_path, "rb") as f:
                data = f.read()
        except FileNotFoundError as e:
            raise _Reject(MISSING_FILE, row.image_path) from e
        except OSError as e:
            raise _Reject(UNREADABLE_FILE, f"{row.image_path}: {e.strerror or e}") from e
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


def encode_image(data: bytes, options: ImageOptions) -> tuple[bytes, int, int]:
    """Encoded image bytes -> (JPEG bytes, width, height) of the resized RGB image."""
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:
        raise _Reject(TOO_LARGE, _short(str(e))) from e
    except Exception as e:
        raise _Reject(UNDECODABLE, _short(f"{type(e).__name__}: {e}")) from e
    with image:
        width, height = image.size
        if width * height > options.max_pixels:
            raise _Reject(TOO_LARGE, f"{width}x{height} > {options.max_pixels} pixels")
        if min(width, height) < options.min_size:
            raise _Reject(TOO_SMALL, f"{width}x{height}, shorter side < {options.min_size}")
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


def _short(text: str, limit: int = 160) -> str:
    """A detail for rejected.jsonl: bounded, and free of object addresses (reruns must match)."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
