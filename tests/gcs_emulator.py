"""A Cloud Storage emulator on 127.0.0.1 for the tests: real `gs://` paths, no cloud.

`gcp-storage-emulator` serves the JSON API in a thread of the test process; every client
the project uses is pointed at it by environment variables (`env`), which `start()` sets
in this process and a test passes on to the subprocesses it starts:

    google-cloud-storage (Beam's GCS IO)  STORAGE_EMULATOR_HOST
    gcsfs (etils.epath's gs:// backend)   STORAGE_EMULATOR_HOST, anonymous token
    tensorstore (orbax's arrays)          TENSORSTORE_GCS_HTTP_URL, a test token

No request leaves the machine: Google's metadata server is redirected to a closed local
port, and gcsfs's storage-layout lookup (gRPC, which the emulator does not serve) is off.
Downloads carry the object's generation (`x-goog-generation`), as Cloud Storage's do:
tensorstore reads it to know which version of an OCDBT manifest it holds.

    with GcsEmulator() as gcs:
        epath.Path(f"gs://{gcs.bucket}/x").write_text("hi")
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator

BUCKET = "bucket"


def _with_generation_headers() -> None:
    """Adds Cloud Storage's generation headers to the emulator's downloads (once)."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    download = objects.download
    if getattr(download, "with_generation", False):
        return

    def download_with_generation(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"],
                                       request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
        except NotFound:
            pass  # the download answers 404 itself
        return download(request, response, storage, *args, **kwargs)

    download_with_generation.with_generation = True
    objects.download = download_with_generation  # `objects.get` calls it for alt=media
    for _, handlers in server.HANDLERS:
        for method, handler in handlers.items():
            if handler is download:
                handlers[method] = download_with_generation


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsEmulator:
    """One in-memory emulator with one bucket; `on_create` sees every object written."""

    def __init__(self, bucket: str = BUCKET) -> None:
        import logging

        from gcp_storage_emulator.server import create_server

        # It logs every lookup of a missing object (orbax probes for optional files).
        logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
        _with_generation_headers()
        self.bucket, self.port = bucket, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = create_server("127.0.0.1", self.port, in_memory=True,
                                     default_bucket=bucket)
        self._storage = self._server._storage
        self._hooks: list[Callable[[str, str], None]] = []
        self._lock = threading.Lock()
        create_file = self._storage.create_file

        def create_file_with_hooks(bucket_name, file_name, *args, **kwargs):
            with self._lock:
                hooks = list(self._hooks)
            for hook in hooks:  # before the object exists: a hook can stop a writer first
                hook(bucket_name, file_name)
            return create_file(bucket_name, file_name, *args, **kwargs)

        self._storage.create_file = create_file_with_hooks
        self._saved_env: dict[str, str | None] = {}

    @property
    def env(self) -> dict[str, str]:
        closed = f"127.0.0.1:{_free_port()}"  # nothing listens there
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "FSSPEC_GCS_TOKEN": "anon",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "GOOGLE_CLOUD_PROJECT": "emulator",
            "NO_GCE_CHECK": "true",
            "GCE_METADATA_HOST": closed,
            "GCE_METADATA_IP": closed,
        }

    def start(self) -> GcsEmulator:
        import fsspec.config

        self._server.start()
        for key, value in self.env.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        # fsspec read FSSPEC_* variables when it was imported, maybe before this.
        self._saved_conf = dict(fsspec.config.conf.get("gcs", {}))
        fsspec.config.conf.setdefault("gcs", {})["token"] = "anon"
        return self

    def stop(self) -> None:
        import fsspec.config

        self._server.stop()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        fsspec.config.conf["gcs"] = self._saved_conf

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def on_create(self, hook: Callable[[str, str], None]) -> Callable[[], None]:
        """Calls `hook(bucket, name)` before each object is stored; returns its remover."""
        with self._lock:
            self._hooks.append(hook)

        def remove() -> None:
            with self._lock:
                self._hooks.remove(hook)

        return remove

    @contextlib.contextmanager
    def refusing(self, name: str) -> Iterator[None]:
        """Writing the object `name` fails, as if its writer died just before: the emulator
        answers 404, which no client retries, and the object never exists."""
        from gcp_storage_emulator.exceptions import NotFound

        def refuse(bucket: str, written: str) -> None:
            if written == name:
                raise NotFound(name)

        remove = self.on_create(refuse)
        try:
            yield
        finally:
            remove()

    def objects(self, prefix: str = "") -> list[str]:
        """Names of the bucket's objects under `prefix` (no `gs://bucket/`), sorted."""
        items, _ = self._storage.get_file_list(self.bucket, prefix=prefix or None)
        return sorted(item["name"] for item in items)

    def read(self, name: str) -> bytes:
        """The bytes of the object `name` (no `gs://bucket/`)."""
        return self._storage.get_file(self.bucket, name)

    def write(self, name: str, data: bytes) -> None:
        """Stores `data` as the object `name`, as a finished upload would."""
        from gcp_storage_emulator.handlers import objects

        obj = objects._make_object_resource(self.url, self.bucket, name,
                                            "application/octet-stream", str(len(data)))
        objects._checksums(data, obj)  # the hashes a download sends back
        self._storage.create_file(self.bucket, name, data, obj)

    def uri(self, *parts: str) -> str:
        return "/".join([f"gs://{self.bucket}", *parts])


def upload_tree(gcs: GcsEmulator, local_dir: str, prefix: str, skip: tuple[str, ...] = ()
                ) -> None:
    """Every file under `local_dir` as an object `prefix/RELATIVE` (top-level names in
    `skip` left out)."""
    for root, dirs, files in os.walk(local_dir):
        if root == local_dir:
            dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                gcs.write(f"{prefix}/{os.path.relpath(path, local_dir)}", f.read())
