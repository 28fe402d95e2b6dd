"""Weight import/export: bit-exact round trips, parity with PyTorch references, strict errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import random_tokens
from hf_reference import hf_clip, hf_embeds
from reference_openai_clip import OpenAICLIP
from safetensors.numpy import load_file, save_file

from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators.encoder import Encoder
from reasonclip_jax.models.clip import CLIP, get_preset
from reasonclip_jax.tools import convert
from reasonclip_jax.train import checkpoint

TINY = get_preset("tiny")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Weights, config, tokenizer and image processor (tests/test_release_files.py), provenance.
HF_EXPORT_FILES = {"config.json", "model.safetensors", "vocab.json", "merges.txt",
                   "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "preprocessor_config.json", "reasonclip_export.json"}


def openai_reference(config=TINY, seed=0) -> OpenAICLIP:
    torch.manual_seed(seed)
    model = OpenAICLIP(
        config.embed_dim, config.image_size, config.vision_layers, config.vision_width,
        config.patch_size, config.context_length, config.vocab_size, config.text_width,
        config.text_heads, config.text_layers, vision_heads=config.vision_heads,
    ).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases
        for name, p in model.named_parameters():
            if p.ndim == 1 and "class_embedding" not in name:
                p.add_(0.1 * torch.randn(p.shape))
    return model


def _numpy_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _assert_states_equal(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)


def test_hf_round_trip_is_bit_exact_and_loads_in_transformers(tmp_path):
    hf = hf_clip(TINY)
    hf.save_pretrained(tmp_path / "hf")
    convert.import_weights("hf", str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    convert.export_weights("hf", str(tmp_path / "ckpt"), str(tmp_path / "hf2"))
    assert set(os.listdir(tmp_path / "hf2")) == HF_EXPORT_FILES
    loaded, info = transformers.CLIPModel.from_pretrained(tmp_path / "hf2",
                                                          output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    _assert_states_equal(_numpy_state(hf), _numpy_state(loaded))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_openai_round_trip_is_bit_exact(tmp_path, suffix):
    ref = openai_reference()
    state = _numpy_state(ref)
    src = str(tmp_path / f"in{suffix}")
    if suffix == ".pt":
        torch.save(ref.state_dict(), src)
    else:
        save_file(state, src)
    convert.import_weights("openai", src, str(tmp_path / "ckpt"), vision_heads=2, text_heads=2,
                           act="quick_gelu")
    out = str(tmp_path / f"out{suffix}")
    convert.export_weights("openai", str(tmp_path / "ckpt"), out)
    back = load_file(out) if suffix == ".safetensors" else {
        k: v.numpy() for k, v in torch.load(out, weights_only=True).items()}
    _assert_states_equal(state, back)


def test_openai_torchscript_archive_matches_reference_forward(tmp_path, rng):
    ref = openai_reference()
    images = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
    tokens = random_tokens(rng, 2)
    pixels = torch.tensor(images).permute(0, 3, 1, 2)
    traced = torch.jit.trace(ref, (pixels, torch.tensor(tokens, dtype=torch.long)))
    traced.save(str(tmp_path / "ViT-tiny.pt"))
    convert.import_weights("openai", str(tmp_path / "ViT-tiny.pt"), str(tmp_path / "ckpt"),
                           vision_heads=2, text_heads=2, act="quick_gelu")
    params, config = checkpoint.load_model(str(tmp_path / "ckpt"))
    out = CLIP(config).apply({"params": params}, images, tokens)
    with torch.no_grad():
        ref_img, ref_txt = (x / x.norm(dim=-1, keepdim=True) for x in ref(pixels,
                            torch.tensor(tokens, dtype=torch.long)))
    np.testing.assert_allclose(out["image_embeds"], ref_img.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["text_embeds"], ref_txt.numpy(), atol=1e-4, rtol=0)


def test_openai_naming_and_hf_naming_give_the_same_model(tmp_path):
    ref = openai_reference()
    save_file(_numpy_state(ref), str(tmp_path / "w.safetensors"))
    convert.import_weights("openai", str(tmp_path / "w.safetensors"), str(tmp_path / "a"),
                           vision_heads=2, text_heads=2, act="quick_gelu")
    convert.export_weights("hf", str(tmp_path / "a"), str(tmp_path / "hf"))
    convert.import_weights("hf", str(tmp_path / "hf"), str(tmp_path / "b"))
    pa, ca = checkpoint.load_model(str(tmp_path / "a"))
    pb, cb = checkpoint.load_model(str(tmp_path / "b"))
    assert ca == cb
    jax.tree.map(np.testing.assert_array_equal, pa, pb)


def test_category_heads_are_dropped_at_export():
    params = convert.import_state_dict("hf", _numpy_state(hf_clip(TINY)))[0]
    params["image_category_head"] = {"kernel": np.zeros((64, 5)), "bias": np.zeros(5)}
    state = convert.export_state_dict("hf", params, TINY)
    assert not any("category" in k for k in state)


@pytest.fixture(scope="module")
def openai_state():
    return _numpy_state(openai_reference())


def _import_state(tmp_path, state):
    save_file(state, str(tmp_path / "bad.safetensors"))
    convert.import_weights("openai", str(tmp_path / "bad.safetensors"), str(tmp_path / "c"),
                           vision_heads=2, text_heads=2, act="quick_gelu")


def test_missing_tensor_is_named(tmp_path, openai_state):
    state = dict(openai_state)
    del state["visual.transformer.resblocks.1.ln_2.bias"]
    with pytest.raises(UserError, match=r"missing tensor 'visual.transformer.resblocks.1.ln_2.bias'"
                       r" \(expected shape \(64,\)\)"):
        _import_state(tmp_path, state)


def test_unexpected_tensor_is_named(tmp_path, openai_state):
    state = {**openai_state, "visual.extra_head.weight": np.zeros((3, 4), np.float32)}
    with pytest.raises(UserError, match=r"unexpected tensor 'visual.extra_head.weight' with shape"
                       r" \(3, 4\)"):
        _import_state(tmp_path, state)


def test_wrong_shape_names_both_shapes(tmp_path, openai_state):
    state = dict(openai_state)
    state["transformer.resblocks.0.mlp.c_proj.weight"] = np.zeros((64, 255), np.float32)
    with pytest.raises(UserError, match=r"'transformer.resblocks.0.mlp.c_proj.weight' has shape "
                       r"\(64, 255\), expected \(64, 256\)"):
        _import_state(tmp_path, state)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="not a PyTorch checkpoint"):
        convert.import_weights("openai", str(tmp_path / "junk.pt"), str(tmp_path / "c"))
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        convert.import_weights("openai", str(tmp_path / "junk.safetensors"), str(tmp_path / "c"))
    save_file({"a": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="not a CLIP checkpoint"):
        convert.import_weights("openai", str(tmp_path / "other.safetensors"), str(tmp_path / "c"))
    os.makedirs(tmp_path / "emptydir")
    with pytest.raises(UserError, match="no config.json"):
        convert.import_weights("hf", str(tmp_path / "emptydir"), str(tmp_path / "c"))
    with pytest.raises(UserError, match="not a reasonclip checkpoint"):
        convert.export_weights("hf", str(tmp_path / "emptydir"), str(tmp_path / "o"))


def test_cli_errors_are_one_line(tmp_path):
    for args in (
        ["reasonclip_jax.convert", "import", "--format", "onnx", "--input", str(tmp_path),
         "--output", str(tmp_path / "c")],
        ["reasonclip_jax.convert", "import", "--format", "openai", "--input",
         str(tmp_path / "nope.pt"), "--output", str(tmp_path / "c")],
        ["reasonclip_jax.encode", "--checkpoint", str(tmp_path / "nope"), "--texts-file",
         str(tmp_path / "nope.txt"), "--output", str(tmp_path / "o.npz")],
    ):
        result = cli(*args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_encode_cli_matches_transformers(tmp_path, rng):
    from PIL import Image

    hf = hf_clip(TINY)
    hf.save_pretrained(tmp_path / "hf")
    assert cli("reasonclip_jax.convert", "import", "--format", "hf", "--input",
               str(tmp_path / "hf"), "--output", str(tmp_path / "ckpt")).returncode == 0
    paths = []
    for i, (w, h) in enumerate([(80, 64), (64, 100), (64, 64)]):
        path = str(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    texts = ["a red ball on a box", "the drink is hot", "", "x " * 200]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    result = cli("reasonclip_jax.encode", "--checkpoint", str(tmp_path / "ckpt"), "--images",
                 *paths, "--texts-file", str(tmp_path / "t.txt"), "--output",
                 str(tmp_path / "e.npz"), "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    out = np.load(tmp_path / "e.npz")
    # Independent preprocessing: transformers' CLIPImageProcessor (PIL path).
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 64},
                                                crop_size={"height": 64, "width": 64})
    pixels = processor([Image.open(p) for p in paths], return_tensors="np")["pixel_values"]
    from reasonclip_jax.models.tokenizer import tokenize

    ref_img, ref_txt = hf_embeds(hf, pixels.transpose(0, 2, 3, 1), tokenize(texts))
    assert out["image_embeds"].shape == (3, 64) and out["text_embeds"].shape == (4, 64)
    np.testing.assert_allclose(out["image_embeds"], ref_img, atol=2e-3, rtol=0)
    np.testing.assert_allclose(out["text_embeds"], ref_txt, atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["logit_scale"], np.exp(hf.logit_scale.item()), rtol=1e-6)


@pytest.mark.slow
def test_vit_b32_through_import_and_encode(tmp_path, rng):
    config = get_preset("ViT-B-32")
    hf = hf_clip(config)
    hf.save_pretrained(tmp_path / "hf")
    convert.import_weights("hf", str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    params, loaded = checkpoint.load_model(str(tmp_path / "ckpt"))
    assert loaded == config
    images = rng.standard_normal((2, 224, 224, 3)).astype(np.float32)
    texts = ["a photo of a cat", "the glass will spill because it is tilted"]
    from reasonclip_jax.models.tokenizer import tokenize

    encoder = Encoder(params, config, batch_size=2)
    ref_img, ref_txt = hf_embeds(hf, images, tokenize(texts))
    np.testing.assert_allclose(encoder.images(images), ref_img, atol=1e-4, rtol=0)
    np.testing.assert_allclose(encoder.texts(texts), ref_txt, atol=1e-4, rtol=0)
    convert.export_weights("hf", str(tmp_path / "ckpt"), str(tmp_path / "hf2"))
    _assert_states_equal(_numpy_state(hf), load_file(str(tmp_path / "hf2/model.safetensors")))
    with open(tmp_path / "hf2/config.json") as f:
        assert json.load(f)["vision_config"]["patch_size"] == 32


def test_safetensors_conversion_and_training_imports_need_no_torch(tmp_path):
    hf = hf_clip(TINY)
    hf.save_pretrained(tmp_path / "hf")
    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
from reasonclip_jax.tools import convert
convert.import_weights("hf", {str(tmp_path / "hf")!r}, {str(tmp_path / "ckpt")!r})
convert.export_weights("hf", {str(tmp_path / "ckpt")!r}, {str(tmp_path / "out")!r})
convert.export_weights("openai", {str(tmp_path / "ckpt")!r}, {str(tmp_path / "w.safetensors")!r})
import reasonclip_jax.train.trainer, reasonclip_jax.data.pipeline, reasonclip_jax.evaluators
assert "transformers" not in sys.modules
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
    assert set(os.listdir(tmp_path / "out")) == HF_EXPORT_FILES  # tokenizer.json too
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "hf", "out", "w.safetensors",
                                            "w.safetensors.provenance.json"]
