"""Every paper config (backbone x stage) builds, its input fits its model, and bad arguments
are one-line errors.

    python -m pytest tests/test_configs.py
"""

import functools

import jax
import pytest

from configs import demo, recipe, stage0, stage1, stage2, stage2_wo_cls
from reasonclip_jax.errors import UserError
from reasonclip_jax.models.clip import CLIP, get_preset, init_params
from reasonclip_jax.train import stages, trainer

# Parameter counts of OpenAI's released CLIPs (vision + text + projections + logit scale).
PARAMS_MILLIONS = {"B-32": 151.3, "L-14": 427.6, "L-14-336": 427.9}
STAGE_FILES = {"stage0": stage0, "stage1": stage1, "stage2": stage2,
               "stage2_wo_cls": stage2_wo_cls}


def _siglip_params_millions(preset: str) -> float:
    """transformers' SiglipModel built (without memory) from the published config."""
    import torch
    import transformers

    from reasonclip_jax.models import siglip

    fields = {k: v for k, v in siglip.published_configs()[preset]["config"].items()
              if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        model = transformers.SiglipModel(transformers.SiglipConfig(**fields))
    return sum(p.numel() for p in model.parameters()) / 1e6


@pytest.mark.parametrize("backbone", sorted(recipe.BACKBONES))
@pytest.mark.parametrize("name", sorted(STAGE_FILES))
def test_each_backbone_and_stage_builds_and_fits(backbone, name):
    siglip = backbone.startswith("siglip")
    tokenizer = ",tokenizer=/ckpt/tok" if siglip else ""
    c = STAGE_FILES[name].get_config(f"backbone={backbone},data=/data/x{tokenizer}")
    stage = stages.get_stage(c.stage)
    model_config = get_preset(c.model.preset, **dict(c.model.overrides))
    trainer.check_input_fits_model(c.input, model_config)
    assert c.input.data_dirs == ["/data/x"]
    if siglip:  # the release's SigLIP runs: sigmoid loss, 384 x 32 x 2, lambda 0.6/0.3/0.5
        assert c.input.batch_size == 24576 and c.loss.kind == "sigmoid"
        assert c.input.context_length == 64 and c.input.tokenizer_dir == "/ckpt/tok"
        assert c.input.tokenizer == ("gemma" if "siglip2" in backbone else "siglip")
        if name == "stage1":
            assert (c.loss.lam.start, c.loss.lam.end, c.loss.lam.final) == (0.6, 0.3, 0.5)
    else:
        assert c.input.batch_size == 32768 and c.loss.kind == "softmax"
    assert c.grad_accum.mode == "plain" and c.loss.negatives_gradient == "local"
    assert c.checkpoint.best_metric == "validation/loss" and c.checkpoint.best_mode == "min"
    assert c.loss.gamma == (0.0 if name == "stage2_wo_cls" else 0.05)
    shapes = jax.eval_shape(functools.partial(
        init_params, CLIP(model_config, num_category_heads=stage.category_heads)),
        jax.random.key(0))
    count = sum(x.size for x in jax.tree.leaves(shapes)) - stage.category_heads * (
        2 * (model_config.embed_dim + 1))
    expected = (_siglip_params_millions(c.model.preset) if siglip
                else PARAMS_MILLIONS[backbone])
    assert count / 1e6 == pytest.approx(expected, abs=0.1)


def test_named_arguments_and_their_errors():
    c = stage0.get_config("captions=reason,backbone=L-14")
    assert c.input.text_fields == ("reason", "cat_caption") and c.model.preset == "ViT-L-14"
    with pytest.raises(UserError, match="unknown config argument 'backbon'"):
        stage1.get_config("backbon=B-32")
    with pytest.raises(UserError, match="unknown backbone 'H-14'"):
        stage1.get_config("backbone=H-14")
    with pytest.raises(UserError, match="use NAME=VALUE"):
        stage1.get_config("/data/reasonlite")
    with pytest.raises(UserError, match="captions=both"):
        stage0.get_config("captions=both")
    with pytest.raises(UserError, match="needs tokenizer=DIR"):
        stage1.get_config("backbone=siglip2-so400m-384")


def test_demo_configs_fit_their_model():
    for backbone in ("clip", "siglip"):
        for stage in ("stage0", "stage1", "stage2"):
            for variant in ("", "smoke", "smoke_demo"):
                c = demo.get_config(f"/tmp/scenes,{stage},{variant},backbone={backbone}")
                model = get_preset(c.model.preset, **dict(c.model.overrides))
                trainer.check_input_fits_model(c.input, model)
                assert model.family == backbone
                assert c.loss.kind == ("sigmoid" if backbone == "siglip" else "softmax")


def test_demo_config_rejects_unknown_arguments():
    with pytest.raises(UserError, match=r"backbone=clip\|siglip"):
        demo.get_config("/tmp/scenes,stage1,backbone=vit")
    with pytest.raises(UserError, match="backbone="):
        demo.get_config("/tmp/scenes,stage1,seed=3")
