"""The metric writer: JSONL rows and TensorBoard events, on a disk and in a bucket."""

import json
import struct

import pytest
from tensorboardX.proto import event_pb2

from reasonclip_jax import paths
from reasonclip_jax.train import metrics


def scalar_events(data: bytes) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in an event file (TFRecord framing: length,
    its crc, the record, its crc)."""
    out, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
        offset += 12 + length + 4
        out.extend((event.step, v.tag, v.simple_value) for v in event.summary.value)
    return out


def _write_run(workdir: str) -> None:
    writer = metrics.MetricWriter(workdir)
    writer.write(5, {"loss": 1.5, "acc": 0.25})
    writer.write(10, {"loss": 1.0})
    writer.close()


def _read_run(workdir: str) -> tuple[list[dict], list[tuple[int, str, float]]]:
    rows = [json.loads(line) for line in
            paths.Path(workdir, "metrics.jsonl").read_text().splitlines()]
    files = list(paths.Path(workdir, "tensorboard").iterdir())
    assert len(files) == 1 and files[0].name.startswith("events.out.tfevents")
    return rows, scalar_events(files[0].read_bytes())


def test_writer_writes_jsonl_and_tensorboard(tmp_path):
    _write_run(str(tmp_path))
    rows, events = _read_run(str(tmp_path))
    assert rows == [{"step": 5, "loss": 1.5, "acc": 0.25}, {"step": 10, "loss": 1.0}]
    assert events == [(5, "loss", 1.5), (5, "acc", 0.25), (10, "loss", 1.0)]


@pytest.mark.gcs
def test_a_bucket_workdir_gets_the_same_metrics_as_a_disk(gcs, tmp_path):
    from tensorboardX import record_writer

    workdir = gcs.uri("metrics-run")
    _write_run(workdir)
    # The event files went through the project's path layer, not tensorboardX's own client.
    assert isinstance(record_writer.REGISTERED_FACTORIES["gs"], metrics._EventFiles)
    assert _read_run(workdir) == _read_run_local(tmp_path)
    # A resumed run appends to metrics.jsonl, as on a disk.
    writer = metrics.MetricWriter(workdir)
    writer.write(15, {"loss": 0.5})
    writer.close()
    rows = paths.Path(workdir, "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [5, 10, 15]


def _read_run_local(tmp_path):
    _write_run(str(tmp_path))
    return _read_run(str(tmp_path))
