"""Random-weight transformers CLIPModels at the project's preset shapes (no downloads)."""

from __future__ import annotations

import numpy as np
import torch
import transformers

from reasonclip_jax.models import weight_maps
from reasonclip_jax.models.clip import ModelConfig


def hf_clip(config: ModelConfig, seed: int = 0) -> transformers.CLIPModel:
    """A transformers CLIPModel with random weights; biases and LayerNorms randomised too,
    so that a swapped or dropped tensor cannot go unnoticed."""
    fields = weight_maps.hf_config_json(config)
    fields = {k: v for k, v in fields.items() if k not in ("architectures", "model_type")}
    torch.manual_seed(seed)
    model = transformers.CLIPModel(transformers.CLIPConfig(**fields)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen) + (1.0 if "norm" in name
                        and name.endswith("weight") else 0.0))
    return model


def hf_embeds(model: transformers.CLIPModel, images: np.ndarray, tokens: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised (image, text) embeddings; images NHWC as in the project."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    pixel_values=torch.tensor(images).permute(0, 3, 1, 2))
    return out.image_embeds.numpy(), out.text_embeds.numpy()


def hf_siglip(config: ModelConfig, seed: int = 0) -> transformers.SiglipModel:
    """A transformers SiglipModel with random weights; biases, LayerNorms, the probe, the
    logit scale and bias randomised too, so that a swapped or dropped tensor shows."""
    fields = weight_maps.hf_siglip_config_json(config)
    fields = {k: v for k, v in fields.items() if k not in ("architectures", "model_type")}
    torch.manual_seed(seed)
    model = transformers.SiglipModel(transformers.SiglipConfig(**fields)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or name in ("logit_scale",):
                scale_one = ("norm" in name and name.endswith("weight"))
                p.copy_(0.1 * torch.randn(p.shape, generator=gen) + (1.0 if scale_one else 0.0))
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-9.5)
    return model


def hf_siglip_outputs(model: transformers.SiglipModel, images: np.ndarray, tokens: np.ndarray
                      ) -> dict[str, np.ndarray]:
    """L2-normalised embeddings and logits_per_image; images NHWC as in the project."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    pixel_values=torch.tensor(images).permute(0, 3, 1, 2))
    return {"image_embeds": out.image_embeds.numpy(), "text_embeds": out.text_embeds.numpy(),
            "logits_per_image": out.logits_per_image.numpy()}
