"""Evaluates a checkpoint with the project's evaluators; prints the metrics, optionally saves them.

    python -m reasonclip_jax.evaluate --checkpoint CKPT_DIR \\
        --eval rclip_bench:out/scenes/bench \\
        --eval retrieval:out/scenes/stage1 split=train caption_field=desc max_examples=500 \\
        --eval zero_shot:data/wds_imagenet1k \\
        --output metrics.json

Each `--eval TYPE:DIR [KEY=VALUE ...]` is one evaluator config (`reasonclip_jax.evaluators`):
TYPE is a key of `evaluators.EVALUATORS` (rclip_bench, rclip_retrieval, retrieval,
retrieval_karpathy, retrieval_wds, zero_shot, zero_shot_folder, zero_shot_tfds; see the
README), DIR its data_dir, and KEY=VALUE sets any other
argument of that evaluator's `evaluate` (split, max_examples, caption_field, version) or
`name`, the metric prefix (default TYPE). `--output` writes the metrics as JSON.

`--checkpoint` and `--output` may be in a bucket (`gs://...`); the evaluation data is read
from a local path (a bucket through a Cloud Storage FUSE mount).

RCLIP-Bench with `--output metrics.json` also writes its per-set results beside it:
`metrics.items.jsonl` (every set: official id, image_name, tag, set index, chosen index, the 5
cosines and the 5 scores in the release's units, exp(logit_scale) x cosine, correct) and
`metrics.near_ties.jsonl` (the sets whose best two cosines are less than 1e-5 apart); with
several rclip_bench evals, `metrics.NAME.items.jsonl` and `metrics.NAME.near_ties.jsonl`.
`version=v3` scores one RCLIP version of a directory, `version=all` each on its own:

    python -m reasonclip_jax.evaluate --checkpoint CKPT --eval rclip_bench:out/rclip version=v3 \\
        --output metrics.json
"""

from __future__ import annotations

import argparse
import json
import typing
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from reasonclip_jax import evaluators, paths
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators.encoder import Encoder
from reasonclip_jax.tools import cli, convert
from reasonclip_jax.train import checkpoint


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m reasonclip_jax.evaluate", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint or trainer workdir")
    parser.add_argument(
        "--eval", action="append", nargs="+", required=True, metavar="TYPE:DIR [KEY=VALUE]",
        help="one evaluator; repeat for more",
    )
    parser.add_argument("--output", help="write the metrics here as JSON")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tokenizer", help="SigLIP: its tokenizer files' directory (default: "
                        "the checkpoint's, or its run's init_from's, tokenizer/)")
    parser.add_argument("--pad-texts-to-longest", action="store_true",
                        help="SigLIP: pad each batch of texts to its longest, as the release's "
                        "evaluation (scores then depend on the batching); default: to 64")
    return parser.parse_args(argv)


def _convert(evaluate: evaluators.Evaluate, key: str, value: str) -> Any:
    """A KEY=VALUE value typed after the evaluator's annotation (`int | None` takes `none`)."""
    hint = typing.get_type_hints(evaluate).get(key)
    options = typing.get_args(hint) or (hint,)
    if type(None) in options and value.lower() == "none":
        return None
    if int in options:
        try:
            return int(value)
        except ValueError:
            raise UserError(f"{key}={value}: expected an integer") from None
    return value


def eval_config(spec: Sequence[str]) -> dict[str, Any]:
    """`["TYPE:DIR", "KEY=VALUE", ...]` -> an evaluator config dict (checked)."""
    kind, sep, data_dir = spec[0].partition(":")
    if not sep or not data_dir:
        raise UserError(f"--eval {spec[0]}: expected TYPE:DIR, e.g. rclip_bench:out/scenes/bench")
    if kind not in evaluators.EVALUATORS:
        choices = sorted(evaluators.EVALUATORS)
        raise UserError(f"--eval {spec[0]}: unknown type '{kind}'; choose one of {choices}")
    config: dict[str, Any] = {"type": kind, "data_dir": data_dir}
    for item in spec[1:]:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--eval {spec[0]}: expected KEY=VALUE, got '{item}'")
        config[key] = _convert(evaluators.EVALUATORS[kind], key, value)
    return config


def with_results_prefixes(configs: list[dict[str, Any]], output: str) -> list[dict[str, Any]]:
    """rclip_bench configs get `results_prefix` beside `output` (metrics.json -> metrics, or
    metrics.NAME when there are several), unless they set one."""
    stem = output.removesuffix(".json")
    benches = [c for c in configs if c["type"] == "rclip_bench"]
    for c in benches:
        if "results_prefix" not in c:
            name = c.get("name") or c["type"]
            c["results_prefix"] = stem if len(benches) == 1 else f"{stem}.{name}"
    return configs


class ScaledEncoder(Encoder):
    """The Encoder plus the model's exp(logit_scale): RCLIP-Bench then also writes its scores
    in the release's units (logit_scale x cosine)."""

    def __init__(self, params: Any, model_config: Any, batch_size: int, **kwargs: Any):
        super().__init__(params, model_config, batch_size, **kwargs)
        self.logit_scale = float(np.exp(np.asarray(params["logit_scale"], np.float64)))


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    configs = [eval_config(spec) for spec in args.eval]
    if args.output:
        configs = with_results_prefixes(configs, args.output)
    evaluators.check_configs(configs)  # before the model loads: a typo fails at once
    params, model_config = checkpoint.load_model(args.checkpoint)
    tokenizer_dir = convert.tokenizer_dir_of(checkpoint.resolve_step_dir(args.checkpoint),
                                             args.tokenizer)
    embedder = ScaledEncoder(jax.device_put(params), model_config, args.batch_size,
                             tokenizer_dir=tokenizer_dir,
                             pad_texts_to_longest=args.pad_texts_to_longest)
    metrics = evaluators.run_evaluators(configs, embedder)
    for key, value in metrics.items():
        print(f"{key}: {value:.4f}")
    if args.output:
        paths.write_text(args.output, json.dumps(metrics, indent=1) + "\n")
    return metrics


if __name__ == "__main__":
    main()
