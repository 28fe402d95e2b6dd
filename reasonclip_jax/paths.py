"""Paths on a local disk or in a bucket, through one abstraction: `etils.epath`.

A path with a scheme (`gs://bucket/run`; `s3://` and `az://` too, the schemes etils.epath
reaches through fsspec) is used as it is; any other is a local path, made absolute. Orbax
writes checkpoints through the same library, so a workdir, a checkpoint, `init_from` or an
export can live in a bucket as well as on a disk.

Object stores differ from a disk in two ways this module hides:
- no appending: `AppendFile` (metrics.jsonl, TensorBoard events, the record-index log)
  appends on a disk, and on a bucket rewrites the object whole at each flush;
- no renames: `staged` gives writers that need a local file (safetensors, torch, numpy) a
  temporary one, copied into place when they are done; one object is written whole or not
  at all, so readers never see a part of it.

    python -c "from reasonclip_jax import paths; print(paths.absolute('runs/a'), \
paths.absolute('gs://bucket/run'))"
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

from etils import epath

from reasonclip_jax.errors import UserError

SCHEMES = ("gs", "s3", "az")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path: str | os.PathLike) -> str | None:
    """"gs" for `gs://bucket/x`, None for a local path."""
    match = _SCHEME.match(os.fspath(path))
    return match.group(1) if match else None


def is_remote(path: str | os.PathLike) -> bool:
    return scheme(path) is not None


def absolute(path: str | os.PathLike) -> str:
    """A remote path as it is (its scheme checked), a local one made absolute."""
    path = os.fspath(path)
    found = scheme(path)
    if found is None:
        return os.path.abspath(path)
    if found not in SCHEMES:
        raise UserError(f"{path}: unsupported scheme '{found}://'; use a local path or one "
                        f"of {', '.join(s + '://' for s in SCHEMES)}")
    return path.rstrip("/")


def Path(path: str | os.PathLike, *parts: str) -> epath.Path:  # noqa: N802 (like a class)
    """An `epath.Path` of `absolute(path)` (joined with `parts`)."""
    return epath.Path(absolute(path), *parts)


def join(path: str | os.PathLike, *parts: str) -> str:
    """`os.path.join` that keeps a scheme's `//` (`gs://bucket` + `run` -> `gs://bucket/run`)."""
    return os.fspath(epath.Path(os.fspath(path), *parts)) if is_remote(path) else os.path.join(
        path, *parts)


def makedirs(path: str | os.PathLike) -> None:
    """Creates a directory and its parents (on a bucket: nothing to create, it is a prefix)."""
    Path(path).mkdir(parents=True, exist_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replaces the file at `path` with `data`; a reader sees the old or the new file whole
    (a local file is written beside and renamed, an object is written in one request)."""
    if is_remote(path):
        Path(path).write_bytes(data)
        return
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


class AppendFile:
    """A file written by appending (`write`), made durable by `flush` and `close`.

    On a disk each flush appends to the file. An object store cannot append: each flush
    writes the object again, whole, holding what it held when first flushed plus every
    write since. Only one writer per file (a process of its own).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.remote = is_remote(path)
        self._pending: list[bytes] = []
        self._content: bytes | None = None  # remote: the whole object as last written

    def write(self, data: bytes) -> None:
        self._pending.append(bytes(data))

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        if self.remote:
            if self._content is None:
                self._content = self.path.read_bytes() if self.path.exists() else b""
            self._content += data
            self.path.write_bytes(self._content)
        else:
            with open(self.path, "ab") as f:
                f.write(data)
        self._pending.clear()

    def close(self) -> None:
        self.flush()


@contextlib.contextmanager
def staged(path: str | os.PathLike) -> Iterator[str]:
    """A local path to write `path` through: `path` itself on a disk; for a remote `path`, a
    temporary file or directory whose contents are copied to `path` when the block ends
    without an error (a directory: file by file, each object whole)."""
    if not is_remote(path):
        yield os.fspath(path)
        return
    target = Path(path)
    with tempfile.TemporaryDirectory(prefix="reasonclip-stage-") as tmp:
        local = os.path.join(tmp, target.name)
        yield local
        if os.path.isdir(local):
            upload_tree(local, target)
        elif os.path.exists(local):
            target.parent.mkdir(parents=True, exist_ok=True)
            copy_file(local, target)


def files_under(directory: str | os.PathLike) -> Iterator[epath.Path]:
    """Every file below `directory`, at any depth (epath's `walk` drops a bucket's scheme)."""
    for entry in sorted(Path(directory).iterdir()):
        if entry.is_dir():
            yield from files_under(entry)
        else:
            yield entry


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copies one file between any two places (disk or bucket), streamed; an object appears
    when it is complete."""
    with Path(src).open("rb") as reader, Path(dst).open("wb") as writer:
        shutil.copyfileobj(reader, writer, 16 << 20)


def upload_tree(local_dir: str, target: str | os.PathLike) -> None:
    """Copies every file under `local_dir` to the same relative path under `target`."""
    target = Path(target)
    for root, _, files in os.walk(local_dir):
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), local_dir)
            dst = target / relative
            dst.parent.mkdir(parents=True, exist_ok=True)
            copy_file(os.path.join(root, name), dst)


def rmtree(path: str | os.PathLike) -> None:
    """Removes a directory (or prefix) and everything under it; nothing if absent."""
    target = Path(path)
    if is_remote(path):
        if target.exists():
            target.rmtree()
    else:
        shutil.rmtree(target, ignore_errors=True)


_LOCAL_COPIES: dict[str, str] = {}


def local_copy(path: str | os.PathLike) -> str:
    """A local path with the contents of `path`: `path` itself on a disk; a remote file or
    directory is downloaded once per process into a temporary directory, deleted at exit.
    For readers that need a local file (torch.load, SentencePiece)."""
    if not is_remote(path):
        return os.fspath(path)
    source = Path(path)
    key = os.fspath(source)
    if key not in _LOCAL_COPIES:
        tmp = tempfile.mkdtemp(prefix="reasonclip-copy-")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        local = os.path.join(tmp, source.name)
        if source.is_dir():
            for src in files_under(source):
                dst = os.path.join(local, os.fspath(src)[len(key) + 1:])
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                copy_file(src, dst)
        elif source.exists():
            copy_file(source, local)
        else:
            raise UserError(f"{path} does not exist")
        _LOCAL_COPIES[key] = local
    return _LOCAL_COPIES[key]
