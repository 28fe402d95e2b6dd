"""Model FLOPs per example, for MFU: 2 FLOPs per multiply-add of the towers' matmuls.

    python -c "from reasonclip_jax.models import clip, flops; \
print(flops.forward_flops_per_example(clip.PRESETS['ViT-B-32'], 77) / 1e9)"
"""

from __future__ import annotations

from reasonclip_jax.models.clip import ModelConfig


def _transformer_flops(tokens: int, width: int, layers: int, mlp: int) -> float:
    """Forward FLOPs (2 per multiply-add) of `layers` pre-LN blocks over `tokens` tokens."""
    dense = 2 * tokens * (4 * width * width + 2 * width * mlp)  # qkv + out, mlp in + out
    attention = 2 * 2 * tokens * tokens * width  # q k^T and weights v
    return layers * (dense + attention)


def image_forward_flops(c: ModelConfig) -> float:
    patches = (c.image_size // c.patch_size) ** 2
    embed = 2 * patches * 3 * c.patch_size**2 * c.vision_width
    return (embed + _transformer_flops(patches + 1, c.vision_width, c.vision_layers,
                                       c.vision_mlp_dim) + 2 * c.vision_width * c.embed_dim)


def text_forward_flops(c: ModelConfig, context_length: int) -> float:
    return (_transformer_flops(context_length, c.text_width, c.text_layers, c.text_mlp_dim)
            + 2 * c.text_width * c.embed_dim)


def forward_flops_per_example(c: ModelConfig, context_length: int, texts: int = 1) -> float:
    """One image and `texts` captions (stage 1 has two)."""
    return image_forward_flops(c) + texts * text_forward_flops(c, context_length)


def train_flops_per_example(c: ModelConfig, context_length: int, texts: int = 1) -> float:
    """Forward + backward ~ 3x forward (GradCache's extra forward is not model FLOPs)."""
    return 3 * forward_flops_per_example(c, context_length, texts)
