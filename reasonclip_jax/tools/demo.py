"""The end-to-end demo on built-in synthetic data, on a CPU in a few minutes.

    python -m reasonclip_jax.demo [--workdir /tmp/reasonclip_demo] [--num-scenes 2000]

1. data_pipeline (Beam, DirectRunner) renders the `scenes` source into ArrayRecord shards:
   stage-1 (descriptive + reasoning captions), stage-2 (category captions) and an
   RCLIP-style benchmark whose negatives name the same objects with a wrong inference.
2. A tiny CLIP is trained three ways with `reasonclip_jax.train`: the descriptive-only
   baseline (stage 0), stage 1 (dual alignment), then stage 2 from stage 1.
3. Each run is evaluated on the benchmark; the best stage-2 weights are exported to a
   Hugging Face `CLIPModel` directory and checked to load in transformers when it is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence

from reasonclip_jax.tools import cli

# The repository root (this file is reasonclip_jax/tools/demo.py): children run from there.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args: Sequence[str]) -> None:
    print("$", " ".join(args), flush=True)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(args, check=True, cwd=ROOT, env=env)


def _last_metrics(workdir: str) -> dict[str, float]:
    merged: dict[str, float] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            merged.update(json.loads(line))
    return merged


def _train(workdir: str, data: str, stage: str, steps: int, *extra: str) -> dict[str, float]:
    _run([sys.executable, "-m", "reasonclip_jax.train", f"--config=configs/demo.py:{data},{stage}",
          f"--workdir={workdir}", f"--config.total_steps={steps}", *extra])
    return _last_metrics(workdir)


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> None:
    parser = cli.ArgumentParser(prog="python -m reasonclip_jax.demo", description=__doc__)
    parser.add_argument("--workdir", default="/tmp/reasonclip_demo")
    parser.add_argument("--num-scenes", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    data, runs = os.path.join(args.workdir, "scenes"), os.path.join(args.workdir, "runs")

    if not os.path.exists(os.path.join(data, "bench", "manifest.json")):
        _run([sys.executable, "-m", "data_pipeline.build", "--source", "scenes",
              "--num-scenes", str(args.num_scenes), "--seed", "0", "--output", data])

    results = {}
    results["stage 0 (descriptive only)"] = _train(
        os.path.join(runs, "stage0"), data, "stage0", args.steps)
    results["stage 1 (dual alignment)"] = _train(
        os.path.join(runs, "stage1"), data, "stage1", args.steps)
    results["stage 2 (from stage 1)"] = _train(
        os.path.join(runs, "stage2"), data, "stage2", args.steps // 2,
        f"--config.init_from={os.path.join(runs, 'stage1', 'best')}")  # the selected weights

    export = os.path.join(args.workdir, "hf_export")
    if not os.path.exists(export):
        _run([sys.executable, "-m", "reasonclip_jax.convert", "export", "--format", "hf",
              "--input", os.path.join(runs, "stage2", "best"), "--output", export])
    try:
        import transformers

        transformers.CLIPModel.from_pretrained(export)
        exported = f"{export} (loads in transformers.CLIPModel)"
    except ImportError:
        exported = export

    print("\nRCLIP-style scenes benchmark (chance 20%):")
    print(f"{'run':32s} {'accuracy':>9s} {'loss':>8s}")
    for name, m in results.items():
        print(f"{name:32s} {m.get('scenes_bench/accuracy', float('nan')):9.3f} "
              f"{m.get('loss', float('nan')):8.3f}")
    print(f"exported: {exported}")


if __name__ == "__main__":
    main()
