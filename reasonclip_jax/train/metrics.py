"""The metric writer: scalars to JSONL and TensorBoard, from process 0 only.

    python -c "from reasonclip_jax.train import metrics; w = metrics.MetricWriter('/tmp/m'); \
w.write(1, {'loss': 0.5}); w.close()"
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


class MetricWriter:
    """Scalars to `workdir/metrics.jsonl` and TensorBoard events, from process 0 only."""

    def __init__(self, workdir: str):
        self.active = jax.process_index() == 0
        self._jsonl = self._tb = None
        if self.active:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        if not self.active:
            return
        values = {k: float(np.asarray(v)) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()
        for k, v in values.items():
            self._tb.add_scalar(k, v, step)
        self._tb.flush()

    def close(self) -> None:
        if self.active:
            self._jsonl.close()
            self._tb.close()
