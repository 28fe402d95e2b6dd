"""Reading webdataset tar shards: a sample is the run of adjacent files sharing a key.

webdataset writes a sample's files next to each other, named KEY.EXT ("dir/abc.seg.png" is
key "dir/abc", extension "seg.png"). `iter_tar` reads a shard as a stream, in member order,
and yields one (key, {extension: bytes}) per run; the preprocessing source `webdataset`
(data_pipeline/sources.py) and the zero-shot evaluator both read shards through it.

    python -c "from reasonclip_jax.data import webdataset as w; \\
print([(k, sorted(f)) for k, f in w.iter_tar('shard.tar')][:3])"
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator, Mapping
from typing import BinaryIO

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # preference order within a sample
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's own key/extension rule


def split_member(name: str) -> tuple[str, str] | None:
    """A member's sample key and lower-case extension: "d/ab.Seg.PNG" -> ("d/ab", "seg.png");
    None for a name without one (no dot in the file name, or a dot file)."""
    match = _MEMBER_NAME.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def iter_tar(source: str | BinaryIO) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The shard's samples in order: (key, {extension: bytes}) per run of adjacent files with
    one key; a key that comes back later starts a new sample, a repeated extension keeps the
    last file. Members that are not regular files, or have no key, are skipped. `source` is
    a path or an open binary file (read forward only).

    Raises what `tarfile` raises, after yielding the samples before the damage (the sample
    being read is lost): `tarfile.TarError` for a corrupt, truncated or non-tar file, OSError
    for a missing one.
    """
    key, files = None, {}
    # "r|*": a forward-only stream (any compression), so a shard is never seeked or indexed.
    where = {"name": source} if isinstance(source, str) else {"fileobj": source}
    with tarfile.open(mode="r|*", **where) as tar:
        for member in tar:
            parts = split_member(member.name) if member.isfile() else None
            if parts is None:
                continue
            if parts[0] != key:
                if key is not None:
                    yield key, files
                key, files = parts[0], {}
            files[parts[1]] = tar.extractfile(member).read()  # type: ignore[union-attr]
    if key is not None:
        yield key, files


def first_image(files: Mapping[str, bytes]) -> bytes | None:
    """The sample's image: its first file with an extension in IMAGE_EXTENSIONS order."""
    return next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
