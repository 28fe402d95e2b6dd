"""SigLIP's and SigLIP 2's tokenizers against transformers' SiglipTokenizer / GemmaTokenizer
loaded from the same files (a SentencePiece unigram model and a Gemma-style BPE
tokenizer.json with byte fallback, both built here from a small corpus)."""

import numpy as np
import pytest
import transformers
from tokenizer_files import write_gemma, write_gemma_config, write_spiece

from reasonclip_jax.errors import UserError
from reasonclip_jax.models.siglip_tokenizer import (
    GemmaTokenizer,
    SiglipTokenizer,
    load_tokenizer,
)

TEXTS = [
    "A photo of a CAT!", "  the   glass, will spill. ", "", "zebra xylophone quux",
    "the drink is hot and the ice melts and people wait for the bus in the rain " * 4,
    "café ñ 日本 🙂", "hello</s>world", "</s> starts special", "<unk> x", "\u2581 a \u2581b",
    "tab\there\nnew line", "It's 5 o'clock -- (really)?", "UPPER lower MiXeD",
]


@pytest.fixture(scope="module")
def spiece_dir(tmp_path_factory):
    return write_spiece(str(tmp_path_factory.mktemp("siglip_tok")))


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return write_gemma(str(tmp_path_factory.mktemp("gemma_tok")))


@pytest.mark.parametrize("length", [64, 8])
def test_siglip_ids_match_transformers(spiece_dir, length):
    ours = SiglipTokenizer(spiece_dir)
    theirs = transformers.SiglipTokenizer.from_pretrained(spiece_dir)
    expected = theirs(TEXTS, padding="max_length", truncation=True,
                      max_length=length)["input_ids"]
    np.testing.assert_array_equal(ours(TEXTS, length), np.array(expected, np.int32))
    assert (ours(TEXTS, length) == ours.eos_id).any(axis=1).all()  # every row ends with </s>


def test_siglip_pad_to_longest_matches_the_release_padding(spiece_dir):
    ours = SiglipTokenizer(spiece_dir)
    theirs = transformers.SiglipTokenizer.from_pretrained(spiece_dir)
    texts = TEXTS[:4]
    expected = theirs(texts, padding=True, truncation=True, max_length=64)["input_ids"]
    got = ours(texts, 64, pad_to_longest=True)
    assert got.shape[1] < 64
    np.testing.assert_array_equal(got, np.array(expected, np.int32))


@pytest.mark.parametrize("side", ["right", "left", None])
@pytest.mark.parametrize("length", [64, 6])
def test_gemma_ids_match_transformers_on_lowercased_text(gemma_dir, side, length):
    write_gemma_config(gemma_dir, **({"padding_side": side} if side else {}))
    ours = GemmaTokenizer(gemma_dir)
    theirs = transformers.AutoTokenizer.from_pretrained(gemma_dir)
    assert isinstance(theirs, transformers.GemmaTokenizer)
    expected = theirs([t.lower() for t in TEXTS], padding="max_length", truncation=True,
                      max_length=length)["input_ids"]
    np.testing.assert_array_equal(ours(TEXTS, length), np.array(expected, np.int32))
    assert ours("Byte 日")[0].tolist() == ours("byte 日")[0].tolist()  # lower-cased
    assert (ours(TEXTS, length) == ours.backend.token_to_id("<bos>")).any(axis=1).all()


def test_gemma_pad_to_longest(gemma_dir):
    write_gemma_config(gemma_dir, padding_side="right")
    ours = GemmaTokenizer(gemma_dir)
    theirs = transformers.AutoTokenizer.from_pretrained(gemma_dir)
    texts = TEXTS[:4]
    expected = theirs([t.lower() for t in texts], padding=True, truncation=True,
                      max_length=64)["input_ids"]
    np.testing.assert_array_equal(ours(texts, 64, pad_to_longest=True),
                                  np.array(expected, np.int32))


def test_tokenizers_rebuild_in_worker_processes(spiece_dir, gemma_dir):
    import pickle

    write_gemma_config(gemma_dir)
    for tok in (SiglipTokenizer(spiece_dir), GemmaTokenizer(gemma_dir)):
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(tok))(TEXTS), tok(TEXTS))


def test_missing_files_are_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="needs its files"):
        load_tokenizer("siglip", None)
    with pytest.raises(UserError, match="has no spiece.model"):
        load_tokenizer("siglip", str(tmp_path))
    with pytest.raises(UserError, match="has no tokenizer.json"):
        load_tokenizer("gemma", str(tmp_path))
