"""The trainer on a SigLIP backbone: every stage on 8 devices with the ring sigmoid loss and
SigLIP's lambda schedule, its evaluation and export, against the gather implementation."""

import os

import jax
import numpy as np
import pytest
import transformers
from test_trainer import final_params, logged, scenes, small_config  # noqa: F401

from reasonclip_jax.models.clip import get_preset
from reasonclip_jax.tools import convert, evaluate
from reasonclip_jax.train import checkpoint, trainer

SIGLIP_LAM = dict(start=0.6, end=0.3, final=0.5, ramp_from=0.2, ramp_to=0.8)


def siglip_config(data, stage, variant="smoke", impl="ring", **overrides):
    c = small_config(data, stage, variant, num_devices=8, **overrides)
    c.mesh = dict(data=8, fsdp=1, tensor=1)
    c.model.preset = "siglip-tiny"
    c.loss.kind, c.loss.impl = "sigmoid", impl
    c.loss.lam = dict(SIGLIP_LAM)
    return c


@pytest.fixture(scope="module")
def stage1_run(scenes, tmp_path_factory):  # noqa: F811
    workdir = str(tmp_path_factory.mktemp("siglip") / "s1")
    trainer.train(siglip_config(scenes, "stage1", "smoke_eval"), workdir)
    return workdir


def test_stage1_ring_sigmoid_equals_gather_and_learns_the_bias(scenes, stage1_run,  # noqa: F811
                                                               tmp_path):
    losses = [r["loss"] for r in logged(stage1_run) if "loss" in r]
    assert len(losses) == 3 and np.isfinite(losses).all()
    gather = str(tmp_path / "gather")
    trainer.train(siglip_config(scenes, "stage1", impl="gather"), gather)
    np.testing.assert_allclose([r["loss"] for r in logged(gather) if "loss" in r], losses,
                               rtol=1e-5)
    params = final_params(stage1_run)
    assert set(params["visual"]) >= {"head", "patch_embedding"}  # SigLIP's towers
    assert float(params["logit_bias"]) != get_preset("siglip-tiny").logit_bias_init
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-5),
                 final_params(gather), params)


def test_stage1_evaluates_like_the_evaluate_command_and_exports(scenes, stage1_run,  # noqa: F811
                                                                tmp_path):
    rows = logged(stage1_run)
    standalone = evaluate.main(["--checkpoint", os.path.join(stage1_run, "best"), "--eval",
                                f"rclip_bench:{scenes}/bench", "split=test", "max_examples=32",
                                "name=scenes_bench", "--batch-size", "16"])
    assert rows[-1]["scenes_bench/accuracy"] == pytest.approx(
        standalone["scenes_bench/accuracy"], abs=1e-9)
    convert.export_weights("hf", stage1_run, str(tmp_path / "hf"))
    loaded, info = transformers.SiglipModel.from_pretrained(tmp_path / "hf",
                                                            output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    params = final_params(stage1_run)
    np.testing.assert_array_equal(loaded.logit_bias.detach().numpy(),
                                  np.reshape(params["logit_bias"], 1))


@pytest.mark.parametrize("stage", ["stage0", "stage2"])
def test_other_stages_run_on_siglip(scenes, stage1_run, stage, tmp_path):  # noqa: F811
    init = {"init_from": stage1_run} if stage == "stage2" else {}
    workdir = str(tmp_path / stage)
    trainer.train(siglip_config(scenes, stage, **init), workdir)
    rows = [r for r in logged(workdir) if "loss" in r]
    assert len(rows) == 3 and np.isfinite([r["loss"] for r in rows]).all()
    if stage == "stage2":
        assert {"loss_text_category", "loss_image_category"} <= set(rows[0])
        assert final_params(workdir)["image_category_head"]["kernel"].shape == (64, 5)
        assert checkpoint.load_model_config(workdir).family == "siglip"


def test_gradcache_on_siglip_equals_the_full_batch(scenes, stage1_run, tmp_path):  # noqa: F811
    workdir = str(tmp_path / "gradcache")
    config = siglip_config(scenes, "stage1")
    config.grad_accum = dict(micro_batches=2, mode="gradcache")
    trainer.train(config, workdir)
    np.testing.assert_allclose([r["loss"] for r in logged(workdir) if "loss" in r],
                               [r["loss"] for r in logged(stage1_run) if "loss" in r],
                               rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-5),
                 final_params(workdir), final_params(stage1_run))
