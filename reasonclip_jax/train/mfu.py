"""Model FLOPs utilisation: the model's FLOPs per second over the devices' peak.

The peak is the dense bf16 matmul rate of one JAX device, looked up by the `device_kind`
string JAX reports, or the configured `peak_flops_per_device` when that is positive. On a
device the table does not know (CPU, a new chip) there is no MFU rather than a wrong one.

    python -c "import jax; from reasonclip_jax.train import mfu; \
print(mfu.peak_flops_per_device(jax.devices()[0].device_kind))"
"""

from __future__ import annotations

from reasonclip_jax.errors import UserError

# Dense (no 2:4 sparsity) bf16 FLOP/s of one JAX device, keyed by `jax.Device.device_kind`.
# A JAX device is one chip on TPU v4 and later (megacore on v4 and v5p, one TensorCore on
# the "lite" chips), one GPU on NVIDIA.
PEAK_BF16_FLOPS_PER_DEVICE: dict[str, float] = {
    # cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16 per chip.
    "TPU v4": 275e12,
    # cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16 per chip.
    "TPU v5 lite": 197e12,
    # cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16 per chip (JAX says "TPU v5" or "TPU v5p").
    "TPU v5": 459e12,
    "TPU v5p": 459e12,
    # cloud.google.com/tpu/docs/v6e (Trillium): 918 TFLOP/s bf16 per chip.
    "TPU v6 lite": 918e12,
    # NVIDIA A100 datasheet: BF16 Tensor Core 312 TFLOPS (624 with sparsity), SXM4 and PCIe.
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    # NVIDIA H100 datasheet: BF16 Tensor Core 1,979 (SXM), 1,513 (PCIe), 1,671 (NVL) TFLOPS
    # with sparsity; half of each dense. "H100 80GB HBM3" is the SXM part.
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100 NVL": 835e12,
    # NVIDIA H200 product page: BF16 Tensor Core 1,979 (SXM) and 1,671 (NVL) TFLOPS with
    # sparsity. "H200" is the SXM part.
    "NVIDIA H200": 989e12,
    "NVIDIA H200 NVL": 835e12,
    # NVIDIA L4 datasheet: BF16 Tensor Core 242 TFLOPS with sparsity.
    "NVIDIA L4": 121e12,
}


def peak_flops_per_device(device_kind: str, configured: float = 0.0) -> float | None:
    """The peak FLOP/s of one device: `configured` when positive, else the table's figure
    for `device_kind`; None (no MFU) for a kind the table does not know."""
    if configured < 0:
        raise UserError(f"peak_flops_per_device={configured}: use a positive FLOP/s figure, "
                        "or 0 to look the device kind up")
    if configured > 0:
        return float(configured)
    return PEAK_BF16_FLOPS_PER_DEVICE.get(device_kind.strip())


def model_flops_utilization(flops_per_step: float, steps: int, seconds: float,
                            peak_per_device: float, devices: int) -> float:
    """The fraction of the devices' peak that `steps` steps of `flops_per_step` model FLOPs
    reached in `seconds`."""
    return flops_per_step * steps / seconds / (peak_per_device * devices)
