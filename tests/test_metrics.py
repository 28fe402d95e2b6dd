"""Model FLOPs against the recipe's published per-sample figures, and the metric writer."""

import json

import pytest

from reasonclip_jax import metrics
from reasonclip_jax.model import PRESETS


@pytest.mark.parametrize("preset, image_gflops, text_gflops", [
    ("ViT-B-32", 8.82, 5.96), ("ViT-B-16", 35.13, 5.96), ("ViT-L-14", 162.03, 13.3),
])
def test_forward_flops_match_published_figures(preset, image_gflops, text_gflops):
    c = PRESETS[preset]
    assert metrics.image_forward_flops(c) / 1e9 == pytest.approx(image_gflops, rel=0.01)
    assert metrics.text_forward_flops(c, 77) / 1e9 == pytest.approx(text_gflops, rel=0.01)
    both = metrics.forward_flops_per_example(c, 77, texts=2)
    assert metrics.train_flops_per_example(c, 77, texts=2) == pytest.approx(3 * both)


def test_writer_writes_jsonl_and_tensorboard(tmp_path):
    writer = metrics.MetricWriter(str(tmp_path))
    writer.write(5, {"loss": 1.5, "acc": 0.25})
    writer.write(10, {"loss": 1.0})
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 5, "loss": 1.5, "acc": 0.25}, {"step": 10, "loss": 1.0}]
    events = list((tmp_path / "tensorboard").iterdir())
    assert events and events[0].name.startswith("events.out.tfevents")
