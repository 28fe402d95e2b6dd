"""Small tokenizer files of each SigLIP kind, built locally from a corpus (no downloads):
a SentencePiece unigram `spiece.model` (SigLIP) and a Gemma-style BPE `tokenizer.json` with
byte fallback (SigLIP 2)."""

import io
import json
import os

CORPUS = [
    "a photo of a cat sitting on the mat", "the glass will spill because it is tilted",
    "two dogs run along the beach at sunset", "a red ball rests on top of a wooden box",
    "the drink is hot so the ice is melting", "people wait for the bus in the heavy rain",
    "the child is about to jump into the pool", "steam rises from the kettle on the stove",
]
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


def write_spiece(directory: str) -> str:
    """`directory/spiece.model`: a unigram model with <pad>=0, </s>=1, <unk>=2 as SigLIP's."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=model, vocab_size=150,
        hard_vocab_limit=False, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        character_coverage=1.0)
    with open(os.path.join(directory, "spiece.model"), "wb") as f:
        f.write(model.getvalue())
    return directory


def write_gemma(directory: str) -> str:
    """`directory/tokenizer.json`: BPE with byte fallback, spaces as U+2581, <bos> first."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from tokenizers.trainers import BpeTrainer

    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = normalizers.Replace(" ", "\u2581")
    trained.train_from_iterator(CORPUS * 20, BpeTrainer(vocab_size=200,
                                                        special_tokens=GEMMA_SPECIALS))
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
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in GEMMA_SPECIALS])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])])
    tok.save(os.path.join(directory, "tokenizer.json"))
    return directory


def write_gemma_config(directory: str, **fields) -> None:
    """`tokenizer_config.json` of a GemmaTokenizer, `fields` added (e.g. padding_side)."""
    config = {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
              "pad_token": "<pad>", "unk_token": "<unk>", **fields}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
