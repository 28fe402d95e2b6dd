"""SigLIP's and SigLIP 2's tokenizers against transformers' SiglipTokenizer / GemmaTokenizer
loaded from the same files (a SentencePiece unigram model and a Gemma-style BPE
tokenizer.json with byte fallback, both built here from a small corpus)."""

import io
import json

import numpy as np
import pytest
import transformers

from reasonclip_jax.errors import UserError
from reasonclip_jax.models.siglip_tokenizer import (
    GemmaTokenizer,
    SiglipTokenizer,
    load_tokenizer,
)

CORPUS = [
    "a photo of a cat sitting on the mat", "the glass will spill because it is tilted",
    "two dogs run along the beach at sunset", "a red ball rests on top of a wooden box",
    "the drink is hot so the ice is melting", "people wait for the bus in the heavy rain",
    "the child is about to jump into the pool", "steam rises from the kettle on the stove",
]
TEXTS = [
    "A photo of a CAT!", "  the   glass, will spill. ", "", "zebra xylophone quux",
    "the drink is hot and the ice melts and people wait for the bus in the rain " * 4,
    "café ñ 日本 🙂", "hello</s>world", "</s> starts special", "<unk> x", "\u2581 a \u2581b",
    "tab\there\nnew line", "It's 5 o'clock -- (really)?", "UPPER lower MiXeD",
]


@pytest.fixture(scope="module")
def spiece_dir(tmp_path_factory):
    import sentencepiece

    directory = tmp_path_factory.mktemp("siglip_tok")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=model, vocab_size=150,
        hard_vocab_limit=False, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        character_coverage=1.0)
    (directory / "spiece.model").write_bytes(model.getvalue())
    return str(directory)


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from tokenizers.trainers import BpeTrainer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = normalizers.Replace(" ", "\u2581")
    trained.train_from_iterator(CORPUS * 20, BpeTrainer(vocab_size=200, special_tokens=specials))
    data = json.loads(trained.to_str())
    vocab = dict(data["model"]["vocab"])
    for b in range(256):  # Gemma's byte-fallback pieces
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in data["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])])
    directory = tmp_path_factory.mktemp("gemma_tok")
    tok.save(str(directory / "tokenizer.json"))
    return directory


def _write_config(directory, **fields):
    config = {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
              "pad_token": "<pad>", "unk_token": "<unk>", **fields}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


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
    _write_config(gemma_dir, **({"padding_side": side} if side else {}))
    ours = GemmaTokenizer(str(gemma_dir))
    theirs = transformers.AutoTokenizer.from_pretrained(str(gemma_dir))
    assert isinstance(theirs, transformers.GemmaTokenizer)
    expected = theirs([t.lower() for t in TEXTS], padding="max_length", truncation=True,
                      max_length=length)["input_ids"]
    np.testing.assert_array_equal(ours(TEXTS, length), np.array(expected, np.int32))
    assert ours("Byte 日")[0].tolist() == ours("byte 日")[0].tolist()  # lower-cased
    assert (ours(TEXTS, length) == ours.backend.token_to_id("<bos>")).any(axis=1).all()


def test_gemma_pad_to_longest(gemma_dir):
    _write_config(gemma_dir, padding_side="right")
    ours = GemmaTokenizer(str(gemma_dir))
    theirs = transformers.AutoTokenizer.from_pretrained(str(gemma_dir))
    texts = TEXTS[:4]
    expected = theirs([t.lower() for t in texts], padding=True, truncation=True,
                      max_length=64)["input_ids"]
    np.testing.assert_array_equal(ours(texts, 64, pad_to_longest=True),
                                  np.array(expected, np.int32))


def test_tokenizers_rebuild_in_worker_processes(spiece_dir, gemma_dir):
    import pickle

    _write_config(gemma_dir)
    for tok in (SiglipTokenizer(spiece_dir), GemmaTokenizer(str(gemma_dir))):
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(tok))(TEXTS), tok(TEXTS))


def test_missing_files_are_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="needs its files"):
        load_tokenizer("siglip", None)
    with pytest.raises(UserError, match="has no spiece.model"):
        load_tokenizer("siglip", str(tmp_path))
    with pytest.raises(UserError, match="has no tokenizer.json"):
        load_tokenizer("gemma", str(tmp_path))
