"""Tests of the shared webdataset tar reader and of how its two callers handle damage.

    .venv/bin/python -m pytest -q tests/test_webdataset.py
"""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from data_pipeline import process, sources
from reasonclip_jax.data import webdataset
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators import zero_shot


def tar_bytes(members: list[tuple[str, bytes | None]]) -> bytes:
    """A tar of the members in order; data None makes a directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write(tmp_path, data: bytes, name: str = "shard.tar") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def read(path: str) -> list[tuple[str, dict[str, bytes]]]:
    return list(webdataset.iter_tar(path))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("abc.jpg", ("abc", "jpg")),
        ("dir/abc.seg.PNG", ("dir/abc", "seg.png")),  # the first dot splits; extension lowered
        ("v1.0/abc.txt", ("v1.0/abc", "txt")),  # dots in directories are part of the key
        ("./abc.jpg", ("./abc", "jpg")),
        ("noext", None),
        (".hidden", None),
        ("dir/", None),
    ],
)
def test_split_member(name, expected):
    assert webdataset.split_member(name) == expected


def test_adjacent_files_with_one_key_form_a_sample_in_tar_order(tmp_path):
    path = write(tmp_path, tar_bytes([
        ("b.jpg", b"B"), ("b.TXT", b"bt"),
        ("a.png", b"A"), ("a.json", b"{}"), ("a.cls", b"3"),
        ("dir/c.seg.png", b"C"),
    ]))
    assert read(path) == [
        ("b", {"jpg": b"B", "txt": b"bt"}),  # tar order, not sorted: b before a
        ("a", {"png": b"A", "json": b"{}", "cls": b"3"}),
        ("dir/c", {"seg.png": b"C"}),
    ]


def test_a_key_that_comes_back_starts_a_new_sample_and_a_repeated_extension_keeps_the_last(
    tmp_path,
):
    path = write(tmp_path, tar_bytes([
        ("a.jpg", b"1"), ("a.jpg", b"2"), ("b.jpg", b"3"), ("a.jpg", b"4"),
    ]))
    assert read(path) == [("a", {"jpg": b"2"}), ("b", {"jpg": b"3"}), ("a", {"jpg": b"4"})]


def test_members_without_a_key_are_skipped_and_do_not_split_a_sample(tmp_path):
    path = write(tmp_path, tar_bytes([
        ("a.jpg", b"A"), ("README", b"x"), (".DS_Store", b"x"), ("sub", None), ("a.txt", b"t"),
    ]))
    assert read(path) == [("a", {"jpg": b"A", "txt": b"t"})]


def test_empty_archive_and_compressed_archive(tmp_path):
    assert read(write(tmp_path, tar_bytes([]), "empty.tar")) == []
    members = [("k.webp", b"W"), ("k.cls", b"0")]
    gz = write(tmp_path, gzip.compress(tar_bytes(members)), "shard.tar.gz")
    assert read(gz) == [("k", {"webp": b"W", "cls": b"0"})]


def test_first_image_prefers_jpg_then_jpeg_png_webp():
    assert webdataset.first_image({"webp": b"w", "png": b"p", "txt": b"t"}) == b"p"
    assert webdataset.first_image({"jpeg": b"e", "jpg": b"j"}) == b"j"
    assert webdataset.first_image({"txt": b"t", "cls": b"1"}) is None


# Two samples; cutting inside the second one's image data truncates the archive there.
TWO_SAMPLES = [("a.jpg", b"x" * 2000), ("a.txt", b"first"), ("b.jpg", b"y" * 2000)]
CUT_IN_SECOND = 4608  # headers and data: a.jpg 0..2560, a.txt ..3584, b.jpg header ..4096


def test_truncated_tar_yields_the_samples_before_the_damage_then_raises(tmp_path):
    path = write(tmp_path, tar_bytes(TWO_SAMPLES)[:CUT_IN_SECOND])
    samples = webdataset.iter_tar(path)
    assert next(samples) == ("a", {"jpg": b"x" * 2000, "txt": b"first"})
    with pytest.raises(tarfile.ReadError):
        next(samples)


@pytest.mark.parametrize("data", [b"", b"not a tar file" * 100, tar_bytes(TWO_SAMPLES)[:1500]])
def test_unreadable_tar_raises_a_tar_error(tmp_path, data):
    with pytest.raises(tarfile.TarError):
        read(write(tmp_path, data))


def test_missing_file_raises_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read(str(tmp_path / "absent.tar"))


def test_preprocessing_source_turns_damage_into_one_unreadable_row(tmp_path):
    path = write(tmp_path, tar_bytes(TWO_SAMPLES)[:CUT_IN_SECOND])
    unit = sources.Unit(path=path, name="shard.tar")
    rows = list(sources.read_webdataset(unit, sources.SourceConfig()))
    assert [r.key for r in rows] == ["shard.tar:a", "shard.tar"]
    assert rows[0].image_bytes == b"x" * 2000 and rows[0].fields == {"desc": [b"first"]}
    reason, detail = rows[1].error
    assert reason == process.UNREADABLE_INPUT
    assert detail.startswith("after 1 rows: ReadError:")


def test_zero_shot_evaluator_turns_damage_into_a_user_error(tmp_path):
    good = write(tmp_path, tar_bytes([("k.jpg", b"J"), ("k.cls", b"1")]), "1.tar")
    bad = write(tmp_path, tar_bytes(TWO_SAMPLES)[:CUT_IN_SECOND], "2.tar")
    samples = zero_shot.iter_samples([good, bad])
    assert next(samples) == ("k", {"jpg": b"J", "cls": b"1"})
    assert next(samples)[0] == "a"
    with pytest.raises(UserError, match="cannot read webdataset shard .*2.tar"):
        next(samples)
