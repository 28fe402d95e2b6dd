"""The record format of the project's ArrayRecord shards, and a reader for shard directories.

Format version 1. One ArrayRecord record is one example:

    bytes 0..3   magic b"RCR1"
    bytes 4..7   little-endian uint32 H: length of the header
    bytes 8..8+H UTF-8 JSON header (keys sorted, no whitespace)
    the rest     the encoded image (JPEG re-encoded by the preprocessing, or the source file's
                 bytes as they are for evaluation data), possibly empty for text-only records

Header keys (all present; unused ones are empty lists / null):
    id            str        stable record id (hash of source + source key)
    source        str        the preprocessing source name, e.g. "reasonclip-s1"
    key           str        the row's key in its source (file:row or tar member)
    width, height int        size of the stored image
    desc          list[str]  descriptive captions (CC12M-Refined "tb"; stage 0 / stage 1)
    reason        list[str]  open-form reasoning captions ("trl"; stage 1)
    cat_caption   str|null   a category reasoning caption ("trp"; stage 2)
    cat_label     int|null   its category index, S=0 A=1 H=2 T=3 P=4 ("trp_cls")
    image_labels  list[int]  the image's category indices ("trp_cls_ls", 3 of 5)
    sets          list[dict] benchmark sets {"tag": str, "gt": str, "neg": [4 str]}

Optional header keys, written only when set (so records without them encode to the same bytes
as before they existed, and older records decode with them empty):
    source_id      str        the row's own id in its source (RCLIP-Bench `id`)
    image_name     str        the image's file name in its source (RCLIP-Bench `image_name`)
    text           str        the image's description in its source (RCLIP-Bench `text`)
    version        str        the benchmark version the row belongs to (RCLIP-Bench `version`)
    set_index      list[int]  position of each kept set in the source row's `sets` (absent:
                              every set was kept, in order)
    exif_transpose bool       decoders apply the image's EXIF orientation before use (what the
                              release's parquet path gets from `datasets.Image`); absent: the
                              bytes decode as they are (`PIL.Image.open(...).convert("RGB")`)
    group          str        the record's hard-negative group: the preprocessing puts a group's
                              records in one shard, next to each other, and the training
                              pipeline's `group_size` keeps them in one batch

A shard directory holds `{split}-{shard:05d}-of-{N:05d}.array_record` files and a
`manifest.json` whose "format_version" must equal `FORMAT_VERSION`.

Reading needs neither Beam nor TensorFlow:

    python -c "from reasonclip_jax.data import records; \\
print(records.ShardDirectory('DIR').read(0))"
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import struct
from collections.abc import Sequence
from typing import Any

from reasonclip_jax import paths
from reasonclip_jax.errors import UserError

FORMAT_VERSION = 1
MAGIC = b"RCR1"
CATEGORIES = ("S", "A", "H", "T", "P")  # index order of the release
CATEGORY_NAMES = ("spatial", "attribute_state", "human_action", "temporal_phase", "physical")


@dataclasses.dataclass(frozen=True)
class Record:
    """One decoded example. `image` holds the encoded image bytes."""

    id: str
    source: str
    key: str
    image: bytes
    width: int = 0
    height: int = 0
    desc: tuple[str, ...] = ()
    reason: tuple[str, ...] = ()
    cat_caption: str | None = None
    cat_label: int | None = None
    image_labels: tuple[int, ...] = ()
    sets: tuple[dict[str, Any], ...] = ()
    source_id: str = ""
    image_name: str = ""
    text: str = ""
    version: str = ""
    set_index: tuple[int, ...] = ()
    exif_transpose: bool = False
    group: str = ""


_HEADER_KEYS = (
    "id", "source", "key", "width", "height", "desc", "reason",
    "cat_caption", "cat_label", "image_labels", "sets",
)
# Optional keys, left out of the header while empty (their defaults are all falsy).
_OPTIONAL_KEYS = (
    "source_id", "image_name", "text", "version", "set_index", "exif_transpose", "group",
)


def encode_record(record: Record) -> bytes:
    """Serialises a `Record` deterministically (same record -> same bytes)."""
    header = {k: getattr(record, k) for k in _HEADER_KEYS}
    header.update((k, getattr(record, k)) for k in _OPTIONAL_KEYS if getattr(record, k))
    for k in ("desc", "reason", "image_labels", "sets", "set_index"):
        if k in header:
            header[k] = list(header[k])
    blob = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return MAGIC + struct.pack("<I", len(blob)) + blob + record.image


def decode_record(data: bytes) -> Record:
    """Parses bytes written by `encode_record`; raises ValueError on corrupt input."""
    if len(data) < 8 or data[:4] != MAGIC:
        raise ValueError("not a reasonclip record (bad magic)")
    (n,) = struct.unpack("<I", data[4:8])
    if 8 + n > len(data):
        raise ValueError("truncated reasonclip record header")
    try:
        h = json.loads(data[8 : 8 + n].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"corrupt reasonclip record header: {e}") from e
    return Record(
        id=h["id"], source=h["source"], key=h["key"], image=bytes(data[8 + n :]),
        width=h["width"], height=h["height"], desc=tuple(h["desc"]), reason=tuple(h["reason"]),
        cat_caption=h["cat_caption"], cat_label=h["cat_label"],
        image_labels=tuple(h["image_labels"]), sets=tuple(h["sets"]),
        source_id=h.get("source_id", ""), image_name=h.get("image_name", ""),
        text=h.get("text", ""), version=h.get("version", ""),
        set_index=tuple(h.get("set_index", ())), exif_transpose=h.get("exif_transpose", False),
        group=h.get("group", ""),
    )


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}.array_record"


def shard_pattern(split: str) -> str:
    """The glob of a split's shard file names ("*": every split)."""
    return f"{split}-?????-of-?????.array_record"


def shard_paths(directory: str, split: str) -> list[str]:
    """The split's shard files in a directory, in shard order."""
    return sorted(glob.glob(os.path.join(directory, shard_pattern(split))))


def natural_key(text: str) -> tuple[tuple[int, Any], ...]:
    """Sort key that orders embedded numbers by value: "f:9" before "f:10" (record keys),
    "2.tar" before "10.tar" (shard names). Tagged so a number never compares with text."""
    # isdecimal, not isdigit: "²" is a digit int() rejects, and re's \d never splits it out.
    return tuple((0, int(t)) if t.isdecimal() else (1, t) for t in re.split(r"(\d+)", text) if t)


def read_manifest(directory: str) -> dict[str, Any]:
    """Loads DIR/manifest.json and checks its format version."""
    path = paths.join(directory, "manifest.json")
    if not paths.Path(path).is_file():
        raise UserError(f"{directory} is not a shard directory: no manifest.json")
    manifest = json.loads(paths.Path(path).read_text())
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(
            f"{path}: record format version {version}, this code reads version {FORMAT_VERSION}"
        )
    return manifest


class ShardDirectory:
    """Random access to the records of one split of a shard directory.

    Wraps array_record's random-access data source; `len()` and `[i]` give raw bytes
    (what Grain reads), `read(i)` gives a decoded `Record`.
    """

    def __init__(self, directory: str, split: str = "train"):
        from array_record.python import array_record_data_source

        self.directory = directory
        self.split = split
        self.manifest = read_manifest(directory)
        self.paths = shard_paths(directory, split)
        if not self.paths:
            raise UserError(f"{directory}: no shards for split '{split}'")
        self.source = array_record_data_source.ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> bytes:
        return self.source[index]

    def read(self, index: int) -> Record:
        return decode_record(self.source[index])

    def read_all(self) -> Sequence[Record]:
        return [self.read(i) for i in range(len(self))]
