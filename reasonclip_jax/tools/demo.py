"""The end-to-end demo: the paper's protocol in miniature, on built-in synthetic data, on a CPU.

    python -m reasonclip_jax.demo [--workdir /tmp/reasonclip_demo] [--seeds 1] [--steps 600] \
        [--backbone clip|siglip]

Per seed:
1. data_pipeline (Beam, DirectRunner) renders the `scenes` source: training scenes in sibling
   groups (the same families in other states, so a batch holds other states of a family as
   negatives), with stage-1 (descriptive + reasoning captions) and stage-2 (category
   caption) records, and held-out scenes for the benchmark (5-way, negatives are other states
   of the same family) and for descriptive image <-> text retrieval.
2. A tiny CLIP is pretrained on descriptive captions only (`base`, standing in for the
   released CLIP), then continued three ways: `control` (descriptive only, 2S steps, reported
   at S and 2S), `stage1` (dual alignment, S steps) and `stage2` (from stage 1's step S, S
   more), so each arm meets a control of the same total training.
3. Every S/2 steps each run is evaluated on the benchmark and on retrieval; the demo writes
   `results.json`, `results.md` (the table it prints) and `results.png` (accuracy and R@1
   against step, one line per arm) into the workdir, and exports the stage-2 weights to a
   Hugging Face `CLIPModel` directory.

With `--seeds N` the data, the model initialisation and the shuffles change per seed, and
the table gives the mean gain over the control with its 95% interval (Student t).
`--smoke` is the seconds-long version the tests run (tiny data, a few steps).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from configs import demo as demo_config
from reasonclip_jax.tools import cli

# The repository root (this file is reasonclip_jax/tools/demo.py): children run from there.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHANCE = 0.2  # 5-way benchmark
BENCH, RETRIEVAL = "scenes_bench/accuracy", "scenes_retrieval"
ARMS = ("control", "stage1", "stage2")
# Two-sided 95% Student t quantiles by degrees of freedom (1..10); normal beyond.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def _run(args: Sequence[str], quiet: bool = False) -> None:
    print("$", " ".join(args), flush=True)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # The demo is sized for a CPU; without this a machine with libtpu installed (the `tpu`
    # extra) probes for TPUs at every start and prints its warnings.
    env.setdefault("JAX_PLATFORMS", "cpu")
    out = subprocess.DEVNULL if quiet else None
    subprocess.run(args, check=True, cwd=ROOT, env=env, stdout=out)


def _evals(workdir: str) -> dict[int, dict[str, float]]:
    """step -> the evaluation metrics logged at that step."""
    curve: dict[int, dict[str, float]] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            if BENCH in m:
                curve[int(m["step"])] = {k: v for k, v in m.items() if k != "step"}
    return curve


def retrieval_r1(m: dict[str, float]) -> float:
    """Descriptive retrieval R@1: the mean of image -> text and text -> image."""
    return (m[f"{RETRIEVAL}/i2t_r1"] + m[f"{RETRIEVAL}/t2i_r1"]) / 2


def interval95(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% Student t interval; one value gives (v, nan, nan)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = (_T95[n - 2] if n - 1 <= len(_T95) else 1.96) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


class Demo:
    """One seed's data and runs under `workdir/seed{seed}`."""

    def __init__(self, args: Any, seed: int):
        self.args, self.seed = args, seed
        self.root = os.path.join(args.workdir, f"seed{seed}")
        self.data = os.path.join(self.root, "scenes")

    def build_data(self) -> None:
        if os.path.exists(os.path.join(self.data, "bench", "manifest.json")):
            return
        a = self.args
        _run([sys.executable, "-m", "data_pipeline.build", "--source", "scenes",
              "--num-scenes", str(a.num_scenes), "--num-bench-scenes", str(a.num_bench_scenes),
              "--scene-group-size", str(a.group_size), "--seed", str(self.seed),
              "--image-size", str(demo_config.IMAGE_SIZE),
              "--output", self.data], quiet=True)

    def train(self, arm: str, stage: str, steps: int, init_from: str = "") -> str:
        workdir = os.path.join(self.root, "runs", arm)
        variant = "smoke_demo" if self.args.smoke else ""
        a = self.args
        extra = [f"--config.init_from={init_from}"] if init_from else []
        if stage != "stage0":  # descriptive-only runs take random batches (configs/demo.py)
            extra.append(f"--config.input.group_size={a.group_size}")
        if not os.path.exists(os.path.join(workdir, "checkpoints", str(steps))):
            _run([sys.executable, "-m", "reasonclip_jax.train",
                  f"--config=configs/demo.py:{self.data},{stage},{variant},"
                  f"backbone={a.backbone}",
                  f"--workdir={workdir}", f"--config.total_steps={steps}",
                  f"--config.seed={self.seed}", f"--config.input.shuffle_seed={self.seed}",
                  f"--config.eval_every={max(1, a.steps // 2)}",
                  f"--config.checkpoint.every_steps={steps}", *extra])
        return workdir

    def run(self) -> dict[str, Any]:
        """The four runs; returns each arm's curve, steps counted from the base model."""
        s = self.args.steps
        self.build_data()
        base = self.train("base", "stage0", self.args.base_steps)
        base_ckpt = os.path.join(base, "checkpoints", str(self.args.base_steps))
        control = self.train("control", "stage0", 2 * s, base_ckpt)
        stage1 = self.train("stage1", "stage1", s, base_ckpt)
        stage2 = self.train("stage2", "stage2", s, os.path.join(stage1, "checkpoints", str(s)))
        base_metrics = _evals(base)[self.args.base_steps]
        curves = {"control": _evals(control), "stage1": _evals(stage1),
                  "stage2": {step + s: m for step, m in _evals(stage2).items()}}
        points = {arm: [{"step": 0, "accuracy": base_metrics[BENCH],
                         "retrieval_r1": retrieval_r1(base_metrics)}] for arm in ARMS}
        points["stage2"] = [{"step": s, "accuracy": curves["stage1"][s][BENCH],
                             "retrieval_r1": retrieval_r1(curves["stage1"][s])}]
        for arm in ARMS:
            points[arm] += [{"step": step, "accuracy": m[BENCH], "retrieval_r1": retrieval_r1(m)}
                            for step, m in sorted(curves[arm].items())]
        at = {arm: {p["step"]: p for p in points[arm]} for arm in ARMS}
        return {
            "seed": self.seed, "curves": points, "stage2_dir": stage2,
            "control_at_S": at["control"][s], "control_at_2S": at["control"][2 * s],
            "stage1_at_S": at["stage1"][s], "stage2_at_2S": at["stage2"][2 * s],
        }


def summarize(per_seed: Sequence[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Gains over the control at equal steps, their intervals, and the targets."""
    gain1 = [r["stage1_at_S"]["accuracy"] - r["control_at_S"]["accuracy"] for r in per_seed]
    gain2 = [r["stage2_at_2S"]["accuracy"] - r["control_at_2S"]["accuracy"] for r in per_seed]
    rows = {}
    for name, key in (("control @S", "control_at_S"), ("stage 1 @S", "stage1_at_S"),
                      ("control @2S", "control_at_2S"), ("stage 2 @2S", "stage2_at_2S")):
        rows[name] = {m: interval95([r[key][m] for r in per_seed])
                      for m in ("accuracy", "retrieval_r1")}
    g1, g2 = interval95(gain1), interval95(gain2)
    controls = [r[k] for r in per_seed for k in ("control_at_S", "control_at_2S")]
    worst_retrieval_gap = max(
        max(r["control_at_S"]["retrieval_r1"] - r["stage1_at_S"]["retrieval_r1"],
            r["control_at_2S"]["retrieval_r1"] - r["stage2_at_2S"]["retrieval_r1"])
        for r in per_seed)
    targets = {
        "gain >= 0.15 (every seed, both arms)": min(gain1 + gain2) >= 0.15,
        "control accuracy within chance +- 0.03":
            all(abs(c["accuracy"] - CHANCE) <= 0.03 for c in controls),
        "control retrieval R@1 >= 0.3": min(c["retrieval_r1"] for c in controls) >= 0.3,
        "arms' retrieval R@1 within 0.10 of the control": worst_retrieval_gap <= 0.10,
    }
    if len(per_seed) > 1:
        targets["mean gain >= 0.15 with 95% low >= 0.10 (both arms)"] = (
            min(g1[0], g2[0]) >= 0.15 and min(g1[1], g2[1]) >= 0.10)
    return {"S": steps, "seeds": [r["seed"] for r in per_seed], "rows": rows,
            "gain_stage1": g1, "gain_stage2": g2, "targets": targets}


def _cell(value: tuple[float, float, float]) -> str:
    mean, low, high = value
    return f"{mean:.3f}" if math.isnan(low) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def markdown(summary: dict[str, Any]) -> str:
    n, s = len(summary["seeds"]), summary["S"]
    lines = [f"Scenes benchmark (5-way, chance 0.200) and descriptive retrieval R@1 (mean of "
             f"both directions) on held-out scenes; S = {s} steps after the base model; "
             f"{n} seed{'s' if n > 1 else ''}" + (", mean [95% interval]" if n > 1 else "") + ".",
             "", "| run | steps | benchmark accuracy | retrieval R@1 |", "|---|---|---|---|"]
    for name, row in summary["rows"].items():
        steps = s if name.endswith("@S") else 2 * s
        lines.append(f"| {name[:-3].strip()} | {steps} | {_cell(row['accuracy'])} | "
                     f"{_cell(row['retrieval_r1'])} |")
    lines += ["", f"Gain over the control at equal steps: stage 1 "
              f"{_cell(summary['gain_stage1'])}, stage 2 {_cell(summary['gain_stage2'])}.", ""]
    lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in summary["targets"].items()]
    return "\n".join(lines) + "\n"


def plot(per_seed: Sequence[dict[str, Any]], path: str) -> None:
    """Benchmark accuracy and retrieval R@1 against step, one line per arm (seed mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for arm in ARMS:
        steps = [p["step"] for p in per_seed[0]["curves"][arm]]
        for ax, key in zip(axes, ("accuracy", "retrieval_r1"), strict=True):
            values = [sum(r["curves"][arm][i][key] for r in per_seed) / len(per_seed)
                      for i in range(len(steps))]
            ax.plot(steps, values, marker="o", label=arm)
    axes[0].axhline(CHANCE, color="grey", linestyle=":", label="chance")
    axes[0].set_title("scenes benchmark accuracy")
    axes[1].set_title("descriptive retrieval R@1")
    for ax in axes:
        ax.set_xlabel("steps after the base model")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> None:
    parser = cli.ArgumentParser(prog="python -m reasonclip_jax.demo", description=__doc__)
    parser.add_argument("--workdir", default="/tmp/reasonclip_demo")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    parser.add_argument("--num-scenes", type=int, default=2000)
    parser.add_argument("--num-bench-scenes", type=int, default=1000)
    parser.add_argument("--group-size", type=int, default=8, help="sibling scenes per group")
    parser.add_argument("--base-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=600, help="S")
    parser.add_argument("--backbone", choices=("clip", "siglip"), default="clip",
                        help="the tiny CLIP (softmax loss) or the tiny SigLIP (sigmoid loss)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long: tiny everything")
    args = parser.parse_args(argv)
    if args.smoke:
        args.num_scenes, args.num_bench_scenes, args.group_size = 32, 16, 4
        args.base_steps, args.steps = 2, 2
    if args.seeds < 1 or args.steps < 2 or args.base_steps < 1:
        parser.error("--seeds, --base-steps must be >= 1 and --steps >= 2")

    per_seed = [Demo(args, seed).run() for seed in range(args.seeds)]
    summary = summarize(per_seed, args.steps)
    table = markdown(summary)
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump({"summary": summary, "per_seed": per_seed}, f, indent=1)
    with open(os.path.join(args.workdir, "results.md"), "w") as f:
        f.write(table)
    plot(per_seed, os.path.join(args.workdir, "results.png"))

    export = os.path.join(args.workdir, "hf_export")
    if not os.path.exists(export):
        _run([sys.executable, "-m", "reasonclip_jax.convert", "export", "--format", "hf",
              "--input", os.path.join(per_seed[0]["stage2_dir"], "checkpoints",
                                      str(args.steps)), "--output", export])
    print("\n" + table)
    print(f"wrote {args.workdir}/results.json, results.md, results.png; exported {export}")


if __name__ == "__main__":
    main()
