"""Evaluators: metrics of a model seen through an `Embedder`, one module per benchmark.

    rclip_bench         RCLIP-Bench set accuracy, overall and per tag   (rclip_bench.py)
    retrieval           image <-> text recall@1/5/10, a shard directory (retrieval.py)
    rclip_retrieval     RCLIP-5K-V3 retrieval from RCLIP-Bench shards   (rclip_retrieval.py)
    retrieval_karpathy  retrieval, Karpathy-split JSON + image root     (retrieval_formats.py)
    retrieval_wds       retrieval, CLIP_benchmark webdataset tars       (retrieval_formats.py)
    zero_shot           zero-shot top-1/top-5, CLIP_benchmark tars      (zero_shot.py)
    zero_shot_folder    zero-shot, an image-folder tree                 (zero_shot_formats.py)
    zero_shot_tfds      zero-shot, a TFDS dataset (no TensorFlow)       (zero_shot_formats.py)

A config lists evaluators as dicts or ConfigDicts, each the keyword arguments of its
module's `evaluate` plus `type` (a key of `EVALUATORS`) and `name` (the metric prefix,
default the type):

    config.evals = [
        dict(type="rclip_bench", name="scenes_bench", data_dir="out/scenes/bench"),
        dict(type="retrieval", name="scenes_s1", data_dir="out/scenes/stage1", split="train",
             caption_field="desc", max_examples=1000),
        dict(type="rclip_retrieval", name="rclip5k_v3", data_dir="out/rclip_bench_v3"),
        dict(type="zero_shot_tfds", name="in1k", data_dir="data/tfds", dataset="imagenet2012",
             split="validation"),
    ]
    embedder = encoder.Encoder(params, model_config, batch_size, mesh=mesh)
    metrics = evaluators.run_evaluators(config.evals, embedder)
    # {"scenes_bench/accuracy": ..., "scenes_bench/acc_S": ..., "scenes_s1/i2t_r1": ...}

Multi-host: every process reads and embeds the whole (small) eval set, redundantly, and
gets the same metrics; `encoder.Encoder(..., mesh=mesh)` returns replicated embeddings, so
this works with parameters sharded across processes. Nothing is cached between calls: each
call reads and decodes its data afresh.

    python -m reasonclip_jax.evaluate --checkpoint CKPT --eval rclip_bench:out/scenes/bench
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from absl import logging

from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators import (
    common,
    rclip_bench,
    rclip_retrieval,
    retrieval,
    retrieval_formats,
    zero_shot,
    zero_shot_formats,
)

Evaluate = Callable[..., dict[str, float]]

EVALUATORS: dict[str, Evaluate] = {
    "rclip_bench": rclip_bench.evaluate,
    "retrieval": retrieval.evaluate,
    "rclip_retrieval": rclip_retrieval.evaluate,
    "retrieval_karpathy": retrieval_formats.evaluate_karpathy,
    "retrieval_wds": retrieval_formats.evaluate_wds,
    "zero_shot": zero_shot.evaluate,
    "zero_shot_folder": zero_shot_formats.evaluate_folder,
    "zero_shot_tfds": zero_shot_formats.evaluate_tfds,
}


def check_config(config: Mapping[str, Any]) -> tuple[str, Evaluate, dict[str, Any]]:
    """(metric prefix, evaluate function, its keyword arguments) of one eval config.

    Raises `UserError` on an unknown type, unknown or missing keys, or a missing data_dir.
    """
    kwargs = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    kind = kwargs.pop("type", None)
    if kind not in EVALUATORS:
        raise UserError(f"unknown evaluator type {kind!r}; choose one of {sorted(EVALUATORS)}")
    name = kwargs.pop("name", None) or kind
    evaluate = EVALUATORS[kind]
    params = dict(inspect.signature(evaluate).parameters)
    params.pop("embedder")
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise UserError(f"eval '{name}': unknown keys {unknown}; {kind} takes {sorted(params)}")
    missing = [k for k, p in params.items() if p.default is p.empty and k not in kwargs]
    if missing:
        raise UserError(f"eval '{name}': missing keys {missing}")
    if not os.path.isdir(kwargs["data_dir"]):
        raise UserError(f"eval '{name}': data_dir {kwargs['data_dir']} is not a directory")
    return name, evaluate, kwargs


def check_configs(configs: Iterable[Mapping[str, Any]]) -> list[tuple[str, Evaluate, dict]]:
    """`check_config` of each, and names (metric prefixes) that do not repeat."""
    checked = [check_config(c) for c in configs]
    names = [name for name, _, _ in checked]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"eval names {duplicates} repeat; give each eval its own 'name'")
    return checked


def run_evaluators(
    configs: Iterable[Mapping[str, Any]], embedder: common.Embedder
) -> dict[str, float]:
    """Runs every configured evaluator; metrics keyed `{name}/{metric}`.

    All configs are checked before any evaluator runs, so a typo fails at once.
    """
    metrics: dict[str, float] = {}
    for name, evaluate, kwargs in check_configs(configs):
        start = time.perf_counter()
        for key, value in evaluate(embedder, **kwargs).items():
            metrics[f"{name}/{key}"] = value
        logging.debug("eval %s: %.1f s", name, time.perf_counter() - start)
    return metrics
