"""The Flax SigLIP against transformers' PyTorch SiglipModel (random weights, real shapes),
and its presets against the published configs as transformers reads them."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest
import transformers
from hf_reference import hf_siglip, hf_siglip_outputs

from reasonclip_jax.errors import UserError
from reasonclip_jax.models import siglip
from reasonclip_jax.models.clip import CLIP, get_preset, init_params
from reasonclip_jax.tools import convert


def _tokens(rng, config, batch):
    return rng.integers(0, config.vocab_size, (batch, config.context_length)).astype(np.int32)


def _import(hf_model, config):
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    params, inferred = convert.import_state_dict("hf", state, hf_model.config.to_dict())
    assert dataclasses.replace(inferred, tokenizer=config.tokenizer) == config
    return params


@pytest.mark.parametrize("preset", [
    "siglip-tiny",
    pytest.param("ViT-SO400M-14-SigLIP", marks=pytest.mark.slow),
])
def test_matches_transformers_siglip(preset, rng):
    config = get_preset(preset)
    hf = hf_siglip(config)
    params = _import(hf, config)
    images = rng.standard_normal((2, config.image_size, config.image_size, 3)).astype(np.float32)
    tokens = _tokens(rng, config, 3)
    out = jax.jit(CLIP(config).apply)({"params": params}, images, tokens)
    ref = hf_siglip_outputs(hf, images, tokens)
    np.testing.assert_allclose(out["image_embeds"], ref["image_embeds"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["text_embeds"], ref["text_embeds"], atol=1e-4, rtol=0)
    logits = (np.exp(out["logit_scale"]) * out["image_embeds"] @ out["text_embeds"].T
              + out["logit_bias"])
    np.testing.assert_allclose(logits, ref["logits_per_image"], atol=1e-4, rtol=0)


def test_giant_opt_text_head_projects_to_the_image_width(rng):
    # Giant-opt's text width (1152) differs from its embedding (1536); the same at tiny size.
    config = dataclasses.replace(get_preset("siglip-tiny"), embed_dim=96, vision_width=96,
                                 vision_heads=3, vision_mlp_dim=192)
    hf = hf_siglip(config, seed=3)
    params = _import(hf, config)
    assert params["text"]["head"]["kernel"].shape == (64, 96)
    images = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
    tokens = _tokens(rng, config, 2)
    out = jax.jit(CLIP(config).apply)({"params": params}, images, tokens)
    ref = hf_siglip_outputs(hf, images, tokens)
    np.testing.assert_allclose(out["image_embeds"], ref["image_embeds"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["text_embeds"], ref["text_embeds"], atol=1e-4, rtol=0)


def test_uint8_pixels_are_normalised_to_minus_one_one(rng):
    config = get_preset("siglip-tiny")
    hf = hf_siglip(config)
    params = _import(hf, config)
    pixels = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    reference = ((pixels / 255.0 - 0.5) / 0.5).astype(np.float32)
    out = jax.jit(CLIP(config).apply)({"params": params}, pixels)
    ref = hf_siglip_outputs(hf, reference, _tokens(rng, config, 2))
    np.testing.assert_allclose(out["image_embeds"], ref["image_embeds"], atol=1e-4, rtol=0)


def test_text_attends_to_every_position(rng):
    # Non-causal, pooled at the last position: the first token and the padding both count.
    config = get_preset("siglip-tiny")
    params = nn.unbox(init_params(CLIP(config), jax.random.key(0)))
    apply = jax.jit(lambda t: CLIP(config).apply({"params": params}, tokens=t)["text_embeds"])
    tokens = _tokens(rng, config, 1)
    base = np.asarray(apply(tokens))
    for position in (0, config.context_length // 2):
        changed = tokens.copy()
        changed[0, position] = (changed[0, position] + 1) % config.vocab_size
        assert np.abs(np.asarray(apply(changed)) - base).max() > 1e-4, position


def test_hf_defaults_are_transformers_defaults():
    text, vision = transformers.SiglipTextConfig(), transformers.SiglipVisionConfig()
    for key, value in siglip.HF_TEXT_DEFAULTS.items():
        expected = getattr(text, key)
        if key == "projection_size":  # transformers fills it with hidden_size
            assert value is None and expected == text.hidden_size
        else:
            assert value == expected, key
    for key, value in siglip.HF_VISION_DEFAULTS.items():
        assert value == getattr(vision, key), key


@pytest.mark.parametrize("name", sorted(siglip.published_configs()))
def test_presets_are_the_published_configs_as_transformers_reads_them(name):
    entry = siglip.published_configs()[name]
    assert entry["source"].startswith("https://huggingface.co/google/siglip")
    fields = {k: v for k, v in entry["config"].items() if k not in ("architectures",
                                                                   "model_type")}
    hf = transformers.SiglipConfig(**fields)
    t, v = hf.text_config, hf.vision_config
    c = siglip.PRESETS[name]
    assert (c.text_width, c.text_layers, c.text_heads, c.text_mlp_dim, c.vocab_size,
            c.context_length, c.embed_dim) == (
        t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size,
        t.vocab_size, t.max_position_embeddings, t.projection_size)
    assert (c.vision_width, c.vision_layers, c.vision_heads, c.vision_mlp_dim, c.image_size,
            c.patch_size) == (v.hidden_size, v.num_hidden_layers, v.num_attention_heads,
                              v.intermediate_size, v.image_size, v.patch_size)
    assert c.layer_norm_eps == t.layer_norm_eps == v.layer_norm_eps == 1e-6
    assert c.act == "gelu_tanh" and t.hidden_act == "gelu_pytorch_tanh"
    assert c.tokenizer == ("gemma" if "SigLIP2" in name else "siglip")


def test_released_shapes():
    gopt = siglip.PRESETS["ViT-gopt-16-SigLIP2-384"]
    assert (gopt.vision_width, gopt.vision_layers, gopt.text_width, gopt.embed_dim) == (
        1536, 40, 1152, 1536)
    so = siglip.PRESETS["ViT-SO400M-14-SigLIP-384"]
    assert (so.image_size, so.patch_size, so.vision_mlp_dim, so.vocab_size) == (
        384, 14, 4304, 32000)


def test_configs_that_cannot_import_say_why():
    with pytest.raises(UserError, match="vision_use_head=false"):
        siglip.config_from_hf({"vision_config": {"vision_use_head": False}})
    with pytest.raises(UserError, match="projection_size 512 differs"):
        siglip.config_from_hf({"text_config": {"projection_size": 512}})
