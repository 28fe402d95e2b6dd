"""Training metrics: a writer (JSONL + TensorBoard, process 0 only) and model FLOPs for MFU.

    python -c "from reasonclip_jax import metrics, model; \
print(metrics.forward_flops_per_example(model.PRESETS['ViT-B-32'], 77) / 1e9)"
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from reasonclip_jax.model import ModelConfig


def _transformer_flops(tokens: int, width: int, layers: int, mlp: int) -> float:
    """Forward FLOPs (2 per multiply-add) of `layers` pre-LN blocks over `tokens` tokens."""
    dense = 2 * tokens * (4 * width * width + 2 * width * mlp)  # qkv + out, mlp in + out
    attention = 2 * 2 * tokens * tokens * width  # q k^T and weights v
    return layers * (dense + attention)


def image_forward_flops(c: ModelConfig) -> float:
    patches = (c.image_size // c.patch_size) ** 2
    embed = 2 * patches * 3 * c.patch_size**2 * c.vision_width
    return (embed + _transformer_flops(patches + 1, c.vision_width, c.vision_layers,
                                       c.vision_mlp_dim) + 2 * c.vision_width * c.embed_dim)


def text_forward_flops(c: ModelConfig, context_length: int) -> float:
    return (_transformer_flops(context_length, c.text_width, c.text_layers, c.text_mlp_dim)
            + 2 * c.text_width * c.embed_dim)


def forward_flops_per_example(c: ModelConfig, context_length: int, texts: int = 1) -> float:
    """One image and `texts` captions (stage 1 has two)."""
    return image_forward_flops(c) + texts * text_forward_flops(c, context_length)


def train_flops_per_example(c: ModelConfig, context_length: int, texts: int = 1) -> float:
    """Forward + backward ~ 3x forward (GradCache's extra forward is not model FLOPs)."""
    return 3 * forward_flops_per_example(c, context_length, texts)


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
