"""Evaluates a checkpoint with the project's evaluators; prints the metrics, optionally saves them.

    python -m reasonclip_jax.evaluate --checkpoint CKPT_DIR \\
        --eval rclip_bench:out/scenes/bench \\
        --eval retrieval:out/scenes/stage1 split=train caption_field=desc max_examples=500 \\
        --eval zero_shot:data/wds_imagenet1k \\
        --output metrics.json

Each `--eval TYPE:DIR [KEY=VALUE ...]` is one evaluator config (`reasonclip_jax.evaluators`):
TYPE is rclip_bench, retrieval or zero_shot, DIR its data_dir, and KEY=VALUE sets any other
argument of that evaluator's `evaluate` (split, max_examples, caption_field) or `name`, the
metric prefix (default TYPE). `--output` writes the metrics as JSON.
"""

from __future__ import annotations

import argparse
import json
import typing
from collections.abc import Sequence
from typing import Any

import jax

from reasonclip_jax import evaluators
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators.encoder import Encoder
from reasonclip_jax.tools import cli
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


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    configs = [eval_config(spec) for spec in args.eval]
    evaluators.check_configs(configs)  # before the model loads: a typo fails at once
    params, model_config = checkpoint.load_model(args.checkpoint)
    embedder = Encoder(jax.device_put(params), model_config, args.batch_size)
    metrics = evaluators.run_evaluators(configs, embedder)
    for key, value in metrics.items():
        print(f"{key}: {value:.4f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(metrics, f, indent=1)
            f.write("\n")
    return metrics


if __name__ == "__main__":
    main()
