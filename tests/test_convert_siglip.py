"""SigLIP weight import/export (transformers' SiglipModel): bit-exact round trips, exported
directories that transformers loads with their processor, strict errors."""

import json
import os

import numpy as np
import pytest
import transformers
from hf_reference import hf_siglip
from safetensors.numpy import load_file
from tokenizer_files import write_gemma, write_gemma_config, write_spiece

from reasonclip_jax.errors import UserError
from reasonclip_jax.models.clip import get_preset
from reasonclip_jax.models.siglip_tokenizer import load_tokenizer
from reasonclip_jax.tools import convert
from reasonclip_jax.train import checkpoint

TINY = get_preset("siglip-tiny")


def _numpy_state(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _assert_states_equal(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture
def hf_dir(tmp_path):
    hf = hf_siglip(TINY)
    hf.save_pretrained(tmp_path / "hf")
    return hf, tmp_path / "hf"


def test_round_trip_is_bit_exact_and_loads_in_transformers(tmp_path, hf_dir):
    hf, src = hf_dir
    config = convert.import_weights("hf", str(src), str(tmp_path / "ckpt"))
    assert config == TINY
    convert.export_weights("hf", str(tmp_path / "ckpt"), str(tmp_path / "out"))
    _assert_states_equal(_numpy_state(hf), load_file(str(tmp_path / "out/model.safetensors")))
    loaded, info = transformers.SiglipModel.from_pretrained(tmp_path / "out",
                                                            output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    _assert_states_equal(_numpy_state(hf), _numpy_state(loaded))
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert type(processor).__name__.startswith("SiglipImageProcessor")  # or its PIL variant
    assert (processor.size["height"], processor.size["width"]) == (64, 64)
    assert list(processor.image_mean) == list(processor.image_std) == [0.5] * 3


@pytest.mark.parametrize("kind", ["siglip", "gemma"])
def test_tokenizer_files_travel_from_import_to_export(tmp_path, hf_dir, kind):
    _, src = hf_dir
    if kind == "siglip":
        write_spiece(str(src))
        (src / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "SiglipTokenizer", "model_max_length": 64}))
    else:
        write_gemma(str(src))
        write_gemma_config(str(src), padding_side="right")
    config = convert.import_weights("hf", str(src), str(tmp_path / "ckpt"))
    assert config.tokenizer == kind
    assert checkpoint.load_model_config(str(tmp_path / "ckpt")) == config
    ours = load_tokenizer(kind, str(tmp_path / "ckpt" / convert.TOKENIZER_DIR))
    convert.export_weights("hf", str(tmp_path / "ckpt"), str(tmp_path / "out"))
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "out")
    assert isinstance(processor, transformers.SiglipProcessor)
    texts = ["a photo of a cat", "the glass will spill"]
    theirs = processor(text=texts, padding="max_length", truncation=True, max_length=64)
    np.testing.assert_array_equal(ours(texts), np.array(theirs["input_ids"], np.int32))


def test_export_without_tokenizer_files_says_what_to_pass(tmp_path, hf_dir):
    _, src = hf_dir
    write_spiece(str(src))
    convert.import_weights("hf", str(src), str(tmp_path / "ckpt"))
    os.rename(tmp_path / "ckpt" / "tokenizer", tmp_path / "tok")
    with pytest.raises(UserError, match="pass --tokenizer"):
        convert.export_weights("hf", str(tmp_path / "ckpt"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
    convert.export_weights("hf", str(tmp_path / "ckpt"), str(tmp_path / "out"),
                           tokenizer_dir=str(tmp_path / "tok"))
    assert os.path.isfile(tmp_path / "out" / "spiece.model")


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("vision_model.head.probe"),
     r"missing tensor 'vision_model.head.probe' \(expected shape \(1, 1, 64\)\)"),
    (lambda s: s.update({"text_model.extra.weight": np.zeros((2, 2), np.float32)}),
     r"unexpected tensor 'text_model.extra.weight' with shape \(2, 2\)"),
    (lambda s: s.update({"text_model.head.weight": np.zeros((64, 63), np.float32)}),
     r"'text_model.head.weight' has shape \(64, 63\), expected \(64, 64\)"),
    (lambda s: s.update({"vision_model.head.attention.in_proj_weight":
                         np.zeros((3 * 64, 32), np.float32)}),
     r"'vision_model.head.attention.in_proj_weight' has shape \(192, 32\), expected "
     r"\(192, 64\)"),
])
def test_strict_errors_name_the_tensor(hf_dir, edit, message):
    hf, _ = hf_dir
    state = _numpy_state(hf)
    edit(state)
    with pytest.raises(UserError, match=message):
        convert.import_state_dict("hf", state, hf.config.to_dict())


def test_unsupported_checkpoints_are_one_clear_error(tmp_path, hf_dir):
    _, src = hf_dir
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "siglip2"}))
    with pytest.raises(UserError, match="NaFlex"):
        convert.import_weights("hf", str(src), str(tmp_path / "c"))
    (src / "config.json").write_text(json.dumps(config))
    convert.import_weights("hf", str(src), str(tmp_path / "ckpt"))
    with pytest.raises(UserError, match="SigLIP weights convert with --format hf"):
        convert.export_weights("openai", str(tmp_path / "ckpt"), str(tmp_path / "w.pt"))


def test_encoder_matches_transformers_with_the_checkpoint_tokenizer(tmp_path, hf_dir, rng):
    from hf_reference import hf_siglip_outputs

    from reasonclip_jax.data import transforms
    from reasonclip_jax.evaluators.encoder import Encoder

    hf, src = hf_dir
    write_spiece(str(src))
    convert.import_weights("hf", str(src), str(tmp_path / "ckpt"))
    params, config = checkpoint.load_model(str(tmp_path / "ckpt"))
    tok_dir = convert.tokenizer_dir_of(str(tmp_path / "ckpt"))
    theirs = transformers.SiglipTokenizer.from_pretrained(tok_dir)
    texts = ["A photo of a CAT!", "the glass will spill because it is tilted", "dogs"]
    # Images as the evaluators hand them (CLIP-normalised floats) against transformers fed
    # the same pixels normalised to [-1, 1].
    pixels = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    clip_normalised = transforms.normalize(pixels)
    siglip_normalised = ((pixels / 255.0 - 0.5) / 0.5).astype(np.float32)
    for longest in (False, True):
        encoder = Encoder(params, config, batch_size=2, tokenizer_dir=tok_dir,
                          pad_texts_to_longest=longest)
        for start in (0, 2):  # the release pads each batch of texts to its longest
            chunk = texts[start : start + 2]
            ids = theirs(chunk, padding=True if longest else "max_length", truncation=True,
                         max_length=64)["input_ids"]
            ref = hf_siglip_outputs(hf, siglip_normalised, np.array(ids))
            np.testing.assert_allclose(encoder.texts(texts)[start : start + 2],
                                       ref["text_embeds"], atol=1e-4, rtol=0)
        np.testing.assert_allclose(encoder.images(clip_normalised), ref["image_embeds"],
                                   atol=1e-4, rtol=0)
    by_length = [Encoder(params, config, 2, tokenizer_dir=tok_dir, pad_texts_to_longest=p)
                 .texts(texts) for p in (False, True)]
    assert np.abs(by_length[0] - by_length[1]).max() > 1e-3  # the padding matters to SigLIP
