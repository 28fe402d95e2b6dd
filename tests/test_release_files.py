"""Release files: an HF export that loads with `CLIPProcessor`/`AutoProcessor` and tokenises
and preprocesses like this project, provenance beside every export, and the OpenAI-format
export checked against a transcription of OpenAI's model (tests/reference_openai_clip.py).

    python -m pytest -q tests/test_release_files.py
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import tomllib
import warnings

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from conftest import random_tokens
from flax import traverse_util
from reference_openai_clip import OpenAICLIP
from test_tokenizer import CORPUS as TOKENIZER_CORPUS
from test_tokenizer import FUZZ as TOKENIZER_FUZZ
from test_transforms import _noise_image

from reasonclip_jax.data.transforms import eval_transform
from reasonclip_jax.errors import UserError
from reasonclip_jax.models import hf_processor
from reasonclip_jax.models.clip import CLIP, get_preset, init_params
from reasonclip_jax.models.tokenizer import clean, tokenize
from reasonclip_jax.tools import convert
from reasonclip_jax.train import checkpoint

TINY = get_preset("tiny")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOT, PAD_ID = 49407, 49407
PIXEL_TOLERANCE = 2e-6  # same PIL resize and integer crop; float32 rounding of the normalisation
PROCESSOR_FILES = {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "preprocessor_config.json"}

# Text transformers tokenises exactly as this project: OpenAI's cleaning changes nothing in
# it but whitespace and case.
RAW_IDENTICAL = [
    "a photo of a cat",
    "A Photo Of A CAT sitting on the Mat.",
    "hello, world... isn't it?! (yes) [no] {maybe}",
    "don't won't can't I'm you're we've they'll he'd IT'S",
    "3 apples + 4 pears = 7 fruits; 1234567890; pi = 3.14159; -42",
    "$19.99 (50% off!) #sale @shop 12:30pm 2024-01-05 a/b\\c|d_e~f^g`h",
    "https://example.com/path?q=1&r=2 and R&D, fish & chips",
    "naïve café résumé crème brûlée, Ångström, Straße, İstanbul",
    "e\u0301te\u0301 decomposed accents",
    "猫が好きです 一只猫坐在沙发上 고양이 Москва — столица مرحبا नमस्ते",
    "emoji 😀🎉 👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "tabs\tand\nnewlines\r\nand   spaces\xa0nbsp\u3000wide",
    "  leading and trailing  ",
    "",
    "   ",
    "!!! ??? ... --- ***",
    "<b>tags</b> are text",
    "the glass will spill because it is tilted",
    "<|startoftext|>spelled <|endoftext|> specials",
    "a very long caption about a dog running in the park " * 20,  # truncated at 77
    "東京の夜景" * 60,  # multi-byte, truncated
    "x" * 400,  # one long word
]

# Inputs on which transformers' tokenizer differs, and why (models/hf_processor.py).
DIFFERENCES = {
    "html entity": "fish &amp; chips",
    "numeric entity": "it&#39;s",
    "curly quotes (ftfy)": "\u201chello\u201d",
    "ligature (ftfy)": "\ufb01ne",
    "full width (ftfy)": "\uff21\uff22\uff23",
    "mojibake (ftfy)": "caf\u00c3\u00a9",
    "control character (ftfy)": "a\x07b",
    "terminal escape (ftfy)": "\x1b[31mred\x1b[0m",
    "final sigma (lower-casing)": "ΟΔΟΣ",
    "upper-case special token": "<|ENDOFTEXT|> hi",
}


# ------------------------------------------------------------------------- fixtures


def random_params(config=TINY, seed=0) -> dict:
    """Flax-initialised params with every bias and LayerNorm randomised as well."""
    params = jax.tree.map(np.asarray, nn.unbox(init_params(CLIP(config), jax.random.key(seed))))
    rng = np.random.default_rng(seed + 1)
    flat = traverse_util.flatten_dict(params, sep="/")
    for key, value in flat.items():
        if key.endswith(("/bias", "/scale")):
            flat[key] = (value + 0.1 * rng.standard_normal(value.shape)).astype(np.float32)
    return traverse_util.unflatten_dict(flat, sep="/")


@pytest.fixture(scope="module")
def params():
    return random_params()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, params):
    path = str(tmp_path_factory.mktemp("release") / "ckpt")
    checkpoint.save_model(path, params, TINY)
    return path


@pytest.fixture(scope="module")
def hf_export(ckpt, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("release") / "hf")
    convert.export_weights("hf", ckpt, out)
    return out


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():  # "CLIPImageProcessor requires torchvision" -> PIL backend
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------- HF tokenizer


def _assert_rows_match(hf_ids, hf_mask, texts, context_length):
    """HF rows equal ours up to and including the closing end token; then HF pads with 49407
    (mask 0) where we pad with 0."""
    ours = tokenize(texts, context_length)
    hf_ids, hf_mask = np.asarray(hf_ids), np.asarray(hf_mask)
    assert hf_ids.shape == ours.shape == hf_mask.shape
    for i, text in enumerate(texts):
        n = int(np.flatnonzero(ours[i])[-1]) + 1  # a body's last token ends in </w>: never 0
        np.testing.assert_array_equal(hf_ids[i, :n], ours[i, :n], err_msg=repr(text))
        assert (hf_ids[i, n:] == PAD_ID).all() and (ours[i, n:] == 0).all(), repr(text)
        assert hf_mask[i].tolist() == [1] * n + [0] * (context_length - n), repr(text)


def _tokenizers_rows(export, texts, context_length):
    """The `tokenizers` pipeline of tokenizer.json as is (what transformers 4.x's
    CLIPTokenizerFast runs), with OpenAI-style truncation and padding."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(export, "tokenizer.json"))
    tok.enable_truncation(max_length=context_length)
    tok.enable_padding(pad_id=PAD_ID, pad_token="<|endoftext|>", length=context_length)
    encodings = tok.encode_batch(texts)
    return [e.ids for e in encodings], [e.attention_mask for e in encodings]


LOADERS = {
    "CLIPTokenizer": lambda d: transformers.CLIPTokenizer.from_pretrained(d),
    "CLIPTokenizerFast": lambda d: transformers.CLIPTokenizerFast.from_pretrained(d),
    "AutoTokenizer": lambda d: transformers.AutoTokenizer.from_pretrained(d),
    "AutoProcessor": lambda d: _quiet(transformers.AutoProcessor.from_pretrained, d).tokenizer,
}


@pytest.mark.parametrize("loader", [*LOADERS, "tokenizers", "vocab+merges only"])
def test_hf_tokenizer_gives_project_ids(hf_export, tmp_path, loader):
    texts = RAW_IDENTICAL
    if loader == "tokenizers":
        ids, mask = _tokenizers_rows(hf_export, texts, 77)
    else:
        export = hf_export
        if loader == "vocab+merges only":  # transformers builds the BPE from the two files
            export = str(tmp_path / "no_tokenizer_json")
            os.makedirs(export)
            for name in PROCESSOR_FILES - {"tokenizer.json"}:
                with open(os.path.join(hf_export, name)) as f, \
                        open(os.path.join(export, name), "w") as g:
                    g.write(f.read())
            loader = "CLIPTokenizer"
        tok = LOADERS[loader](export)
        assert tok.model_max_length == 77 and tok.pad_token_id == PAD_ID
        out = tok(texts, padding="max_length", truncation=True)  # max_length: model_max_length
        ids, mask = out["input_ids"], out["attention_mask"]
    _assert_rows_match(ids, mask, texts, 77)


def test_hf_tokenizer_truncates_at_the_model_context_length(tmp_path):
    config = dataclasses.replace(TINY, context_length=24)
    hf_processor.write_processor_files(str(tmp_path), config)
    tok = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
    assert tok.model_max_length == 24
    texts = ["word " * 40, "a short one", "東京の夜景" * 20]
    out = tok(texts, padding="max_length", truncation=True)
    _assert_rows_match(out["input_ids"], out["attention_mask"], texts, 24)
    assert [row[-1] for row in out["input_ids"]] == [EOT, PAD_ID, EOT]


def test_hf_tokenizer_on_cleaned_text_gives_project_ids(hf_export):
    """Cleaning first (`tokenizer.clean`: ftfy, html.unescape, whitespace, lower case) closes
    every gap but the two regex ones (special-token spellings, long s after an apostrophe)."""
    tok = transformers.CLIPTokenizer.from_pretrained(hf_export)
    texts = [t for t in TOKENIZER_CORPUS + TOKENIZER_FUZZ + list(DIFFERENCES.values())
             if "oftext|>" not in clean(t) and "ſ" not in clean(t)]
    assert len(texts) > 400
    out = tok([clean(t) for t in texts], padding="max_length", truncation=True)
    _assert_rows_match(out["input_ids"], out["attention_mask"], texts, 77)


@pytest.mark.parametrize("text", DIFFERENCES.values(), ids=DIFFERENCES.keys())
def test_documented_differences_are_real(hf_export, text):
    tok = transformers.CLIPTokenizer.from_pretrained(hf_export)
    ours = tokenize(text)[0]
    ours = ours[: int(np.flatnonzero(ours)[-1]) + 1].tolist()
    assert tok(text)["input_ids"] != ours
    assert tok(clean(text))["input_ids"] == ours


def test_padding_with_id_0_is_not_possible(hf_export):
    """Why the export pads with 49407: pad token "!" (id 0) becomes a special token and changes
    the ids of every "!" in the text."""
    tok = transformers.CLIPTokenizer.from_pretrained(hf_export, pad_token="!")
    assert tok.pad_token_id == 0
    assert tokenize("hello!")[0, :4].tolist() == [49406, 3306, 256, EOT]
    assert tok("hello!")["input_ids"] == [49406, 3306, 0, EOT]


# ------------------------------------------------------------------------- HF image processor


@pytest.mark.parametrize(("width", "height"), [(100, 64), (64, 101), (65, 97), (64, 64),
                                               (30, 20)])
def test_hf_image_processor_matches_eval_transform(hf_export, width, height):
    image = _noise_image(width, height, seed=width * 1000 + height)
    ours = eval_transform(image, TINY.image_size)
    for processor in (_quiet(transformers.CLIPImageProcessor.from_pretrained, hf_export),
                      _quiet(transformers.CLIPProcessor.from_pretrained, hf_export)
                      .image_processor):
        theirs = processor(images=image, return_tensors="np")["pixel_values"][0]
        assert theirs.shape == (3, TINY.image_size, TINY.image_size)
        assert np.abs(ours - theirs.transpose(1, 2, 0)).max() < PIXEL_TOLERANCE


def test_release_evaluation_path_matches_the_flax_model(hf_export, params):
    """The release's `load_model_and_processor` (AutoModel + AutoProcessor) and its scoring
    call (padding=True, truncation=True, max_length=77) give the Flax model's logits."""
    model = transformers.AutoModel.from_pretrained(hf_export).eval()
    processor = _quiet(transformers.AutoProcessor.from_pretrained, hf_export)
    assert isinstance(processor, transformers.CLIPProcessor)
    images = [_noise_image(w, h, seed=w + h) for w, h in [(80, 64), (64, 100), (64, 64)]]
    texts = ["a red ball on a box", "the drink is hot!", "naïve café, 3 cats",
             "word " * 100]
    with torch.no_grad():
        out = model(**_quiet(processor, images=images, text=texts, return_tensors="pt",
                             padding=True, truncation=True, max_length=77))
    ours = CLIP(TINY).apply({"params": params},
                            np.stack([eval_transform(im, TINY.image_size) for im in images]),
                            tokenize(texts))
    np.testing.assert_allclose(out.image_embeds.numpy(), ours["image_embeds"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out.text_embeds.numpy(), ours["text_embeds"], atol=1e-4, rtol=0)
    logits = np.exp(ours["logit_scale"]) * ours["image_embeds"] @ ours["text_embeds"].T
    np.testing.assert_allclose(out.logits_per_image.numpy(), logits, atol=1e-4, rtol=0)


def test_hf_export_files(hf_export):
    assert set(os.listdir(hf_export)) == PROCESSOR_FILES | {
        "config.json", "model.safetensors", convert.PROVENANCE_FILE}
    with open(os.path.join(hf_export, "preprocessor_config.json")) as f:
        pre = json.load(f)
    assert pre["size"] == {"shortest_edge": 64} and pre["crop_size"] == {"height": 64,
                                                                         "width": 64}
    assert pre["resample"] == int(PIL.Image.Resampling.BICUBIC)
    with open(os.path.join(hf_export, "merges.txt")) as f:
        assert len(f.read().splitlines()) == 1 + 48894  # header + CLIP's merges


def test_hf_export_of_a_model_with_another_vocabulary_fails_before_writing(tmp_path):
    config = dataclasses.replace(TINY, vocab_size=1000)
    checkpoint.save_model(str(tmp_path / "ckpt"), random_params(config), config)
    with pytest.raises(UserError, match="vocabulary has 1000 tokens"):
        convert.export_weights("hf", str(tmp_path / "ckpt"), str(tmp_path / "hf"))
    assert not os.path.exists(tmp_path / "hf" / "model.safetensors")


# ------------------------------------------------------------------------- OpenAI export


def openai_reference(config=TINY) -> OpenAICLIP:
    return OpenAICLIP(
        config.embed_dim, config.image_size, config.vision_layers, config.vision_width,
        config.patch_size, config.context_length, config.vocab_size, config.text_width,
        config.text_heads, config.text_layers, vision_heads=config.vision_heads,
    ).eval()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_openai_export_runs_in_openai_reference_model(ckpt, params, tmp_path, rng, suffix):
    out = str(tmp_path / f"w{suffix}")
    convert.export_weights("openai", ckpt, out)
    if suffix == ".pt":
        state = torch.load(out, weights_only=True)
    else:
        from safetensors.torch import load_file

        state = load_file(out)
    ref = openai_reference()
    ref.load_state_dict(state, strict=True)  # every key, no extra
    images = rng.standard_normal((3, 64, 64, 3)).astype(np.float32)
    tokens = np.concatenate([random_tokens(rng, 2), tokenize(["a photo of a cat", "x " * 90])])
    with torch.no_grad():
        img = ref.encode_image(torch.tensor(images).permute(0, 3, 1, 2))
        txt = ref.encode_text(torch.tensor(tokens, dtype=torch.long))
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        ref_logits = (ref.logit_scale.exp() * img @ txt.T).numpy()  # OpenAI's logits_per_image
    ours = CLIP(TINY).apply({"params": params}, images, tokens)
    logits = np.exp(ours["logit_scale"]) * ours["image_embeds"] @ ours["text_embeds"].T
    assert np.abs(img.numpy() - ours["image_embeds"]).max() <= 1e-4
    assert np.abs(txt.numpy() - ours["text_embeds"]).max() <= 1e-4
    assert np.abs(ref_logits - logits).max() <= 1e-4
    assert np.abs(ref_logits).max() > 1.0  # the comparison is not of near-zero numbers


# ------------------------------------------------------------------------- provenance


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, params):
    """A trainer workdir's layout: checkpoints/STEP and a best/ written by BestCheckpoint."""
    workdir = tmp_path_factory.mktemp("run")
    checkpoint.save_model(str(workdir / "checkpoints" / "4"), params, TINY)
    checkpoint.save_model(str(workdir / "checkpoints" / "7"), params, TINY)
    best = checkpoint.BestCheckpoint(str(workdir / "best"), "val/loss", "min")
    assert best.update(4, {"val/loss": 0.25}, params, TINY)
    return workdir


def _pyproject_version() -> str:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["version"]


def _check_common(info: dict, weights: str, fmt: str) -> None:
    with open(weights, "rb") as f:
        assert info["weights"] == {os.path.basename(weights): {
            "sha256": hashlib.sha256(f.read()).hexdigest()}}
    assert info["format"] == fmt and info["dtype"] == "float32"
    assert info["model_config"] == dataclasses.asdict(TINY)
    assert info["project"] == {"name": "reasonclip_jax", "version": _pyproject_version()}
    when = datetime.datetime.fromisoformat(info["exported_at_utc"])
    now = datetime.datetime.now(datetime.UTC)
    assert when.utcoffset() == datetime.timedelta(0)
    assert datetime.timedelta(0) <= now - when < datetime.timedelta(minutes=5)


def _read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def test_provenance_of_best_weights(run_dir, tmp_path):
    out = str(tmp_path / "hf")
    returned = convert.export_weights("hf", str(run_dir / "best"), out)
    info = _read(os.path.join(out, convert.PROVENANCE_FILE))
    assert info == returned
    _check_common(info, os.path.join(out, "model.safetensors"), "hf")
    source = info["source"]
    assert source["step"] == 4 and source["selection"] == {"metric": "val/loss", "value": 0.25}
    assert source["checkpoint"] == str(run_dir / "best")
    assert source["resolved"] == str(run_dir / "best" / "4")
    assert source["workdir"] == str(run_dir)
    assert "step 4" in source["description"] and "val/loss=0.25" in source["description"]
    # This workdir was not written by the trainer, so it has no config.json: null, not guessed.
    assert info["training_config"] is None and info["training_config_file"] is None


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_provenance_of_a_workdir_names_its_latest_step(run_dir, tmp_path, suffix):
    out = str(tmp_path / f"w{suffix}")
    convert.export_weights("openai", str(run_dir), out)
    assert sorted(os.listdir(tmp_path)) == sorted([f"w{suffix}", f"w{suffix}.provenance.json"])
    info = _read(f"{out}.provenance.json")
    _check_common(info, out, "openai")
    assert info["source"]["step"] == 7 and info["source"]["selection"] is None
    assert info["source"]["resolved"] == str(run_dir / "checkpoints" / "7")
    assert info["source"]["workdir"] == str(run_dir)


def test_provenance_of_a_plain_checkpoint_has_no_step(ckpt, tmp_path):
    info = convert.export_weights("openai", ckpt, str(tmp_path / "w.safetensors"))
    assert info["source"]["step"] is None and info["source"]["workdir"] is None
    assert info["training_config"] is None


def test_provenance_records_a_training_config_in_the_workdir(params, tmp_path):
    workdir = tmp_path / "run"
    checkpoint.save_model(str(workdir / "checkpoints" / "3"), params, TINY)
    config = ml_collections.ConfigDict({"stage": "stage1", "total_steps": 3,
                                        "optimizer": {"lr": 1e-5}, "mesh": {"fsdp": -1}})
    # As the trainer writes it (train/trainer.py).
    (workdir / convert.TRAIN_CONFIG_FILE).write_text(config.to_json_best_effort(indent=1) + "\n")
    info = convert.export_weights("openai", str(workdir), str(tmp_path / "w.safetensors"))
    assert info["training_config"] == config.to_dict()
    assert info["training_config_file"] == str(workdir / convert.TRAIN_CONFIG_FILE)
    (workdir / convert.TRAIN_CONFIG_FILE).write_text("{not json")
    with pytest.raises(UserError, match="not readable JSON"):
        convert.export_weights("openai", str(workdir), str(tmp_path / "v.safetensors"))
    assert not os.path.exists(tmp_path / "v.safetensors")  # nothing half-written


def test_export_command_prints_the_step(run_dir, tmp_path, capsys):
    convert.main(["export", "--format", "openai", "--input", str(run_dir / "best"),
                  "--output", str(tmp_path / "w.safetensors")])
    out = capsys.readouterr().out
    assert "exported step 4:" in out and "val/loss=0.25" in out
    convert.main(["export", "--format", "openai", "--input", str(run_dir),
                  "--output", str(tmp_path / "v.safetensors")])
    assert "exported step 7:" in capsys.readouterr().out
