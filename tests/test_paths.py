"""Paths on a disk and in a bucket (the local Cloud Storage emulator): one behaviour."""

import os

import pytest

from reasonclip_jax import paths
from reasonclip_jax.errors import UserError


def test_absolute_and_join(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.absolute("runs/a") == str(tmp_path / "runs" / "a")
    assert paths.absolute("gs://bucket/run/") == "gs://bucket/run"
    assert paths.join("gs://bucket", "run", "checkpoints") == "gs://bucket/run/checkpoints"
    assert paths.join("runs", "a") == os.path.join("runs", "a")
    assert paths.scheme("s3://b/x") == "s3" and paths.scheme("/x") is None
    with pytest.raises(UserError, match="unsupported scheme 'ftp://'"):
        paths.absolute("ftp://host/run")


def _appended(path: str) -> bytes:
    first = paths.AppendFile(path)
    first.write(b"a\n")
    first.write(b"b\n")
    assert not paths.Path(path).exists()  # nothing before a flush
    first.flush()
    first.write(b"c\n")
    first.close()
    resumed = paths.AppendFile(path)  # a restarted writer appends to what is there
    resumed.write(b"d\n")
    resumed.close()
    return paths.Path(path).read_bytes()


def test_append_file_on_a_disk(tmp_path):
    assert _appended(str(tmp_path / "log.jsonl")) == b"a\nb\nc\nd\n"


def test_write_bytes_replaces_a_file_whole(tmp_path):
    path = str(tmp_path / "m.json")
    paths.write_bytes(path, b"old")
    paths.write_text(path, "new")
    assert os.listdir(tmp_path) == ["m.json"] and paths.Path(path).read_text() == "new"


@pytest.mark.gcs
def test_append_file_in_a_bucket_equals_the_disk(gcs, tmp_path):
    assert _appended(gcs.uri("logs", "log.jsonl")) == _appended(str(tmp_path / "log.jsonl"))


@pytest.mark.gcs
def test_staged_writes_reach_the_bucket_only_when_complete(gcs):
    target = gcs.uri("staged", "export")
    with pytest.raises(RuntimeError), paths.staged(target) as local:
        os.makedirs(local)
        with open(os.path.join(local, "half.bin"), "wb") as f:
            f.write(b"x")
        raise RuntimeError("writer failed")
    assert gcs.objects("staged/") == []
    with paths.staged(target) as local:
        os.makedirs(os.path.join(local, "sub"))
        for name, data in (("a.json", b"{}"), ("sub/b.bin", b"\x00\x01")):
            with open(os.path.join(local, name), "wb") as f:
                f.write(data)
    assert gcs.objects("staged/") == ["staged/export/a.json", "staged/export/sub/b.bin"]
    with paths.staged(gcs.uri("staged", "one.npz")) as local, open(local, "wb") as f:
        f.write(b"npz")
    assert paths.Path(gcs.uri("staged", "one.npz")).read_bytes() == b"npz"


@pytest.mark.gcs
def test_local_copy_of_a_bucket_directory(gcs, tmp_path):
    for name, data in (("tok/spiece.model", b"sp"), ("tok/nested/x.json", b"[1]")):
        paths.Path(gcs.uri(name)).parent.mkdir(parents=True, exist_ok=True)
        paths.Path(gcs.uri(name)).write_bytes(data)
    local = paths.local_copy(gcs.uri("tok"))
    found = {os.path.relpath(os.path.join(r, f), local): paths.Path(r, f).read_bytes()
             for r, _, files in os.walk(local) for f in files}
    assert found == {"spiece.model": b"sp", os.path.join("nested", "x.json"): b"[1]"}
    assert paths.local_copy(str(tmp_path)) == str(tmp_path)  # a local path as it is
    with pytest.raises(UserError, match="does not exist"):
        paths.local_copy(gcs.uri("missing"))
    assert paths.rmtree(gcs.uri("tok")) is None and gcs.objects("tok/") == []
