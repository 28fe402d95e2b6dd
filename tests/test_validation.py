"""The held-out loss: the stage's objective plus the L2-to-init term on the validation split,
checked against an independent recomputation (host, float64 penalty), and best/ selection."""

import json
import os
import re

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import demo
from reasonclip_jax.data import pipeline
from reasonclip_jax.models.clip import CLIP, init_params
from reasonclip_jax.train import checkpoint, stages, trainer, validation

BATCH = 8


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from data_pipeline import build

    out = str(tmp_path_factory.mktemp("data") / "scenes")
    build.run(["--source", "scenes", "--num-scenes", "48", "--seed", "2", "--output", out,
               "--validation-fraction", "0.25"])
    return out


def smoke_config(data: str, stage: str):
    c = demo.get_config(f"{data},{stage},smoke")
    c.validation.batch_size = BATCH
    c.checkpoint.best_metric = "validation/loss"
    c.checkpoint.best_mode = "min"
    return c


def logged(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def reference_held_out_loss(config, params, params0, step: int) -> tuple[float, int]:
    """Mean over the complete validation batches of the stage's loss (unjitted, one device)
    plus beta * sum ||theta - theta_0||^2 in float64 over the penalised parameters."""
    stage = stages.get_stage(config.stage)
    model = CLIP(checkpoint.load_model_config(config.init_from) if config.init_from else
                 _preset(config), num_category_heads=stage.category_heads)
    objective = stages.Objective(stage, model, config.loss, None, ("data",), config.total_steps,
                                 config.input.text_fields)
    beta, regex = config.optim.l2_init.beta, config.optim.l2_init.regex
    flat = {jax.tree_util.keystr(k, simple=True, separator="/"): np.asarray(v, np.float64)
            for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    flat0 = {jax.tree_util.keystr(k, simple=True, separator="/"): np.asarray(v, np.float64)
             for k, v in jax.tree_util.tree_flatten_with_path(params0)[0]}
    penalty = beta * sum(np.sum((flat[k] - flat0[k]) ** 2) for k in flat if re.search(regex, k))
    assert penalty > 0  # the run moved the weights: the term is really in the sum
    losses = []
    cfg = validation.input_config(config)
    for batch in pipeline.make_eval_iterator(cfg, objective.view, process_index=0,
                                             process_count=1):
        if not batch["mask"].all():
            continue  # the incomplete last batch (drop_last)
        loss, _ = objective.loss(params, objective.embed(params, batch), batch, step)
        losses.append(float(loss))
    return float(np.mean(losses)) + penalty, len(losses)


def _preset(config):
    from reasonclip_jax.models.clip import get_preset

    return get_preset(config.model.preset, **dict(config.model.overrides))


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_held_out_loss_is_the_objective_on_the_validation_split(scenes, tmp_path, stage):
    config = smoke_config(scenes, stage)
    if stage == "stage2":  # stage 2 starts from stage 1's best weights, with new heads
        s1 = str(tmp_path / "s1")
        trainer.train(smoke_config(scenes, "stage1"), s1)
        config.init_from = os.path.join(s1, "best")
    workdir = str(tmp_path / stage)
    trainer.train(config, workdir)
    last = logged(workdir)[-1]
    params = checkpoint.load_model(workdir)[0]
    if config.init_from:
        params0 = checkpoint.load_model(config.init_from)[0]
        model = CLIP(_preset(config), num_category_heads=5)
        fresh = nn.unbox(init_params(model, jax.random.key(config.seed)))
        params0 = {**fresh, **params0}  # the heads start fresh
    else:
        params0 = nn.unbox(init_params(CLIP(_preset(config)), jax.random.key(config.seed)))
    want, batches = reference_held_out_loss(config, params, params0, config.total_steps)
    assert batches >= 2 and last["validation/num_batches"] == batches
    np.testing.assert_allclose(last["validation/loss"], want, rtol=2e-5)
    # best/ holds the selected weights and says by what.
    best = checkpoint.read_best_metric(os.path.join(workdir, "best"))
    assert best == {"step": config.total_steps, "validation/loss": last["validation/loss"],
                    "mode": "min"}


def test_bad_validation_settings_are_one_line_errors(scenes, tmp_path):
    from reasonclip_jax.errors import UserError

    config = smoke_config(scenes, "stage1")
    config.validation.batch_size = 100_000
    with pytest.raises(UserError, match="no complete batch of 100000"):
        trainer.train(config, str(tmp_path / "a"))
    config = smoke_config(scenes, "stage1")
    config.validation.split = "test"
    with pytest.raises(UserError, match="no shards for split 'test'"):
        trainer.train(config, str(tmp_path / "b"))
