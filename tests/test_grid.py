"""The study grid: same samples for every batch, LR rules, warmup in samples, one eval batch."""

import math

import numpy as np
import pytest

from configs.sweeps import tiny
from reasonclip_jax.errors import UserError
from reasonclip_jax.scaling import grid
from reasonclip_jax.train import optimizer


def sweep_config(**changes):
    c = tiny.get_config("/data/scenes")
    for key, value in changes.items():
        c[key] = value
    return c


def test_every_run_sees_the_same_samples_with_warmup_and_evals_in_samples():
    c = sweep_config(batch_sizes=(16, 32, 64, 128), samples=4096, warmup_samples=512,
                     eval_every_samples=1024, checkpoint_every_samples=2048)
    runs = grid.make_runs(c)
    assert [r.name for r in runs] == [f"stage1-{k}-gather-b{b}" for k in ("softmax", "sigmoid")
                                      for b in (16, 32, 64, 128)]
    for run in runs:
        b, cfg = run.batch_size, run.config
        assert cfg.input.batch_size == b
        assert cfg.total_steps * b == 4096
        assert cfg.optim.warmup_steps * b == 512 and cfg.optim.warmup_fraction is None
        assert cfg.eval_every * b == 1024 and cfg.checkpoint.every_steps * b == 2048
        assert cfg.validation.batch_size == c.eval_batch_size  # one held-out batch for all
        # The same stream: data, seed and order settings are the base's for every run.
        assert cfg.input.data_dirs == list(c.base.input.data_dirs)
        assert cfg.input.shuffle_seed == c.base.input.shuffle_seed and cfg.seed == c.base.seed
        assert cfg.input.worker_count == 0
        assert dict(cfg.grad_accum) == dict(micro_batches=1, mode="gradcache")


@pytest.mark.parametrize("rule,power", [("constant", 0.0), ("linear", 1.0), ("sqrt", 0.5)])
def test_learning_rate_rules_scale_every_group_from_the_reference_batch(rule, power):
    c = sweep_config(lr_rule=rule, reference_batch_size=32, losses=("softmax",))
    base_lrs = {g["name"]: g["lr"] for g in c.base.optim.groups}
    for run in grid.make_runs(c):
        expected = (run.batch_size / 32) ** power
        assert run.learning_rate_scale == pytest.approx(expected)
        for group in run.config.optim.groups:
            assert group["lr"] == pytest.approx(base_lrs[group["name"]] * expected)
        # The trainer's own schedule: 0 at step 0, the scaled peak at the end of warmup.
        opt = optimizer.make_optimizer(run.config, run.config.total_steps)
        warmup = run.config.optim.warmup_steps
        at_peak = opt.learning_rates(warmup)
        assert float(opt.learning_rates(0)["vision"]) == 0.0
        assert float(at_peak["vision"]) == pytest.approx(base_lrs["vision"] * expected, rel=1e-6)
        # Warmup covers the same samples at every batch: half-way in samples, half the peak.
        half = opt.learning_rates(warmup // 2)
        assert float(half["vision"]) == pytest.approx(float(at_peak["vision"]) / 2, rel=1e-6)


def test_lr_scale_formula():
    assert grid.learning_rate_scale("sqrt", 32768, 8192) == 2.0
    assert grid.learning_rate_scale("linear", 4096, 32768) == 0.125
    assert grid.learning_rate_scale("constant", 7, 3) == 1.0
    with pytest.raises(UserError, match="lr_rule"):
        grid.learning_rate_scale("cubic", 1, 1)


def test_settings_per_loss_and_micro_batches_are_gradcache():
    c = sweep_config(micro_batches={"128": 4})
    runs = {r.name: r for r in grid.make_runs(c)}
    sig, soft = runs["stage1-sigmoid-gather-b128"], runs["stage1-softmax-gather-b128"]
    assert sig.config.loss.kind == "sigmoid"
    assert sig.config.model.overrides.logit_bias_init == -10.0
    assert sig.config.model.overrides.logit_scale_init == pytest.approx(math.log(10))
    assert "logit_bias_init" not in soft.config.model.overrides
    assert dict(sig.config.grad_accum) == dict(micro_batches=4, mode="gradcache")
    assert runs["stage1-sigmoid-gather-b64"].config.grad_accum.micro_batches == 1
    assert "logit_bias_init" not in c.base.model.overrides  # the base is not changed


def test_grid_crosses_stages_and_implementations():
    c = sweep_config(stages=("stage1", "stage0"), loss_impls=("gather", "ring"),
                     batch_sizes=(64, 32), losses=("softmax",))
    names = [r.name for r in grid.make_runs(c)]
    assert names == [f"{s}-softmax-{i}-b{b}" for s in ("stage1", "stage0")
                     for i in ("gather", "ring") for b in (32, 64)]


@pytest.mark.parametrize("changes,message", [
    (dict(samples=1000), "not a multiple of the batch size"),
    (dict(warmup_samples=100, eval_every_samples=100), "not a multiple"),
    (dict(losses=("hinge",)), "unknown kind"),
    (dict(loss_impls=("allreduce",)), "unknown"),
    (dict(eval_batch_size=0), "eval_batch_size"),
    (dict(micro_batches={"64": 3}), "does not divide"),
    (dict(settings=dict(loss=dict(sigmoid=dict(model=dict(preset_typo="x"))))), "no key"),
    (dict(batch_sizes=()), "batch_sizes"),
    (dict(settings=dict(kind=dict(sigmoid=dict()))), "unknown dimensions"),
])
def test_bad_sweep_configs_are_one_line_errors(changes, message):
    with pytest.raises(UserError, match=message):
        grid.make_runs(sweep_config(**changes))


def test_plain_accumulation_and_unknown_keys_are_refused():
    c = sweep_config()
    c.base.grad_accum = dict(micro_batches=2, mode="plain")
    with pytest.raises(UserError, match="gradcache"):
        grid.make_runs(c)
    c = sweep_config()
    c.batch_size = 3
    with pytest.raises(UserError, match="unknown sweep config keys"):
        grid.make_runs(c)


def test_runs_are_ordered_by_batch_within_each_point():
    runs = grid.make_runs(sweep_config(batch_sizes=(128, 16, 64, 32)))
    sizes = [r.batch_size for r in runs]
    assert sizes == [16, 32, 64, 128] * 2
    assert np.all(np.diff([r.learning_rate_scale for r in runs[:4]]) > 0)


@pytest.mark.parametrize("backbone", ["B-32", "L-14-336"])
@pytest.mark.parametrize("topology", ["v5e:16x16", "v5p:4x4x8"])
def test_pod_configs_make_their_grid(backbone, topology):
    from configs.sweeps import pod
    from reasonclip_jax.scaling import plan

    c = pod.get_config(f"backbone={backbone},topology={topology},data=/d,init=/ckpt")
    runs = grid.make_runs(c)
    assert len(runs) == 10 and {r.batch_size for r in runs} == set(pod.BATCH_SIZES)
    listed = pod.MICRO_BATCHES[(backbone, topology)]
    for run in runs:
        assert run.config.grad_accum.micro_batches == listed.get(run.batch_size, 1)
        assert run.config.grad_accum.mode == "gradcache" and run.config.init_from == "/ckpt"
        assert run.config.total_steps * run.batch_size == c.samples
    sigmoid = next(r for r in runs if r.loss == "sigmoid")
    assert sigmoid.config.init_new_params == r"_category_head/|^logit_bias$"
    assert 14 * 2**30 < plan.parse_bytes(c.device_memory) < 95 * 2**30
