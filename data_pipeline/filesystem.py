"""The preprocessing's file access: Beam's `FileSystems`, so a local path and a bucket
(`gs://`, or any filesystem Beam has) are read and written alike, on any runner.

Inputs are listed and opened, and outputs written, through here only. A file is written
whole or not at all, as a reader sees it: its bytes go to a temporary name unique to the
attempt (a retried or duplicated bundle never writes over another), which is then renamed
into place (a rename on a disk; on an object store a server-side copy, whose new object
appears whole). Temporary names that a failed attempt left behind end in `.tmp-` and a
random suffix; `remove_temporaries` deletes them.

    python -c "from data_pipeline import filesystem as f; print(f.list_inputs('d', ('.jsonl',)))"
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Iterable
from typing import BinaryIO

_WILDCARD = re.compile(r"[*?\[]")
_TEMPORARY = ".tmp-"


def _fs():  # Beam is imported where files are touched (see build.py)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def is_remote(path: str) -> bool:
    return _fs().get_scheme(path) not in (None, "file")


def join(directory: str, *names: str) -> str:
    return _fs().join(directory, *names)


def relative(path: str, root: str) -> str:
    """`path` below `root`, '/'-separated (the same for a disk and a bucket)."""
    if is_remote(root):
        return posixpath.relpath(path.split("://", 1)[1], root.split("://", 1)[1])
    return os.path.relpath(path, root)


def match(pattern: str) -> list[str]:
    """Files matching a Beam glob (`*` within a directory, `**` across), sorted."""
    return sorted(m.path for m in _fs().match([pattern])[0].metadata_list)


def list_inputs(pattern: str, extensions: tuple[str, ...]) -> tuple[str, list[str]]:
    """(root, files) of `--input`: a directory (its files ending in `extensions`, at any
    depth), a glob, or one file. Names of rows are relative to the root."""
    if not _WILDCARD.search(pattern):
        below = match(pattern.rstrip("/") + "/**")
        if below or (not is_remote(pattern) and os.path.isdir(pattern)):
            return pattern.rstrip("/"), [p for p in below if p.endswith(extensions)]
        return _glob_root(pattern), match(pattern)
    return _glob_root(pattern), match(pattern)


def _glob_root(pattern: str) -> str:
    """The directory part of a glob before its first wildcard."""
    head = _WILDCARD.split(pattern, maxsplit=1)[0]
    if head.endswith("/"):
        return head.rstrip("/")
    return posixpath.dirname(head) if is_remote(head) else os.path.dirname(head) or "."


def open_read(path: str) -> BinaryIO:
    """The file's bytes as stored (no decompression by extension)."""
    from apache_beam.io.filesystem import CompressionTypes

    return _fs().open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def is_missing(error: BaseException) -> bool:
    """Whether reading failed because the file does not exist (a disk's or a bucket's)."""
    if isinstance(error, FileNotFoundError):
        return True
    try:
        from google.api_core import exceptions
    except ImportError:
        return False
    return isinstance(error, exceptions.NotFound)


def _create(path: str) -> BinaryIO:
    from apache_beam.io.filesystem import CompressionTypes

    return _fs().create(path, mime_type="application/octet-stream",
                        compression_type=CompressionTypes.UNCOMPRESSED)


def _into_place(write, path: str) -> None:
    tmp = f"{path}{_TEMPORARY}{uuid.uuid4().hex}"
    try:
        with _create(tmp) as out:
            write(out)
        _fs().rename([tmp], [path])  # replaces `path`: os.rename, or an object copy
    except BaseException:
        if _fs().exists(tmp):
            _fs().delete([tmp])
        raise


def write_bytes(path: str, data: bytes) -> None:
    """Writes `path` whole: to a temporary name, then renamed into place."""
    _into_place(lambda out: out.write(data), path)


def put_file(local_path: str, path: str) -> None:
    """Copies a finished local file to `path`, whole (as `write_bytes`)."""

    def copy(out: BinaryIO) -> None:
        with open(local_path, "rb") as f:
            shutil.copyfileobj(f, out, 16 << 20)

    _into_place(copy, path)


def mkdirs(directory: str) -> None:
    """Creates a local directory and its parents; a bucket's prefixes need nothing."""
    if not is_remote(directory):
        os.makedirs(directory, exist_ok=True)


def delete(paths: Iterable[str]) -> None:
    paths = list(paths)
    if paths:
        _fs().delete(paths)


def remove_temporaries(directory: str) -> None:
    """Deletes what failed attempts left in `directory` (see the module docstring)."""
    delete(match(join(directory, f"*{_TEMPORARY}*")))
