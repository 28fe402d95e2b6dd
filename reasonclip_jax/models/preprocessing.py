"""A model's image preprocessing constants: each family's mean and std (OpenAI CLIP's; SigLIP's
0.5 everywhere, pixels to [-1, 1]), and the normalisation `(pixels / 255 - mean) / std` as
per-channel float32 (scale, offset).

The host pipeline (`data.transforms.normalize`) and the model's on-device normalisation of
uint8 pixels (`models.layers.normalize_pixels`) both use these, so the two agree bit for bit.

    python -c "from reasonclip_jax.models import preprocessing; \\
print(preprocessing.normalization_constants())"
"""

from __future__ import annotations

import numpy as np

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
MEAN_STD = {"clip": (OPENAI_MEAN, OPENAI_STD), "siglip": (SIGLIP_MEAN, SIGLIP_STD)}


def normalization_constants(
    mean: tuple[float, ...] | str = OPENAI_MEAN, std: tuple[float, ...] = OPENAI_STD
) -> tuple[np.ndarray, np.ndarray]:
    """float32 (scale, offset) per channel: normalised = pixels * scale - offset.

    `mean` may name a model family ("clip", "siglip") for that family's mean and std.
    """
    if isinstance(mean, str):
        mean, std = MEAN_STD[mean]
    scale = (1.0 / (255.0 * np.asarray(std, np.float64))).astype(np.float32)
    offset = (np.asarray(mean, np.float64) / np.asarray(std, np.float64)).astype(np.float32)
    return scale, offset
