"""Throughput of `models.tokenizer.tokenize` against OpenAI's tokenizer, on one corpus.

The baseline is the transcription of OpenAI's `simple_tokenizer.py` in
tests/reference_simple_tokenizer.py, timed without its per-word cache (straightforward BPE)
and with it. Captions are ~30 words, generated from a fixed seed; each has a rare word, a
number and some have accents (8%) or "&", so neither cache nor fast path sees only easy text.
Both sides must give the same ids, which is checked before anything is printed.

    python bench/bench_tokenizer.py            # about 15 s on one core
    python bench/bench_tokenizer.py --captions 2000
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_REPO, os.path.join(_REPO, "tests")]

from reference_simple_tokenizer import SimpleTokenizer  # noqa: E402

from reasonclip_jax.models import tokenizer  # noqa: E402

SUBJECTS = [
    "a young woman", "an old man", "two children", "a golden retriever", "a tabby cat",
    "a group of hikers", "a chef", "a cyclist", "a red vintage car", "a small fishing boat",
    "a street musician", "three horses", "a barista", "a toddler", "a flock of pigeons",
]
ACTIONS = [
    "is walking along", "is sitting next to", "stands in front of", "is running across",
    "is photographed near", "waits beside", "is playing with a ball on", "rests under",
    "is parked outside", "is drifting past", "is performing for tourists at",
]
PLACES = [
    "a crowded market square", "the snowy mountain trail", "a quiet beach at sunset",
    "an industrial warehouse", "the old stone bridge", "a busy train station",
    "a sunlit kitchen", "a neon-lit alley in Tokyo", "the café on the corner",
    "a wheat field", "a modern glass office building", "a rainy city street",
]
DETAILS = [
    "while the sky turns orange and pink", "with mountains visible in the background",
    "as people pass by on bicycles", "surrounded by colorful umbrellas",
    "under soft, diffuse morning light", "beside a wooden sign that reads 'open daily'",
    "with a shallow depth of field", "next to a stack of crates & barrels",
    "in a photo taken from a low angle", "while snow falls gently around them",
    "near a fruit stand and a small bakery", "with reflections shimmering on the wet asphalt",
]
STYLES = [
    "High resolution stock photo.", "Shot on a 35mm film camera.", "Wide angle, HDR.",
    "Black and white photograph.", "Taken with a smartphone.", "Editorial photography.",
]


def make_captions(count: int, seed: int = 0) -> list[str]:
    """~30-word captions; a made-up word per caption keeps the word cache honest."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    captions = []
    for _ in range(count):
        rare = "".join(rng.choices(letters, k=rng.randint(5, 11)))
        captions.append(
            f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(ACTIONS)} {rng.choice(PLACES)} "
            f"{rng.choice(DETAILS)}, {rng.choice(DETAILS)}. Sign says {rare.capitalize()}, "
            f"photo {rng.randint(1, 9999)}. {rng.choice(STYLES)}"
        )
    return captions


def captions_per_second(
    fn: Callable[[list[str]], np.ndarray], captions: list[str]
) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    ids = fn(captions)
    return len(captions) / (time.perf_counter() - start), ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=6_000)
    parser.add_argument("--context_length", type=int, default=tokenizer.CLIP_CONTEXT_LENGTH)
    args = parser.parse_args()
    captions = make_captions(args.captions)
    length = args.context_length
    words = sum(len(c.split()) for c in captions) / len(captions)
    non_ascii = sum(not c.isascii() for c in captions) / len(captions)
    print(
        f"{len(captions)} captions, {words:.1f} words on average, {non_ascii:.0%} non-ASCII, "
        f"context length {length}"
    )

    naive = SimpleTokenizer(tokenizer.VOCAB_PATH, cache_words=False)
    openai = SimpleTokenizer(tokenizer.VOCAB_PATH)
    ours = lambda texts: tokenizer.tokenize(texts, length)  # The first call builds its cache.
    naive_rate, expected = captions_per_second(lambda t: naive.tokenize(t, length), captions)
    openai_rate, openai_ids = captions_per_second(lambda t: openai.tokenize(t, length), captions)
    tokenizer.default_tokenizer()  # Loading the vocabulary is not tokenizing.
    cold_rate, cold_ids = captions_per_second(ours, captions)
    warm_runs = [captions_per_second(ours, captions) for _ in range(3)]
    warm_rate, warm_ids = max(warm_runs, key=lambda run: run[0])
    for ids in (openai_ids, cold_ids, warm_ids):
        np.testing.assert_array_equal(ids, expected)

    rows = [
        ("pure-Python BPE, no cache (OpenAI's algorithm)", naive_rate),
        ("OpenAI simple_tokenizer with its word cache", openai_rate),
        ("reasonclip_jax.models.tokenizer.tokenize, first pass (cold cache)", cold_rate),
        ("reasonclip_jax.models.tokenizer.tokenize, warm cache (best of 3)", warm_rate),
    ]
    for name, rate in rows:
        print(f"{name:58s} {rate:10,.0f} captions/s  x{rate / naive_rate:6.1f}")
    print("ids identical across all four")


if __name__ == "__main__":
    main()
