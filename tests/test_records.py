"""The shard record format: deterministic round trip, corrupt input, manifest version."""

import dataclasses
import json
import struct

import pytest

from reasonclip_jax.data import records
from reasonclip_jax.errors import UserError


def _record() -> records.Record:
    return records.Record(
        id="abc", source="reasonclip-s2", key="f.parquet:3", image=b"\xff\xd8jpeg-bytes",
        width=64, height=48, desc=("a cup on a table",), reason=("the tea is hot ✓",),
        cat_caption="steam rises, so it is hot", cat_label=1, image_labels=(0, 1, 4),
        sets=({"tag": "A", "gt": "hot", "neg": ["a", "b", "c", "d"]},),
    )


def test_round_trip_is_exact_and_deterministic():
    data = records.encode_record(_record())
    assert data[:4] == b"RCR1"
    assert records.encode_record(_record()) == data
    assert records.decode_record(data) == _record()


@pytest.mark.parametrize("data", [b"", b"XXXX\x00\x00\x00\x00", b"RCR1\xff\x00\x00\x00{}",
                                  b"RCR1\x02\x00\x00\x00\xff\xfe"])
def test_corrupt_records_raise_value_error(data):
    with pytest.raises(ValueError):
        records.decode_record(data)


def test_manifest_version_is_checked(tmp_path):
    with pytest.raises(UserError, match="no manifest.json"):
        records.read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(UserError, match="version 99, this code reads version 1"):
        records.read_manifest(str(tmp_path))
    assert records.shard_name("train", 3, 16) == "train-00003-of-00016.array_record"


def test_benchmark_fields_round_trip():
    record = records.Record(
        id="abc", source="rclip-bench", key="v1.parquet:0", image=b"\x89PNG-bytes", width=10,
        height=10, sets=({"tag": "Att.", "gt": "g", "neg": ["a", "b", "c", "d"]},),
        source_id="007", image_name="test_01.jpg", text="a dog", version="v1", set_index=(3,),
        exif_transpose=True,
    )
    assert records.decode_record(records.encode_record(record)) == record


def _old_format(record: records.Record) -> bytes:
    """The encoding before the optional keys existed: exactly these 11 keys."""
    keys = ("id", "source", "key", "width", "height", "desc", "reason", "cat_caption",
            "cat_label", "image_labels", "sets")
    header = {k: getattr(record, k) for k in keys}
    for k in ("desc", "reason", "image_labels", "sets"):
        header[k] = list(header[k])
    blob = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return b"RCR1" + struct.pack("<I", len(blob)) + blob + record.image


def test_old_records_decode_with_the_new_fields_empty_and_encode_the_same():
    old = _old_format(_record())
    decoded = records.decode_record(old)
    assert decoded == _record()
    assert (decoded.source_id, decoded.image_name, decoded.text, decoded.version) == ("",) * 4
    assert decoded.set_index == () and decoded.exif_transpose is False and decoded.group == ""
    # A record without the new fields writes the bytes it always did (training shards, hashes).
    assert records.encode_record(_record()) == old


def test_group_round_trips():
    record = dataclasses.replace(_record(), group="scenes-0-of8-00000003")
    assert records.decode_record(records.encode_record(record)) == record
