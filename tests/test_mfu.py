"""MFU: the peak FLOP/s looked up from the device kinds JAX reports, against the vendors'
published figures; unknown kinds (this CPU) give no MFU; a configured peak overrides.

    python -m pytest tests/test_mfu.py
"""

import jax
import pytest

from reasonclip_jax.errors import UserError
from reasonclip_jax.train import mfu

# (device_kind as JAX reports it, dense bf16 TFLOP/s from the vendor's page). NVIDIA quotes
# its Tensor Core figures with 2:4 sparsity: the dense rate is half.
PUBLISHED = [
    ("TPU v4", 275),  # cloud.google.com/tpu/docs/v4
    ("TPU v5 lite", 197),  # v5e, cloud.google.com/tpu/docs/v5e
    ("TPU v5", 459),  # v5p, cloud.google.com/tpu/docs/v5p
    ("TPU v5p", 459),
    ("TPU v6 lite", 918),  # v6e (Trillium), cloud.google.com/tpu/docs/v6e
    ("NVIDIA A100-SXM4-40GB", 624 / 2),
    ("NVIDIA A100-SXM4-80GB", 624 / 2),
    ("NVIDIA A100 80GB PCIe", 624 / 2),
    ("NVIDIA H100 80GB HBM3", 1979 / 2),  # H100 SXM
    ("NVIDIA H100 PCIe", 1513 / 2),
    ("NVIDIA H200", 1979 / 2),
]


@pytest.mark.parametrize("device_kind, tflops", PUBLISHED)
def test_known_device_kinds_give_the_published_dense_bf16_peak(device_kind, tflops):
    assert mfu.peak_flops_per_device(device_kind) == pytest.approx(tflops * 1e12, rel=0.001)


@pytest.mark.parametrize("device_kind", [
    "cpu", "TPU v3", "NVIDIA GeForce RTX 4090", "NVIDIA H100", "H100", "TPU v5 lite pod", ""])
def test_unknown_device_kinds_give_no_peak(device_kind):
    assert mfu.peak_flops_per_device(device_kind) is None


def test_this_machine_cpu_gives_no_mfu():
    assert jax.devices()[0].platform == "cpu"
    assert mfu.peak_flops_per_device(jax.devices()[0].device_kind) is None


def test_a_configured_peak_overrides_the_table():
    assert mfu.peak_flops_per_device("NVIDIA H100 PCIe", configured=1e15) == 1e15
    assert mfu.peak_flops_per_device("cpu", configured=2.5e11) == 2.5e11
    with pytest.raises(UserError, match="peak_flops_per_device=-1.0: use a positive"):
        mfu.peak_flops_per_device("TPU v4", configured=-1.0)


def test_utilization_is_achieved_over_peak_flops():
    # 10 steps of 3e12 FLOPs in 2 s = 1.5e13 FLOP/s, over 4 devices of 1.5e13: 0.25.
    assert mfu.model_flops_utilization(3e12, 10, 2.0, 1.5e13, 4) == pytest.approx(0.25)
