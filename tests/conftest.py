"""Shared test setup: 8 simulated CPU devices (set before jax is imported) and fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def random_tokens(rng: np.random.Generator, batch: int, length: int = 77) -> np.ndarray:
    """Token ids shaped like tokenizer output: start token, words, one end token, zeros."""
    ids = np.zeros((batch, length), np.int32)
    for b in range(batch):
        n = int(rng.integers(1, length - 1))
        ids[b, 0] = 49406
        ids[b, 1 : n + 1] = rng.integers(1, 49406, n)
        ids[b, min(n + 1, length - 1)] = 49407
    return ids


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
