"""The CLIP tokenizer gives OpenAI's ids: compared with a transcription of OpenAI's tokenizer
(tests/reference_simple_tokenizer.py) and with transformers' `CLIPTokenizer`.

    python -m pytest tests/test_tokenizer.py
"""

import json
import pickle
import random

import numpy as np
import pytest
from reference_simple_tokenizer import SimpleTokenizer, basic_clean, whitespace_clean

from reasonclip_jax.models import tokenizer

CONTEXT_LENGTHS = (77, 64, 16)

CORPUS = [
    # Plain captions, case, contractions, numbers.
    "a photo of a cat",
    "A Photo Of A CAT sitting on the Mat.",
    "It's raining; they'll stay in. I'M sure we'd've gone, DON'T you think?",
    "In 2023, 1,000,000 people paid $3.14 for 42 items (about 99.9%).",
    "rock'n'roll, o'clock... l'été -- well!!! ??? #hashtag @user e-mail: a.b@c.de",
    "salt & pepper; fish&chips; R&D; black &\twhite &",
    # Accents, Latin specials, other scripts.
    "Café crème brûlée à Paris, naïve façade, Ångström, Straße, İstanbul, ŒUVRE",
    "e\u0301te\u0301 (decomposed accents) and été (composed)",
    "東京タワーの夜景と富士山",
    "一只猫坐在沙发上，看着窗外的雨。",
    "고양이가 소파에 앉아 있다",
    "قطة تجلس على الأريكة في الغرفة",
    "חתול יושב על הספה",
    "नमस्ते दुनिया, बिल्ली सोफे पर बैठी है",
    "แมวนั่งบนโซฟา",
    "Привет, мир! Кошка сидит на диване.",
    "Digits elsewhere: ٣ ١٢ ½ Ⅻ ² ５",
    # Emoji.
    "party time 🎉🐱🐶 with friends 👍🏽👍",
    "family 👨‍👩‍👧 and flags 🇫🇷🇯🇵 and ❤️",
    # HTML entities, including double-escaped ones and text where ftfy skips unescaping.
    "Tom &amp; Jerry",
    "it&#39;s a dog&#39;s life",
    "&lt;b&gt;bold&lt;/b&gt; and &quot;quoted&quot;",
    "&amp;amp;amp; triple &amp;amp; double",
    "5 &gt; 3 < 4 &amp; x",
    "non&nbsp;breaking&nbsp;space and &#x1F600; and &eacute;",
    # ftfy's fixes: mojibake, curly quotes, ligatures, full width, terminal escapes.
    "âœ” No problems, cafÃ© au lait",
    "“smart quotes” and ‘single ones’",
    "ﬁne ﬂour, ＬＯＵＤ ＮＯＩＳＥＳ",
    "\x1b[31mred text\x1b[0m done",
    # Whitespace and control characters.
    "  lots\t\tof \n\n whitespace \r\n here  ",
    "\u3000ideographic\u3000space\xa0and\u2028separators\u2003em",
    "vertical\x0btab\x0cform feed\x1cfile separator",
    "nul\x00bell\x07del\x7fend",
    "",
    "   \t\n  ",
    "&amp;",
    # Special token spellings and case folding.
    "<|startoftext|>a<|endoftext|>",
    "caption with <|endoftext|> inside and <|ENDOFTEXT|>",
    "<start_of_text>open clip spelling<end_of_text>",
    "<|ſtartoftext|> long s, 'ſ and the Kelvin sign K",
    # Far longer than any context.
    "a very long caption about a dog running in the park " * 30,
    "東京の夜景" * 80,
    "pneumonoultramicroscopicsilicovolcanoconiosis" * 12,
    "🎉🐱 " * 100,
]

# Characters and fragments the fuzz corpus is drawn from: ASCII (the fast paths) and the rest.
ASCII_PIECES = list("aAbZz09 '.,;:!?&#<>|-_/\\\"()[]{}") + [
    " ",
    "\t",
    "\n",
    "\r",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x00",
    "\x1b",
    "\x7f",
    "'s",
    "'LL",
    "&amp;",
    "&#39;",
    "&lt;",
    "<|endoftext|>",
    "cat",
    "Dog",
    "Xylophone",
    " & ",
]
UNICODE_PIECES = [
    "é",
    "e\u0301",
    "ß",
    "İ",
    "ſ",
    "K",
    "東",
    "ق",
    "न्",
    "🎉",
    "👍🏽",
    "\u200d",
    "\xa0",
    "\u3000",
    "½",
    "٣",
    "ﬁ",
    "Ａ",
    "“",
    "Ã©",
    "â€",
    "&#x1F600;",
    "&nbsp;",
    "\u0085",
]


def fuzz_texts(pieces: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(pieces, k=rng.randint(0, 40))) for _ in range(count)]


FUZZ = fuzz_texts(ASCII_PIECES, 300, seed=0) + fuzz_texts(ASCII_PIECES + UNICODE_PIECES, 300, 1)


@pytest.fixture(scope="module")
def reference() -> SimpleTokenizer:
    return SimpleTokenizer(tokenizer.VOCAB_PATH)


@pytest.fixture(scope="module")
def clip_tokenizer() -> tokenizer.Tokenizer:
    return tokenizer.Tokenizer()


def test_vocabulary_matches_reference(clip_tokenizer, reference):
    assert clip_tokenizer.encoder == reference.encoder
    assert clip_tokenizer.vocab_size == 49408
    assert (clip_tokenizer.start_of_text_id, clip_tokenizer.end_of_text_id) == (49406, 49407)


@pytest.mark.parametrize("texts", [CORPUS, FUZZ], ids=["corpus", "fuzz"])
def test_clean_matches_reference(texts):
    for text in texts:
        expected = whitespace_clean(basic_clean(text)).lower()
        assert tokenizer.clean(text) == expected, repr(text)
        assert tokenizer.clean_words(text) == expected.split(), repr(text)


@pytest.mark.parametrize("texts", [CORPUS, FUZZ], ids=["corpus", "fuzz"])
def test_encode_matches_reference(clip_tokenizer, reference, texts):
    for text in texts:
        assert clip_tokenizer.encode(text) == reference.encode(text), repr(text)


@pytest.mark.parametrize("context_length", CONTEXT_LENGTHS)
def test_tokenize_matches_reference(reference, context_length):
    ids = tokenizer.tokenize(CORPUS, context_length)
    assert ids.dtype == np.int32
    assert ids.shape == (len(CORPUS), context_length)
    np.testing.assert_array_equal(ids, reference.tokenize(CORPUS, context_length))


@pytest.mark.parametrize("context_length", CONTEXT_LENGTHS)
def test_truncation_keeps_end_token_last(reference, context_length):
    long_texts = CORPUS[-4:]
    ids = tokenizer.tokenize(long_texts, context_length)
    for row, text in zip(ids, long_texts, strict=True):
        body = reference.encode(text)
        assert len(body) + 2 > context_length
        assert row.tolist() == [49406, *body[: context_length - 2], 49407]


def test_padding_is_zeros_after_end_token():
    ids = tokenizer.tokenize(["a photo of a cat", ""], 16)
    assert ids[0].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407] + [0] * 9
    assert ids[1].tolist() == [49406, 49407] + [0] * 14


def test_single_string_is_one_row():
    np.testing.assert_array_equal(
        tokenizer.tokenize("a photo of a cat", 64), tokenizer.tokenize(["a photo of a cat"], 64)
    )


def test_open_clip_special_token_spelling(reference):
    open_clip_reference = SimpleTokenizer(
        tokenizer.VOCAB_PATH, special_tokens=tokenizer.OPEN_CLIP_SPECIAL_TOKENS
    )
    open_clip_tokenizer = tokenizer.Tokenizer(special_tokens=tokenizer.OPEN_CLIP_SPECIAL_TOKENS)
    texts = ["<start_of_text>x<end_of_text>", "<|startoftext|>x<|endoftext|>", "a <END_OF_TEXT>"]
    for text in texts:
        assert open_clip_tokenizer.encode(text) == open_clip_reference.encode(text)
    assert open_clip_reference.encode(texts[0]) != reference.encode(texts[0])


def test_decode_round_trips_simple_lowercase_text(clip_tokenizer):
    text = "a photo of a cat sitting on the mat next to 3 dogs"
    assert clip_tokenizer.decode(clip_tokenizer.encode(text)) == text + " "


def test_decode_matches_reference(clip_tokenizer, reference):
    for text in CORPUS:
        ids = reference.encode(text)
        assert clip_tokenizer.decode(np.asarray(ids)) == reference.decode(ids), repr(text)


def test_pickled_tokenizer_gives_same_ids(clip_tokenizer):
    copy = pickle.loads(pickle.dumps(clip_tokenizer))
    np.testing.assert_array_equal(copy(CORPUS, 77), clip_tokenizer(CORPUS, 77))


def test_bad_context_length_raises():
    with pytest.raises(ValueError, match="context_length"):
        tokenizer.tokenize("a cat", 0)


def test_matches_transformers_clip_tokenizer(clip_tokenizer, reference, tmp_path):
    """An independent BPE (the `tokenizers` library) over vocab.json/merges.txt of the same file.

    transformers applies neither ftfy nor `html.unescape`, so it is given the text OpenAI's
    cleanup produced; everything after that (splitting, byte map, merges) is compared. Left
    out: texts with a special-token spelling (transformers splits it out anywhere, OpenAI's
    regex only where a match starts: "#<|endoftext|>" is punctuation there) and with long s
    (OpenAI's regex is case-insensitive, so "'ſ" matches "'s"; transformers' is not).
    """
    transformers = pytest.importorskip("transformers")
    (tmp_path / "vocab.json").write_text(json.dumps(reference.encoder))
    merges = "\n".join(" ".join(pair) for pair in reference.merges)
    (tmp_path / "merges.txt").write_text(f"#version: 0.2\n{merges}\n")
    hf_tokenizer = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
    compared = 0
    for text in CORPUS + FUZZ:
        cleaned = whitespace_clean(basic_clean(text)).lower()
        if "oftext|>" in cleaned or "ſ" in cleaned:
            continue
        hf_ids = hf_tokenizer(cleaned, add_special_tokens=False)["input_ids"]
        assert clip_tokenizer.encode(text) == hf_ids, repr(text)
        compared += 1
    assert compared > 400
