"""The study report from run directories alone: CSV, Markdown table and plots."""

import csv
import json
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from reasonclip_jax.errors import UserError
from reasonclip_jax.scaling import report

GiB = 2**30
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_run(root, loss, batch, rates, evals, peak_gib, steps=(10, 10)):
    """A run directory as the sweep and the trainer leave it."""
    name = f"stage1-{loss}-gather-b{batch}"
    run = os.path.join(root, name)
    os.makedirs(run)
    point = dict(batch_size=batch, stage="stage1", loss=loss, loss_impl="gather",
                 lr_scale=(batch / 32) ** 0.5, micro_batches=1)
    with open(os.path.join(run, "run.json"), "w") as f:
        json.dump(dict(name=name, point=point, fingerprint="x",
                       compiled_peak_bytes=int(peak_gib * GiB)), f)
    with open(os.path.join(run, "config.json"), "w") as f:
        json.dump(dict(total_steps=steps[1]), f)
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        for i, rate in enumerate(rates):
            f.write(json.dumps(dict(step=i + 1, loss=5.0 - i, samples_per_s=rate,
                                    step_time_s=batch / rate)) + "\n")
        for step, values in evals:
            f.write(json.dumps(dict(step=step, **values)) + "\n")
    return name


@pytest.fixture
def study(tmp_path):
    root = str(tmp_path / "study")
    os.makedirs(root)
    evals = lambda acc, loss: [  # noqa: E731
        (5, {"bench/accuracy": 0.1, "validation/loss": 9.0, "validation/num_batches": 3.0}),
        (10, {"bench/accuracy": acc, "bench/acc_S": acc / 2, "validation/loss": loss,
              "validation/num_batches": 3.0})]
    write_run(root, "softmax", 64, [10.0, 50.0, 70.0, 60.0], evals(0.3, 4.0), 1.5)
    write_run(root, "softmax", 32, [5.0, 40.0], evals(0.25, 4.5), 1.0)
    write_run(root, "sigmoid", 32, [8.0, 30.0, 20.0], evals(0.2, 0.7), 1.1)
    write_run(root, "sigmoid", 64, [9.0], [], 1.6, steps=(1, 10))  # interrupted, no eval yet
    return root


def test_rows_from_run_directories(study):
    rows = {r["run"]: r for r in report.collect(study)}
    soft64 = rows["stage1-softmax-gather-b64"]
    # The last evaluation; counts are bookkeeping, not results.
    assert soft64["bench/accuracy"] == 0.3 and soft64["validation/loss"] == 4.0
    assert soft64["eval_step"] == 10 and "validation/num_batches" not in soft64
    # samples/s: the median over windows after the first (which holds the compile).
    assert soft64["samples_per_s"] == 60.0
    assert rows["stage1-softmax-gather-b32"]["samples_per_s"] == 40.0
    assert rows["stage1-sigmoid-gather-b64"]["samples_per_s"] == 9.0  # one window only
    assert soft64["compiled_peak_gib"] == pytest.approx(1.5)
    assert soft64["train_loss"] == 2.0 and soft64["steps_done"] == 10
    assert rows["stage1-sigmoid-gather-b64"]["steps_done"] == 1
    order = [(r["loss"], r["batch_size"]) for r in report.collect(study)]
    assert order == [("sigmoid", 32), ("sigmoid", 64), ("softmax", 32), ("softmax", 64)]


def test_written_files(study):
    paths = report.write_report(study)
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4
    row = next(r for r in table if r["run"] == "stage1-softmax-gather-b32")
    assert float(row["bench/accuracy"]) == 0.25 and float(row["bench/acc_S"]) == 0.125
    assert float(row["lr_scale"]) == 1.0 and row["micro_batches"] == "1"
    with open(paths["md"]) as f:
        md = f.read()
    header = next(line for line in md.splitlines() if line.startswith("| stage"))
    assert "bench/accuracy" in header and "validation/loss" in header
    assert "acc_S" not in header  # the table shows the headline metrics; the CSV has all
    assert "| stage1 | softmax | gather | 64 | 1 | 1.414 | 10 | 0.3 | 4 |" in md
    assert "Not finished: stage1-sigmoid-gather-b64" in md
    image = matplotlib.image.imread(paths["png"])
    assert image.ndim == 3 and image.shape[0] > 200 and np.ptp(image) > 0


def test_series_are_one_line_per_loss(study):
    lines = report._series(report.collect(study))
    assert sorted(lines) == ["sigmoid", "softmax"]
    assert [r["batch_size"] for r in lines["softmax"]] == [32, 64]


def test_report_command(study, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "reasonclip_jax.sweep", "--report", study],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.split() == [os.path.join(study, f"results.{k}") for k in ("csv", "md", "png")]
    bad = subprocess.run([sys.executable, "-m", "reasonclip_jax.sweep", "--report",
                          str(tmp_path / "empty")], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: no runs")


def test_no_runs_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no runs under"):
        report.collect(str(tmp_path))


@pytest.mark.gcs
def test_report_of_a_study_in_a_bucket(study, gcs):
    """The same report from run directories in a bucket (the emulator), written there."""
    from gcs_emulator import upload_tree

    local = report.write_report(study)
    upload_tree(gcs, study, "studies/study", skip=())
    for name in ("results.csv", "results.md", "results.png"):  # written anew below
        gcs._storage.delete_file(gcs.bucket, f"studies/study/{name}")
    written = report.write_report(gcs.uri("studies", "study"))
    assert written == {k: gcs.uri("studies", "study", f"results.{k}")
                       for k in ("csv", "md", "png")}
    for k in ("csv", "md"):
        with open(local[k], "rb") as f:
            assert gcs.read(f"studies/study/results.{k}") == f.read()
    assert gcs.read("studies/study/results.png").startswith(b"\x89PNG")
