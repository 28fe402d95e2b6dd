"""A model's image preprocessing constants: OpenAI CLIP's mean and std, and the normalisation
`(pixels / 255 - mean) / std` as per-channel float32 (scale, offset).

The host pipeline (`data.transforms.normalize`) and the model's on-device normalisation of
uint8 pixels (`models.clip.normalize_pixels`) both use these, so the two agree bit for bit.

    python -c "from reasonclip_jax.models import preprocessing; \\
print(preprocessing.normalization_constants())"
"""

from __future__ import annotations

import numpy as np

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def normalization_constants(
    mean: tuple[float, ...] = OPENAI_MEAN, std: tuple[float, ...] = OPENAI_STD
) -> tuple[np.ndarray, np.ndarray]:
    """float32 (scale, offset) per channel: normalised = pixels * scale - offset."""
    scale = (1.0 / (255.0 * np.asarray(std, np.float64))).astype(np.float32)
    offset = (np.asarray(mean, np.float64) / np.asarray(std, np.float64)).astype(np.float32)
    return scale, offset
