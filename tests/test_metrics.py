"""The metric writer: JSONL rows and TensorBoard events."""

import json

from reasonclip_jax.train import metrics


def test_writer_writes_jsonl_and_tensorboard(tmp_path):
    writer = metrics.MetricWriter(str(tmp_path))
    writer.write(5, {"loss": 1.5, "acc": 0.25})
    writer.write(10, {"loss": 1.0})
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 5, "loss": 1.5, "acc": 0.25}, {"step": 10, "loss": 1.0}]
    events = list((tmp_path / "tensorboard").iterdir())
    assert events and events[0].name.startswith("events.out.tfevents")
