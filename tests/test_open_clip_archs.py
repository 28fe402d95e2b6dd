"""open_clip's architecture table: parameter counts against open_clip's published profile,
import with `arch` against transformers' CLIPModel built with the same heads and activation,
and no guessing where the weights cannot tell."""

import jax
import numpy as np
import pytest
from conftest import random_tokens
from hf_reference import hf_clip, hf_embeds
from safetensors.numpy import save_file

from reasonclip_jax.errors import UserError
from reasonclip_jax.models import open_clip_archs
from reasonclip_jax.models.clip import CLIP, get_preset, param_shapes
from reasonclip_jax.tools import convert
from reasonclip_jax.train import checkpoint

# Total parameters in millions, open_clip's docs/model_profile.csv @ 89fb801 (column params).
PUBLISHED_MILLIONS = {
    "ViT-B-32": 151.28, "ViT-B-32-quickgelu": 151.28, "ViT-B-16": 149.62,
    "ViT-B-16-plus-240": 208.38, "ViT-L-14": 427.62, "ViT-L-14-336": 427.94,
    "ViT-H-14": 986.11, "ViT-H-14-378-quickgelu": 986.71, "ViT-g-14": 1366.68,
    "ViT-bigG-14": 2539.57,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_MILLIONS))
def test_parameter_counts_match_open_clip(name):
    from reasonclip_jax.models.config import ModelConfig

    config = ModelConfig(**open_clip_archs.get_arch(name).model_fields())
    count = sum(x.size for x in jax.tree.leaves(param_shapes(CLIP(config))))
    assert count / 1e6 == pytest.approx(PUBLISHED_MILLIONS[name], abs=0.01)


def test_heads_and_activations_of_the_large_models():
    h, g, big = (open_clip_archs.get_arch(n).model_fields()
                 for n in ("ViT-H-14", "ViT-g-14", "ViT-bigG-14"))
    assert (h["vision_heads"], h["text_heads"], h["act"]) == (16, 16, "gelu")  # 1280 / 80
    assert (g["vision_heads"], g["vision_mlp_dim"]) == (16, 6144)  # 1408 / 88, not / 64
    assert (big["vision_heads"], big["vision_mlp_dim"], big["text_heads"]) == (16, 8192, 20)
    assert open_clip_archs.get_arch("ViT-B-32-quickgelu").model_fields()["act"] == "quick_gelu"
    assert open_clip_archs.get_arch("ViT-B-32").model_fields()["act"] == "gelu"


@pytest.fixture
def tiny_h14(monkeypatch):
    """A ViT-H-like entry at tiny size: head width 48 (not 64), GELU, text heads 3."""
    arch = open_clip_archs.Arch(embed_dim=64, image_size=64, patch_size=8, vision_width=96,
                                vision_layers=2, vision_head_width=48, text_width=96,
                                text_layers=2, text_heads=3)
    monkeypatch.setitem(open_clip_archs.ARCHITECTURES, "ViT-tiny-test", arch)
    return arch


def test_import_with_arch_matches_transformers_with_its_heads_and_activation(
        tiny_h14, tmp_path, rng):
    from reasonclip_jax.models.config import ModelConfig

    config = ModelConfig(**tiny_h14.model_fields())
    assert (config.vision_heads, config.text_heads, config.act) == (2, 3, "gelu")
    hf = hf_clip(config)  # transformers' CLIPModel with these heads and exact GELU
    params, _ = convert.import_state_dict("hf", {k: v.numpy() for k, v in
                                                 hf.state_dict().items()},
                                          hf.config.to_dict())
    save_file(convert.export_state_dict("openai", params, config),
              str(tmp_path / "open_clip.safetensors"))
    convert.import_weights("openai", str(tmp_path / "open_clip.safetensors"),
                           str(tmp_path / "ckpt"), arch="ViT-tiny-test")
    loaded, loaded_config = checkpoint.load_model(str(tmp_path / "ckpt"))
    assert loaded_config == config
    images = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
    tokens = random_tokens(rng, 2)
    out = jax.jit(CLIP(loaded_config).apply)({"params": loaded}, images, tokens)
    ref_img, ref_txt = hf_embeds(hf, images, tokens)
    np.testing.assert_allclose(out["image_embeds"], ref_img, atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["text_embeds"], ref_txt, atol=1e-4, rtol=0)
    # The guesses of old (width // 64 heads, QuickGELU) give another function.
    state = convert.export_state_dict("openai", params, config)
    guessed_params, guessed = convert.import_state_dict("openai", state, vision_heads=1,
                                                        text_heads=1, act="quick_gelu")
    wrong = jax.jit(CLIP(guessed).apply)({"params": guessed_params}, images, tokens)
    assert np.abs(np.asarray(wrong["image_embeds"]) - ref_img).max() > 1e-3


def test_without_a_name_the_importer_lists_the_choices(tiny_h14, tmp_path):
    config = get_preset("tiny")
    params, _ = convert.import_state_dict("hf", {k: v.numpy() for k, v in
                                                 hf_clip(config).state_dict().items()})
    save_file(convert.export_state_dict("openai", params, config), str(tmp_path / "w.safetensors"))
    with pytest.raises(UserError, match=r"pass --arch, one of \[.*'ViT-H-14'.*'ViT-bigG-14'"):
        convert.import_weights("openai", str(tmp_path / "w.safetensors"), str(tmp_path / "a"))
    with pytest.raises(UserError, match="the weights are not ViT-H-14: their embed_dim is 64"):
        convert.import_weights("openai", str(tmp_path / "w.safetensors"), str(tmp_path / "b"),
                               arch="ViT-H-14")
    with pytest.raises(UserError, match="unknown open_clip architecture 'ViT-Q-1'"):
        convert.import_weights("openai", str(tmp_path / "w.safetensors"), str(tmp_path / "c"),
                               arch="ViT-Q-1")
    with pytest.raises(UserError, match="do not also give vision_heads"):
        convert.import_weights("openai", str(tmp_path / "w.safetensors"), str(tmp_path / "d"),
                               arch="ViT-tiny-test", vision_heads=4)
