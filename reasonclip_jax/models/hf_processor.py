"""The Hugging Face tokenizer and image-processor files of an exported CLIP (or SigLIP) model.

A SigLIP export (`write_siglip_processor_files`) carries the model's own tokenizer files and
a SiglipImageProcessor config; the rest of this docstring is about CLIP's.

`write_processor_files(directory, config)` writes what a released transformers CLIP
directory carries besides its weights, so `CLIPProcessor.from_pretrained(directory)` and
`AutoProcessor.from_pretrained(directory)` work offline:

    vocab.json, merges.txt        this project's BPE (`bpe_simple_vocab_16e6.txt.gz`)
    tokenizer.json                the same BPE with transformers' CLIP pipeline (`tokenizers`)
    tokenizer_config.json         CLIPTokenizer, `model_max_length` = the model's context length
    special_tokens_map.json       <|startoftext|>, <|endoftext|> (end, unknown and padding)
    preprocessor_config.json      CLIPImageProcessor: bicubic resize of the short side, centre
                                  crop to the model's image size, OpenAI mean/std

How transformers' CLIP tokenizer differs from `reasonclip_jax.models.tokenizer` (transformers
5.x has only the `tokenizers`-backed class; `CLIPTokenizerFast` is the same class, and 4.x's
CLIPTokenizerFast runs tokenizer.json as written, tested through `tokenizers`; 4.x's slow
CLIPTokenizer, untested here, also ran `ftfy.fix_text` when ftfy was installed):
  - Same vocabulary, merges, pre-tokenisation regex and truncation (the first
    `context_length - 2` tokens, then <|endoftext|>), so ids are identical on text that
    OpenAI's cleaning leaves alone but for whitespace and case: ASCII without HTML entities
    or control characters, accented letters, other scripts, emoji. On any text,
    `hf(tokenizer.clean(text))` gives the ids of `tokenizer.tokenize(text)`, but for the two
    regex differences below.
  - It skips OpenAI's cleaning: no `ftfy.fix_text` (curly quotes, ligatures, full-width forms,
    mojibake, control characters and terminal escapes are tokenised as they are) and no
    `html.unescape` ("&amp;" stays four tokens). It lower-cases character by character
    (Greek final sigma becomes "σ", not "ς").
  - Special-token spellings: it splits "<|startoftext|>"/"<|endoftext|>" out wherever they
    occur, but only in lower case ("<|ENDOFTEXT|>" is text to it, the end token to us); we
    take them in any case, but only where a regex match starts ("#<|endoftext|>" is
    punctuation to us). Its regex is case sensitive, so "'ſ" (long s) is no contraction.
  - It pads with <|endoftext|> (49407) and returns an attention mask; this project pads with
    0. Both poolings take the first end token and attention is causal, so the embeddings are
    the same. Padding with "!" (id 0) is not possible: transformers then splits every "!" of
    the text out as a special token ("hello!" -> [3306, 0] instead of [3306, 256]).

    python -c "from reasonclip_jax.models import hf_processor, clip; \\
hf_processor.write_processor_files('/tmp/proc', clip.get_preset('ViT-B-32'))"
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

from reasonclip_jax.errors import UserError
from reasonclip_jax.models.clip import ModelConfig
from reasonclip_jax.models.preprocessing import OPENAI_MEAN, OPENAI_STD, SIGLIP_MEAN, SIGLIP_STD
from reasonclip_jax.models.siglip_tokenizer import TOKENIZER_FILES
from reasonclip_jax.models.tokenizer import OPENAI_SPECIAL_TOKENS, VOCAB_PATH, Tokenizer

log = logging.getLogger(__name__)

BOS, EOS = OPENAI_SPECIAL_TOKENS
PAD = EOS  # OpenAI's released HF tokenizers pad with the end token; see the module docstring.
PIL_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, as transformers' `resample` stores it
# transformers' CLIP pre-tokenisation: OpenAI's regex, special-token spellings first.
HF_SPLIT_PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|"
                    r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
PROCESSOR_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "preprocessor_config.json")


def preprocessor_config(image_size: int) -> dict[str, Any]:
    """`preprocessor_config.json`: `data.transforms.eval_transform` as a CLIPImageProcessor."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "CLIPProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": PIL_BICUBIC,
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(OPENAI_MEAN),
        "image_std": list(OPENAI_STD),
    }


def _added_token(content: str) -> dict[str, Any]:
    return {"content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def tokenizer_config(tok: Tokenizer, context_length: int) -> dict[str, Any]:
    """`tokenizer_config.json` of a CLIPTokenizer truncating at `context_length`."""
    return {
        "tokenizer_class": "CLIPTokenizer",
        "processor_class": "CLIPProcessor",
        "model_max_length": context_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": PAD,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(tok.encoder[t]): _added_token(t) for t in (BOS, EOS)},
    }


def special_tokens_map() -> dict[str, str]:
    return {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": PAD}


def tokenizer_json(tok: Tokenizer) -> str:
    """`tokenizer.json`: the BPE with the pipeline of transformers' CLIPTokenizer (its
    CLIPConverter in 4.x, its `__init__` in 5.x), which 4.x's CLIPTokenizerFast runs as is."""
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers.models import BPE

    backend = RustTokenizer(BPE(
        vocab=tok.encoder, merges=tok.merges, dropout=None, continuing_subword_prefix="",
        end_of_word_suffix="</w>", fuse_unk=False, unk_token=EOS,
    ))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(HF_SPLIT_PATTERN), behavior="removed",
                             invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.RobertaProcessing(
        (EOS, tok.end_of_text_id), (BOS, tok.start_of_text_id), trim_offsets=False,
        add_prefix_space=False)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (BOS, EOS)])
    data = json.loads(backend.to_str())
    # "a b" merges, as OpenAI's Hub files have them: readable by every `tokenizers` version
    # (pairs need >= 0.20). No CLIP token contains a space (byte 32 is "Ġ").
    data["model"]["merges"] = [" ".join(pair) for pair in data["model"]["merges"]]
    return json.dumps(data, ensure_ascii=False, indent=2)


def write_processor_files(directory: str, config: ModelConfig,
                          vocab_path: str = VOCAB_PATH) -> list[str]:
    """Writes the tokenizer and image-processor files into `directory`; returns their names.

    `tokenizer.json` needs the `tokenizers` library; without it the other files are written
    and transformers builds the same tokenizer from `vocab.json` and `merges.txt`.
    """
    tok = Tokenizer(vocab_path)
    if config.vocab_size != tok.vocab_size:
        raise UserError(f"the model's vocabulary has {config.vocab_size} tokens but the CLIP "
                        f"BPE of {vocab_path} has {tok.vocab_size}; no HF tokenizer to export")
    files: dict[str, str] = {
        "vocab.json": json.dumps(tok.encoder, ensure_ascii=False),
        # transformers' slow tokenizer (4.x) skips the first line as a header.
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in tok.merges),
        "tokenizer_config.json": json.dumps(tokenizer_config(tok, config.context_length),
                                            indent=2),
        "special_tokens_map.json": json.dumps(special_tokens_map(), indent=2),
        "preprocessor_config.json": json.dumps(preprocessor_config(config.image_size), indent=2),
    }
    try:
        files["tokenizer.json"] = tokenizer_json(tok)
    except ImportError:
        log.warning("`tokenizers` is not installed: no tokenizer.json (transformers builds it "
                    "from vocab.json and merges.txt)")
    for name, text in files.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(text + ("" if text.endswith("\n") else "\n"))
    return [name for name in PROCESSOR_FILES if name in files]


# ------------------------------------------------------------------------- SigLIP


def siglip_preprocessor_config(image_size: int) -> dict[str, Any]:
    """`preprocessor_config.json` of a SiglipImageProcessor: bicubic resize to the square
    image size (no crop; this project's eval geometry crops the centre of non-square images
    first), pixels to [-1, 1]."""
    return {
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "SiglipProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": PIL_BICUBIC,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(SIGLIP_MEAN),
        "image_std": list(SIGLIP_STD),
    }


def write_siglip_processor_files(directory: str, config: ModelConfig,
                                 tokenizer_dir: str | None) -> list[str]:
    """A SigLIP export's tokenizer and image-processor files, so `SiglipModel` users get
    `AutoProcessor.from_pretrained(directory)`: the model's own tokenizer files (copied from
    `tokenizer_dir`, which import fills from the Hugging Face directory) or, for a model on
    the vendored CLIP BPE, the CLIP tokenizer files; and a SiglipImageProcessor config."""
    if config.tokenizer == "clip":
        names = [n for n in write_processor_files(directory, config)
                 if n != "preprocessor_config.json"]
    else:
        if not tokenizer_dir or not os.path.isdir(tokenizer_dir):
            raise UserError(f"no tokenizer files for this {config.tokenizer} model (looked in "
                            f"{tokenizer_dir!r}); pass --tokenizer with the directory of its "
                            "spiece.model or tokenizer.json")
        names = []
        for name in TOKENIZER_FILES:
            if os.path.isfile(os.path.join(tokenizer_dir, name)):
                shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(directory, name))
                names.append(name)
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
        json.dump(siglip_preprocessor_config(config.image_size), f, indent=2)
        f.write("\n")
    return [*names, "preprocessor_config.json"]
