"""Shared test setup: 8 simulated CPU devices (set before jax is imported) and fixtures.

The device count is forced, not defaulted: a machine whose XLA_FLAGS are already set (a
dump directory, a different count) still gets exactly 8 host devices, other flags kept. The
session stops at once if jax was initialised elsewhere before these flags took effect, so
the multi-device tests can never be skipped or quietly run on fewer devices.
"""

import os

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
NUM_DEVICES = 8


def with_device_count(xla_flags: str, devices: int) -> str:
    """`xla_flags` with its host device count (if any) replaced by `devices`, others kept."""
    kept = [f for f in xla_flags.split() if f.split("=", 1)[0] != DEVICE_COUNT_FLAG]
    return " ".join([*kept, f"{DEVICE_COUNT_FLAG}={devices}"])


os.environ["XLA_FLAGS"] = with_device_count(os.environ.get("XLA_FLAGS", ""), NUM_DEVICES)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """Stops the run unless jax sees the 8 devices every multi-device test relies on."""
    import jax

    devices = jax.devices()
    if len(devices) < NUM_DEVICES:
        pytest.exit(
            f"the tests need {NUM_DEVICES} jax devices, got {len(devices)} ({devices}); "
            f"XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}, "
            f"JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS')!r}. jax was probably "
            "initialised before tests/conftest.py set the flags (a plugin, or python -c "
            "'import jax; jax.devices(); ...'), or JAX_PLATFORMS selects a platform "
            "without simulated host devices",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


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


@pytest.fixture(scope="session")
def gcs():
    """A Cloud Storage emulator on 127.0.0.1 serving `gs://bucket` (tests/gcs_emulator.py);
    its environment stays set for the session (tensorstore reads it once per process)."""
    from gcs_emulator import GcsEmulator

    with GcsEmulator() as emulator:
        yield emulator
