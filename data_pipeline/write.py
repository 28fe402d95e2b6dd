"""Output of the preprocessing: split/shard placement, shard files, manifest.json, rejected.jsonl.

Placement is a function of the record id alone (validation if the id's first 64 bits, read as
a fraction, fall below --validation-fraction; shard = the next 64 bits modulo N), and each
shard file is written whole by one call with its records sorted by id, so the bytes of every
file depend only on the set of records, not on how the work was split. Records of a
hard-negative group (`Record.group`) are placed by a hash of the group instead, and sorted by
(group, id): a group's records share a split and a shard and lie next to each other.

A split that has records gets all N of its shard files (some possibly empty); shard files of
an earlier run that this run does not produce (another N, a split now empty) are removed.

Every file is written through Beam's FileSystems (`filesystem.py`), so the output directory can
be a bucket. A shard is built in a worker-local temporary file (ArrayRecord writes a local file)
and copied into place whole; a retried or duplicated bundle never leaves a half-written shard.

    python -c "from data_pipeline import write; print(write.place('0123abcd' * 4, 8, 0.2, False))"
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from typing import Any

from data_pipeline import filesystem
from reasonclip_jax.data import records

SHARD_OPTIONS = "group_size:1"  # one record per chunk: random access for Grain
MANIFEST = "manifest.json"
REJECTED = "rejected.jsonl"


def place(
    record_id: str, num_shards: int, validation_fraction: float, eval_only: bool
) -> tuple[str, int]:
    """(split, shard) of a record: "test" for evaluation sets, else "train" or "validation"."""
    if eval_only:
        split = "test"
    else:
        split = "validation" if int(record_id[:16], 16) < validation_fraction * 2**64 else "train"
    return split, int(record_id[16:32], 16) % num_shards


def placement_id(record_id: str, group: str) -> str:
    """What `place` hashes: the record id, or for a grouped record a hash of its group."""
    return hashlib.sha256(f"group\0{group}".encode()).hexdigest()[:32] if group else record_id


def order_key(record_id: str, group: str) -> str:
    """A record's sort key within its shard: by id, a group's records together."""
    return f"{group}\0{record_id}" if group else record_id


def write_shard(
    directory: str, split: str, shard: int, num_shards: int, items: Iterable[tuple[str, bytes]]
) -> str:
    """Writes (sort key, encoded record) pairs as one shard file, sorted by key (`order_key`);
    returns its name."""
    from array_record.python.array_record_module import ArrayRecordWriter

    name = records.shard_name(split, shard, num_shards)
    with tempfile.TemporaryDirectory(prefix="shard-") as local:
        tmp = os.path.join(local, name)
        writer = ArrayRecordWriter(tmp, SHARD_OPTIONS)
        for _, data in sorted(items, key=lambda item: item[0]):
            writer.write(data)
        writer.close()
        filesystem.put_file(tmp, filesystem.join(directory, name))
    return name


def rejection_line(
    location: str, reason: str, detail: str, set_index: int | None = None
) -> dict[str, Any]:
    """A line of rejected.jsonl: a whole row, or (with "set") one benchmark set of a kept row."""
    line: dict[str, Any] = {"location": location, "reason": reason, "detail": detail}
    if set_index is not None:
        line["set"] = set_index
    return line


def finalize(
    directory: str,
    header: dict[str, Any],
    input_rows: int,
    summary: dict[str, Any],
    rejections: list[dict[str, Any]],
    written: list[str],
    num_shards: int,
) -> dict[str, Any]:
    """Completes a shard directory once every shard is written; returns the manifest."""
    splits = summary["splits"]
    expected = {records.shard_name(s, i, num_shards) for s in splits for i in range(num_shards)}
    for name in sorted(expected - set(written)):
        write_shard(directory, *_parse_shard_name(name), items=())
    shards = filesystem.match(filesystem.join(directory, records.shard_pattern("*")))
    filesystem.delete(p for p in shards if p.rsplit("/", 1)[-1] not in expected)
    filesystem.remove_temporaries(directory)

    rejections = sorted(
        rejections,
        key=lambda r: (records.natural_key(r["location"]), r.get("set", -1), r["reason"],
                       r["detail"]),
    )
    filesystem.write_bytes(
        filesystem.join(directory, REJECTED),
        b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rejections),
    )
    reasons = collections.Counter(r["reason"] for r in rejections)
    manifest = {
        "format_version": records.FORMAT_VERSION,
        **header,
        "num_shards": num_shards,
        "input_rows": input_rows,
        "written": sum(splits.values()),
        "rejected": sum("set" not in r for r in rejections),  # rows; input = written + rejected
        "dropped_sets": sum("set" in r for r in rejections),  # sets left out of kept rows
        "rejections": dict(sorted(reasons.items())),
        **summary,
    }
    filesystem.write_bytes(
        filesystem.join(directory, MANIFEST),
        json.dumps(manifest, indent=2, ensure_ascii=False).encode() + b"\n",
    )
    return manifest


def read_manifest(directory: str) -> dict[str, Any]:
    """The manifest.json a build wrote into `directory`."""
    return json.loads(filesystem.read_bytes(filesystem.join(directory, MANIFEST)))


def _parse_shard_name(name: str) -> tuple[str, int, int]:
    split, shard, _, num_shards = name.removesuffix(".array_record").rsplit("-", 3)
    return split, int(shard), int(num_shards)
