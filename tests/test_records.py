"""The shard record format: deterministic round trip, corrupt input, manifest version."""

import json

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
