"""The text tokenizers of the released SigLIP and SigLIP 2 models, with their conventions.

  - `SiglipTokenizer` (SigLIP): the SentencePiece unigram model `spiece.model` with
    transformers' `SiglipTokenizer` canonicalisation (lower case, ASCII punctuation removed,
    whitespace collapsed, stripped) and an end token `</s>` after the text.
  - `GemmaTokenizer` (SigLIP 2): Gemma's BPE with byte fallback, `tokenizer.json` run
    through the `tokenizers` library as transformers 5 loads it (its post-processor adds the
    special tokens); the text is lower-cased first, as SigLIP 2 was trained.

Rows are padded to `context_length` (64 for the released models, which were trained so and
pool the last position) with the tokenizer's pad token; a text too long keeps its first
tokens (SigLIP: `context_length - 1`, then `</s>`). `pad_to_longest=True` pads only to the
longest text of the call instead, as the release's evaluation scripts do (`padding=True`):
the pooled position then depends on which texts share a batch, so this is an option for
exact replication only.

    python -c "from reasonclip_jax.models import siglip_tokenizer as t; \\
print(t.load_tokenizer('siglip', 'HF_DIR')(['a photo of a cat']))"
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from reasonclip_jax.errors import UserError

SIGLIP_CONTEXT_LENGTH = 64
SPIECE_FILE = "spiece.model"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# The files an HF SigLIP / SigLIP 2 directory carries for its tokenizer (those present).
TOKENIZER_FILES = (SPIECE_FILE, TOKENIZER_JSON, TOKENIZER_CONFIG, "special_tokens_map.json")
_SPIECE_UNDERLINE = "\u2581"
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _tokenizer_config(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, TOKENIZER_CONFIG)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _token(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get(key, default)
    return value["content"] if isinstance(value, dict) else str(value)


def _pad_rows(bodies: list[list[int]], length: int, pad_id: int, left: bool) -> np.ndarray:
    rows = np.full((len(bodies), length), pad_id, np.int32)
    for i, ids in enumerate(bodies):
        if ids and left:
            rows[i, length - len(ids):] = ids
        elif ids:
            rows[i, : len(ids)] = ids
    return rows


class SiglipTokenizer:
    """SigLIP's SentencePiece tokenizer; `tokenizer(texts, context_length)` gives int32 rows."""

    def __init__(self, directory: str):
        import sentencepiece

        path = os.path.join(directory, SPIECE_FILE)
        if not os.path.isfile(path):
            raise UserError(f"{directory} has no {SPIECE_FILE}: not a SigLIP tokenizer")
        self.directory = directory
        config = _tokenizer_config(directory)
        self.lower_case = bool(config.get("do_lower_case", True))
        self.sp = sentencepiece.SentencePieceProcessor(model_file=path)
        self.eos_token = _token(config, "eos_token", "</s>")
        self.pad_token = _token(config, "pad_token", "</s>")
        self.unk_token = _token(config, "unk_token", "<unk>")
        self.eos_id, self.pad_id = (self.sp.piece_to_id(t) for t in (self.eos_token,
                                                                       self.pad_token))
        specials = sorted({self.eos_token, self.pad_token, self.unk_token}, key=len,
                          reverse=True)
        # Special-token spellings in the text are those tokens, whitespace around them dropped.
        self._specials = re.compile(r"\s*(" + "|".join(map(re.escape, specials)) + r")\s*")
        self._unk_length = len(self.sp.encode(self.unk_token))

    def __reduce__(self):
        return (SiglipTokenizer, (self.directory,))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def canonicalize(self, text: str) -> str:
        """Lower case, ASCII punctuation removed, whitespace collapsed, stripped."""
        if self.lower_case:
            text = text.lower()
        return re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()

    def _pieces(self, chunk: str) -> list[str]:
        # No dummy prefix per chunk: the text's only prefix is the leading underline.
        pieces = self.sp.encode(self.unk_token + self.canonicalize(chunk), out_type=str)
        return pieces[self._unk_length:]

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without the end token."""
        parts = self._specials.split(_SPIECE_UNDERLINE + text.replace(_SPIECE_UNDERLINE, " "))
        pieces: list[str] = []
        for i, part in enumerate(parts):
            if i % 2:  # a special token
                if pieces == [_SPIECE_UNDERLINE]:
                    pieces = []  # a text that starts with one
                pieces.append(part)
            elif part:
                pieces += self._pieces(part)
        return [self.sp.piece_to_id(p) for p in pieces]

    def __call__(self, texts: str | Sequence[str], context_length: int = SIGLIP_CONTEXT_LENGTH,
                 pad_to_longest: bool = False) -> np.ndarray:
        """Int32 [len(texts), context_length]: ids, `</s>`, padding (see the module doc)."""
        if isinstance(texts, str):
            texts = [texts]
        bodies = [self.encode(t)[: context_length - 1] + [self.eos_id] for t in texts]
        length = max(map(len, bodies), default=1) if pad_to_longest else context_length
        return _pad_rows(bodies, length, self.pad_id, left=False)


class GemmaTokenizer:
    """SigLIP 2's Gemma tokenizer over `tokenizer.json`, lower-casing the text first."""

    def __init__(self, directory: str, lower_case: bool = True):
        from tokenizers import Tokenizer

        path = os.path.join(directory, TOKENIZER_JSON)
        if not os.path.isfile(path):
            raise UserError(f"{directory} has no {TOKENIZER_JSON}: not a Gemma tokenizer")
        self.directory, self.lower_case = directory, lower_case
        self.backend = Tokenizer.from_file(path)
        self.backend.no_truncation()
        self.backend.no_padding()
        config = _tokenizer_config(directory)
        pad = _token(config, "pad_token", "<pad>")
        self.pad_id = self.backend.token_to_id(pad)
        if self.pad_id is None:
            raise UserError(f"{path}: the pad token {pad!r} is not in the vocabulary")
        # transformers' GemmaTokenizer pads on the left unless the config says otherwise.
        self.pad_left = config.get("padding_side", "left") == "left"
        self.truncate_left = config.get("truncation_side", "right") == "left"

    def __reduce__(self):
        return (GemmaTokenizer, (self.directory, self.lower_case))

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of one text with the special tokens of `tokenizer.json`'s template."""
        return self.backend.encode(text.lower() if self.lower_case else text).ids

    def __call__(self, texts: str | Sequence[str], context_length: int = SIGLIP_CONTEXT_LENGTH,
                 pad_to_longest: bool = False) -> np.ndarray:
        """Int32 [len(texts), context_length]: the ids, truncated and padded as transformers
        does with `truncation=True, padding="max_length"`."""
        if isinstance(texts, str):
            texts = [texts]
        # The template's special tokens are kept; the text makes room (as transformers).
        self.backend.enable_truncation(context_length,
                                       direction="left" if self.truncate_left else "right")
        bodies = [e.ids for e in self.backend.encode_batch(
            [t.lower() if self.lower_case else t for t in texts])]
        length = max(map(len, bodies), default=1) if pad_to_longest else context_length
        return _pad_rows(bodies, length, self.pad_id, left=self.pad_left)


def load_tokenizer(kind: str, directory: str | None) -> Any:
    """The tokenizer of a model's `tokenizer` kind: "clip" (the vendored OpenAI BPE),
    "siglip" or "gemma" (read from `directory`, an HF tokenizer directory)."""
    if kind == "clip":
        from reasonclip_jax.models.tokenizer import default_tokenizer

        return default_tokenizer()
    if kind not in ("siglip", "gemma"):
        raise UserError(f"unknown tokenizer '{kind}'; choose clip, siglip or gemma")
    if not directory or not os.path.isdir(directory):
        raise UserError(f"the model's {kind} tokenizer needs its files: pass a directory "
                        f"with {SPIECE_FILE if kind == 'siglip' else TOKENIZER_JSON} "
                        f"(got {directory!r})")
    return SiglipTokenizer(directory) if kind == "siglip" else GemmaTokenizer(directory)
