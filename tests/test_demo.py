"""Tests of the end-to-end demo: its summary arithmetic, and the seconds-long smoke run.

    .venv/bin/python -m pytest tests/test_demo.py
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from reasonclip_jax.tools import demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_interval95_is_the_student_t_interval():
    values = [0.1, 0.25, 0.19]
    mean, low, high = demo.interval95(values)
    sd = np.std(values, ddof=1)
    assert mean == pytest.approx(np.mean(values))
    assert high - mean == pytest.approx(4.303 * sd / math.sqrt(3), rel=1e-6)
    assert mean - low == pytest.approx(high - mean)
    one = demo.interval95([0.3])
    assert one[0] == 0.3 and math.isnan(one[1]) and math.isnan(one[2])


def _point(accuracy, r1):
    return {"step": 0, "accuracy": accuracy, "retrieval_r1": r1}


def _seed(seed, control, stage1, stage2, r1=(0.5, 0.45, 0.45)):
    return {"seed": seed, "control_at_S": _point(control[0], r1[0]),
            "control_at_2S": _point(control[1], r1[0]), "stage1_at_S": _point(stage1, r1[1]),
            "stage2_at_2S": _point(stage2, r1[2])}


def test_summary_gains_and_targets():
    good = [_seed(0, (0.2, 0.21), 0.4, 0.42), _seed(1, (0.19, 0.2), 0.38, 0.41),
            _seed(2, (0.21, 0.2), 0.39, 0.4)]
    summary = demo.summarize(good, 300)
    assert summary["gain_stage1"][0] == pytest.approx(np.mean([0.2, 0.19, 0.18]))
    assert summary["gain_stage2"][0] == pytest.approx(np.mean([0.21, 0.21, 0.2]))
    assert all(summary["targets"].values()), summary["targets"]
    table = demo.markdown(summary)
    assert "| stage 1 | 300 |" in table and "| control | 600 |" in table and "[x]" in table

    bad = [_seed(0, (0.26, 0.2), 0.3, 0.42, r1=(0.25, 0.1, 0.3))]
    targets = demo.summarize(bad, 300)["targets"]
    assert not any(targets.values()), targets


@pytest.mark.slow
def test_smoke_demo_writes_its_results_and_reruns_exactly(tmp_path):
    tables = []
    for run in ("a", "b"):
        workdir = tmp_path / run
        proc = subprocess.run(
            [sys.executable, "-m", "reasonclip_jax.demo", "--smoke", f"--workdir={workdir}"],
            cwd=REPO, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        table = (workdir / "results.md").read_text()
        assert table in proc.stdout  # the command prints the table it writes
        # One progress bar per run with its loss; besides it only the project's own INFO
        # lines (no library chatter, no warnings).
        assert "loss=" in proc.stderr
        lines = [line for line in re.split(r"[\r\n]", proc.stderr)
                 if line.strip() and not line.startswith("train:")]
        assert all(re.search(r" INFO (trainer|checkpoint): ", line) for line in lines), lines
        results = json.loads((workdir / "results.json").read_text())
        curves = results["per_seed"][0]["curves"]
        assert [p["step"] for p in curves["control"]] == [0, 1, 2, 3, 4]
        assert [p["step"] for p in curves["stage2"]] == [2, 3, 4]
        assert (workdir / "results.png").read_bytes()[:4] == b"\x89PNG"
        assert (workdir / "hf_export" / "config.json").exists()
        tables.append((table, results["summary"]))
    assert tables[0] == tables[1]


@pytest.mark.slow
def test_smoke_demo_on_the_tiny_siglip(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "reasonclip_jax.demo", "--smoke", "--backbone=siglip",
         f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "results.md").read_text() in proc.stdout
    run_config = json.loads((tmp_path / "seed0" / "runs" / "stage1" / "config.json").read_text())
    assert run_config["model"]["preset"] == "siglip-tiny"
    assert run_config["loss"]["kind"] == "sigmoid"
    exported = json.loads((tmp_path / "hf_export" / "config.json").read_text())
    assert exported["model_type"] == "siglip"
