"""The study's report, from the run directories alone: results.csv, results.md, plots.

    python -m reasonclip_jax.sweep --report /tmp/study

For every `DIR/*/run.json` (written by the sweep) and the run's `metrics.jsonl` (written by
the trainer): the grid point, how far the run got, each evaluation metric at its last
evaluation (held-out loss, benchmark accuracy, ...), the training loss over its last logging
window, the median samples/s over the logging windows after the first (which holds the
compilation), and the compiled peak bytes per device of its update step. Plots (PNG): each
evaluation metric against the global batch, one line per loss (and implementation and
stage where the grid has several); samples/s and peak memory against the batch.

DIR may be a bucket (`gs://BUCKET/studies/NAME`), read and written through
`reasonclip_jax.paths`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from reasonclip_jax import paths
from reasonclip_jax.errors import UserError

RUN_RECORD = "run.json"
POINT = ("batch_size", "stage", "loss", "loss_impl", "lr_scale", "micro_batches")
PROGRESS = ("steps_done", "total_steps")
TRAIN = ("train_loss", "samples_per_s", "compiled_peak_gib")
# Evaluation bookkeeping, not results.
_COUNTS = ("/num_",)
# The headline metrics (the trainer's console line): the table and the plots; the CSV has all.
HEADLINE = ("/accuracy", "/loss", "_r1", "/top1")


def _metrics(run_dir: str) -> list[dict[str, float]]:
    path = paths.Path(run_dir, "metrics.jsonl")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _total_steps(run_dir: str) -> int | None:
    path = paths.Path(run_dir, "config.json")
    return int(json.loads(path.read_text())["total_steps"]) if path.exists() else None


def summarize(run_dir: str) -> dict[str, Any]:
    """One row of the report for one run directory."""
    record = json.loads(paths.Path(run_dir, RUN_RECORD).read_text())
    lines = _metrics(run_dir)
    # The trainer writes training windows (with step_time_s) and evaluations as separate lines.
    train = [m for m in lines if "step_time_s" in m]
    evals = [m for m in lines if "step_time_s" not in m]
    row: dict[str, Any] = {k: record["point"][k] for k in POINT}
    row["run"] = record["name"]
    row["steps_done"] = max((m["step"] for m in lines), default=0)
    row["total_steps"] = _total_steps(run_dir)
    row["train_loss"] = train[-1]["loss"] if train else math.nan
    rates = [m["samples_per_s"] for m in (train[1:] or train)]
    row["samples_per_s"] = float(np.median(rates)) if rates else math.nan
    row["compiled_peak_gib"] = record["compiled_peak_bytes"] / 2**30
    if evals:
        last = evals[-1]
        row.update({k: v for k, v in last.items()
                    if k != "step" and not any(c in k for c in _COUNTS)})
        row["eval_step"] = last["step"]
    return row


def collect(workdir: str) -> list[dict[str, Any]]:
    """Every run under `workdir`, ordered by the grid point."""
    root = paths.Path(workdir)
    run_dirs = sorted((str(p) for p in root.iterdir() if (p / RUN_RECORD).is_file()),
                      key=str) if root.is_dir() else []
    if not run_dirs:
        raise UserError(f"no runs under {workdir} (no */{RUN_RECORD}); give the --workdir of a "
                        "sweep")
    rows = [summarize(p) for p in run_dirs]
    return sorted(rows, key=lambda r: (r["stage"], r["loss"], r["loss_impl"], r["batch_size"]))


def metric_names(rows: Sequence[dict[str, Any]], headline: bool = False) -> list[str]:
    """The evaluation metrics any run reported, in first-seen order (`headline`: those the
    trainer's console line shows: accuracies, losses, R@1, top-1)."""
    known = set(POINT) | set(PROGRESS) | set(TRAIN) | {"run", "eval_step"}
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in known and k not in names]
    return [n for n in names if n.endswith(HEADLINE)] if headline else names


def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_csv(rows: Sequence[dict[str, Any]], path: str) -> None:
    columns = ["run", *POINT, *PROGRESS, *TRAIN, *metric_names(rows)]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    paths.write_text(path, text.getvalue())


def markdown_table(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> str:
    """One line per run: the grid point, steps, the metrics, samples/s and peak memory."""
    columns = ["stage", "loss", "loss_impl", "batch_size", "micro_batches", "lr_scale",
               "steps_done", *metrics, "train_loss", "samples_per_s", "compiled_peak_gib"]
    header = ["stage", "loss", "impl", "batch", "micro-batches", "lr x", "steps", *metrics,
              "train loss", "samples/s", "peak GiB/device"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_format(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _series(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped into lines: by loss, and by implementation and stage when they vary."""
    varying = [k for k in ("loss", "loss_impl", "stage") if len({r[k] for r in rows}) > 1]
    varying = varying or ["loss"]
    lines: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        lines.setdefault(" ".join(str(row[k]) for k in varying), []).append(row)
    return lines


def plot(rows: Sequence[dict[str, Any]], metrics: Sequence[str], path: str) -> None:
    """Each metric, samples/s and peak memory against the global batch (log2 axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [*metrics, "samples_per_s", "compiled_peak_gib"]
    titles = {"samples_per_s": "samples/s", "compiled_peak_gib": "peak GiB per device"}
    cols = min(3, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.3 * rows_n), squeeze=False)
    for ax, name in zip(axes.flat, panels, strict=False):
        for label, series in _series(rows).items():
            points = sorted((r["batch_size"], r.get(name)) for r in series
                            if isinstance(r.get(name), float) and not math.isnan(r[name]))
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("global batch")
        ax.set_title(titles.get(name, name), fontsize=10)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    paths.write_bytes(path, image.getvalue())


def write_report(workdir: str) -> dict[str, str]:
    """results.csv, results.md and results.png in `workdir`; returns their paths."""
    workdir = paths.absolute(workdir)
    rows = collect(workdir)
    metrics = metric_names(rows, headline=True)
    out = {k: paths.join(workdir, f"results.{k}") for k in ("csv", "md", "png")}
    write_csv(rows, out["csv"])
    unfinished = [r["run"] for r in rows if r["steps_done"] != r["total_steps"]]
    md = (f"Batch-size study in `{paths.Path(workdir).name}`: {len(rows)} runs; evaluation "
          "metrics at each run's last evaluation, samples/s the median over logging windows "
          "after the first, peak memory XLA's figure for the compiled update step.\n\n"
          + markdown_table(rows, metrics))
    if unfinished:
        md += f"\nNot finished: {', '.join(unfinished)}.\n"
    paths.write_text(out["md"], md)
    plot(rows, metrics, out["png"])
    return out
