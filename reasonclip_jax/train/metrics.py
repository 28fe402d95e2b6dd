"""The metric writer: scalars to JSONL and TensorBoard, from process 0 only.

    python -c "from reasonclip_jax.train import metrics; w = metrics.MetricWriter('/tmp/m'); \
w.write(1, {'loss': 0.5}); w.close()"

The workdir may be a bucket (`gs://...`): both files go through `paths.AppendFile`, which
appends on a disk and rewrites the object at each flush on an object store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from reasonclip_jax import paths


class _EventFiles:
    """tensorboardX's writer factory for a scheme: its event files through `paths`."""

    def open(self, path: str) -> paths.AppendFile:
        return paths.AppendFile(path)

    def directory_check(self, path: str) -> None:
        paths.makedirs(path)


def _route_event_files(workdir: str) -> None:
    """tensorboardX writes `gs://` itself (google-cloud-storage) and no other scheme: send
    the workdir's scheme through `paths` instead, like every other file of a run."""
    from tensorboardX import record_writer

    scheme = paths.scheme(workdir)
    if scheme is not None:
        record_writer.register_writer_factory(scheme, _EventFiles())


class MetricWriter:
    """Scalars to `workdir/metrics.jsonl` and TensorBoard events, from process 0 only."""

    def __init__(self, workdir: str):
        self.active = jax.process_index() == 0
        self._jsonl = self._tb = None
        if self.active:
            workdir = paths.absolute(workdir)
            paths.makedirs(workdir)
            self._jsonl = paths.AppendFile(paths.join(workdir, "metrics.jsonl"))
            from tensorboardX import SummaryWriter

            _route_event_files(workdir)
            self._tb = SummaryWriter(paths.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        if not self.active:
            return
        values = {k: float(np.asarray(v)) for k, v in scalars.items()}
        self._jsonl.write((json.dumps({"step": step, **values}) + "\n").encode())
        self._jsonl.flush()
        for k, v in values.items():
            self._tb.add_scalar(k, v, step)
        self._tb.flush()

    def close(self) -> None:
        if self.active:
            self._jsonl.close()
            self._tb.close()
