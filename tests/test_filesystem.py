"""The preprocessing's file access (Beam's FileSystems): a disk and a bucket (the local Cloud
Storage emulator) list, read and write alike; a file is in place whole or not at all."""

import contextlib
import os

import pytest

from data_pipeline import filesystem

LAYOUT = {"rows.jsonl": b"1\n", "sub/more.jsonl": b"2\n", "sub/deep/x.jsonl": b"3\n",
          "notes.txt": b"skip"}


def _listing(root: str) -> dict:
    """What `--input` finds for a directory, a glob, a recursive glob and one file, as names
    relative to the root it reports."""
    out = {}
    for pattern in ("", "/*.jsonl", "/**.jsonl", "/rows.jsonl"):
        found_root, files = filesystem.list_inputs(root + pattern, (".jsonl",))
        out[pattern] = sorted(filesystem.relative(f, found_root) for f in files)
    return out


def test_inputs_on_a_disk(tmp_path):
    for name, data in LAYOUT.items():
        os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
        (tmp_path / name).write_bytes(data)
    assert _listing(str(tmp_path)) == {
        "": ["rows.jsonl", "sub/deep/x.jsonl", "sub/more.jsonl"],
        "/*.jsonl": ["rows.jsonl"],
        "/**.jsonl": ["rows.jsonl", "sub/deep/x.jsonl", "sub/more.jsonl"],
        "/rows.jsonl": ["rows.jsonl"],
    }
    assert filesystem.read_bytes(str(tmp_path / "sub" / "more.jsonl")) == b"2\n"


@pytest.mark.gcs
def test_inputs_in_a_bucket_equal_the_disk(gcs, tmp_path):
    for name, data in LAYOUT.items():
        gcs.write(f"inputs/{name}", data)
        os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
        (tmp_path / name).write_bytes(data)
    assert _listing(gcs.uri("inputs")) == _listing(str(tmp_path))
    assert filesystem.read_bytes(gcs.uri("inputs", "sub", "more.jsonl")) == b"2\n"
    with pytest.raises(Exception) as missing:  # noqa: PT011 (the bucket client's own error)
        filesystem.read_bytes(gcs.uri("inputs", "nothing.jpg"))
    assert filesystem.is_missing(missing.value)


def _write_whole(directory: str, refuse) -> None:
    path = filesystem.join(directory, "train-00000-of-00001.array_record")
    filesystem.write_bytes(path, b"old")
    with refuse(), pytest.raises(Exception):  # noqa: B017, PT011
        filesystem.write_bytes(path, b"new bytes")  # dies before the new file is in place
    assert filesystem.read_bytes(path) == b"old"
    filesystem.write_bytes(path, b"new bytes")
    assert filesystem.read_bytes(path) == b"new bytes"


def test_a_failed_write_leaves_the_old_file_on_a_disk(tmp_path, monkeypatch):
    @contextlib.contextmanager
    def refuse():  # the write dies as it renames its temporary file into place
        def killed(*args):
            raise OSError("killed")

        with monkeypatch.context() as patch:
            patch.setattr(os, "rename", killed)
            yield

    _write_whole(str(tmp_path), refuse)
    assert sorted(os.listdir(tmp_path)) == ["train-00000-of-00001.array_record"]


@pytest.mark.gcs
def test_a_failed_write_leaves_the_old_object_in_a_bucket(gcs):
    # Beam renames an object by copying it: refusing the copy kills the write before it.
    _write_whole(gcs.uri("whole"), lambda: gcs.refusing("whole/train-00000-of-00001.array_record"))
    assert gcs.objects("whole/") == ["whole/train-00000-of-00001.array_record"]


@pytest.mark.gcs
def test_temporaries_of_dead_attempts_are_removed(gcs, tmp_path):
    for directory in (str(tmp_path), gcs.uri("dead")):
        keep = filesystem.join(directory, "manifest.json")
        filesystem.write_bytes(keep, b"{}")
        filesystem.write_bytes(filesystem.join(directory, "x.array_record.tmp-0123"), b"half")
        filesystem.remove_temporaries(directory)
        assert filesystem.match(filesystem.join(directory, "*")) == [keep]
