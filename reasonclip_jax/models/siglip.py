"""SigLIP (and the fixed-resolution SigLIP 2) towers in Flax, as transformers' `SiglipModel`.

What differs from CLIP (`models/clip.py`); the pre-LN blocks, scan, remat and logical axis
names are the shared `models/layers.py`:
  - image: patch convolution with a bias, learned position embeddings, no class token and
    no pre-LayerNorm; `ln_post` over every patch, then the multi-head attention-pooling head
    (`MapHead`: a learned probe attends to the patches, then LayerNorm and an MLP with a
    residual), whose output (width `vision_width`) is the image embedding;
  - text: non-causal attention (no mask: SigLIP pads to its context length and attends to the
    padding, as it was trained), `ln_final`, the *last* position pooled, then a linear head
    (with bias) to `embed_dim`, which may differ from the text width (Giant-opt: 1152 -> 1536);
  - tanh GELU, LayerNorm eps 1e-6, pixels normalised to [-1, 1] (mean = std = 0.5), a
    learnable logit scale and logit bias (the model's `logit_bias`).

`PRESETS` are the released shapes, read from `siglip_hf_configs.json` (the published Hugging
Face config.json files, each with its source) through `config_from_hf`, the function that
weight import uses; plus `siglip-tiny` for tests and the demo, which uses the vendored CLIP
BPE so that it runs offline.

    python -c "from reasonclip_jax.models import siglip; print(siglip.PRESETS['siglip-tiny'])"
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reasonclip_jax.errors import UserError
from reasonclip_jax.models.config import ModelConfig
from reasonclip_jax.models.layers import (
    DEFAULT_ATTENTION_IMPL,
    Attention,
    Mlp,
    PatchEmbedding,
    Transformer,
    embed_tokens,
    layer_norm,
    normalize_pixels,
    partitioned,
)

Array = jax.Array

HF_CONFIGS_PATH = os.path.join(os.path.dirname(__file__), "siglip_hf_configs.json")
# transformers' SiglipTextConfig / SiglipVisionConfig defaults: what a published config.json
# means by a field it leaves out (tests/test_siglip.py checks them against transformers).
HF_TEXT_DEFAULTS = dict(vocab_size=32000, hidden_size=768, intermediate_size=3072,
                        num_hidden_layers=12, num_attention_heads=12,
                        max_position_embeddings=64, hidden_act="gelu_pytorch_tanh",
                        layer_norm_eps=1e-6, projection_size=None)
HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, image_size=224, patch_size=16,
                          hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                          vision_use_head=True)
# Hugging Face activation names -> ours (models/layers.py ACTIVATIONS).
HF_ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}
GEMMA_VOCAB_SIZE = 256000  # SigLIP 2's Gemma tokenizer; SigLIP's SentencePiece has 32,000
CLIP_VOCAB_SIZE = 49408  # the vendored OpenAI BPE (models/tokenizer.py)
# SigLIP's initial temperature and bias (its paper: t' = log 10, b = -10).
LOGIT_SCALE_INIT = math.log(10.0)
LOGIT_BIAS_INIT = -10.0


def config_from_hf(hf_config: Mapping[str, Any], tokenizer: str | None = None) -> ModelConfig:
    """The architecture of a `SiglipModel` config.json (missing fields: transformers'
    defaults). Unless given, the tokenizer is told by the vocabulary: 256,000 tokens are
    Gemma's (SigLIP 2), 49,408 the CLIP BPE's (`siglip-tiny`), anything else SigLIP's."""
    text = {**HF_TEXT_DEFAULTS, **hf_config.get("text_config", {})}
    vision = {**HF_VISION_DEFAULTS, **hf_config.get("vision_config", {})}
    if not vision["vision_use_head"]:
        raise UserError("SiglipModel configs with vision_use_head=false have no image "
                        "embedding; only checkpoints with the attention-pooling head import")
    act = text["hidden_act"]
    if vision["hidden_act"] != act:
        raise UserError(f"towers with different activations ({vision['hidden_act']}, {act}) "
                        "are not supported")
    if act not in HF_ACTIVATIONS:
        raise UserError(f"unknown activation '{act}'; supported: {sorted(HF_ACTIVATIONS)}")
    if text["layer_norm_eps"] != vision["layer_norm_eps"]:
        raise UserError("towers with different LayerNorm eps are not supported")
    projection = text["projection_size"] or text["hidden_size"]
    if projection != vision["hidden_size"]:
        raise UserError(f"text projection_size {projection} differs from the vision width "
                        f"{vision['hidden_size']}: the two embeddings cannot be compared")
    if tokenizer is None:
        tokenizer = {GEMMA_VOCAB_SIZE: "gemma", CLIP_VOCAB_SIZE: "clip"}.get(text["vocab_size"],
                                                                            "siglip")
    return ModelConfig(
        embed_dim=projection, image_size=vision["image_size"], patch_size=vision["patch_size"],
        vision_width=vision["hidden_size"], vision_layers=vision["num_hidden_layers"],
        vision_heads=vision["num_attention_heads"], vision_mlp_dim=vision["intermediate_size"],
        context_length=text["max_position_embeddings"], vocab_size=text["vocab_size"],
        text_width=text["hidden_size"], text_layers=text["num_hidden_layers"],
        text_heads=text["num_attention_heads"], text_mlp_dim=text["intermediate_size"],
        act=HF_ACTIVATIONS[act], layer_norm_eps=text["layer_norm_eps"],
        logit_scale_init=LOGIT_SCALE_INIT, logit_bias_init=LOGIT_BIAS_INIT, family="siglip",
        tokenizer=tokenizer,
    )


def published_configs(path: str = HF_CONFIGS_PATH) -> dict[str, dict[str, Any]]:
    """Preset name -> {"source": URL, "config": the published config.json's fields}."""
    with open(path) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


PRESETS: dict[str, ModelConfig] = {
    name: config_from_hf(entry["config"]) for name, entry in published_configs().items()
}
# Tests and the CPU demo: tiny widths, SigLIP's context of 64, the vendored CLIP BPE.
PRESETS["siglip-tiny"] = ModelConfig(
    embed_dim=64, image_size=64, patch_size=8, vision_width=64, vision_layers=2,
    vision_heads=2, vision_mlp_dim=256, context_length=64, vocab_size=49408, text_width=64,
    text_layers=2, text_heads=2, text_mlp_dim=256, act="gelu_tanh", layer_norm_eps=1e-6,
    logit_scale_init=LOGIT_SCALE_INIT, logit_bias_init=LOGIT_BIAS_INIT, family="siglip",
    tokenizer="clip",
)


class MapHead(nn.Module):
    """Multi-head attention pooling: a learned probe attends to the tokens, then
    `x + mlp(ln(x))`; one vector per example."""

    width: int
    heads: int
    mlp_dim: int
    act: str
    eps: float
    dtype: Any
    attention_impl: str = DEFAULT_ATTENTION_IMPL

    @nn.compact
    def __call__(self, x: Array) -> Array:
        probe = self.param("probe", partitioned(nn.initializers.normal(0.02), ("embed",)),
                           (self.width,))
        query = jnp.broadcast_to(probe.astype(self.dtype), (x.shape[0], 1, self.width))
        h = Attention(self.width, self.heads, self.dtype, impl=self.attention_impl,
                      name="attention")(query, kv=x)
        y = layer_norm(self.eps, self.dtype, "ln")(h)
        h = h + Mlp(self.width, self.mlp_dim, self.act, self.dtype, name="mlp")(y)
        return h[:, 0]


class VisionTower(nn.Module):
    config: ModelConfig
    dtype: Any
    remat_policy: str
    attention_impl: str = DEFAULT_ATTENTION_IMPL
    scan_unroll: int = 1

    @nn.compact
    def __call__(self, images: Array) -> Array:
        """images: [B, H, W, 3] -> [B, embed_dim] (not normalised).

        Float images are taken as normalised to [-1, 1]; integer (uint8) images as raw
        pixels, normalised here.
        """
        if jnp.issubdtype(images.dtype, jnp.integer):
            images = normalize_pixels(images, "siglip")
        c = self.config
        w, p = c.vision_width, c.patch_size
        x = PatchEmbedding(w, p, use_bias=True, dtype=self.dtype, name="patch_embedding")(
            images.astype(self.dtype))
        pos = self.param(
            "positional_embedding", partitioned(nn.initializers.normal(w**-0.5),
                                                (None, "embed")), (x.shape[1], w),
        )
        x = x + pos.astype(self.dtype)
        x = Transformer(
            w, c.vision_layers, c.vision_heads, c.vision_mlp_dim, c.act, c.layer_norm_eps,
            self.dtype, self.remat_policy, attention_impl=self.attention_impl,
            scan_unroll=self.scan_unroll,
            name="transformer",
        )(x)
        x = layer_norm(c.layer_norm_eps, self.dtype, "ln_post")(x)
        return MapHead(w, c.vision_heads, c.vision_mlp_dim, c.act, c.layer_norm_eps,
                       self.dtype, self.attention_impl, name="head")(x)


class TextTower(nn.Module):
    config: ModelConfig
    dtype: Any
    remat_policy: str
    attention_impl: str = DEFAULT_ATTENTION_IMPL
    scan_unroll: int = 1

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        """tokens: [B, L] int ids, L <= context_length -> [B, embed_dim] (not normalised).

        The last position is pooled, so rows are padded to the length the model was trained
        with (`context_length`, 64 for the released models), as the tokenizers do.
        """
        c = self.config
        x = embed_tokens(self, tokens, c.vocab_size, c.context_length, c.text_width,
                         self.dtype)
        x = Transformer(
            c.text_width, c.text_layers, c.text_heads, c.text_mlp_dim, c.act, c.layer_norm_eps,
            self.dtype, self.remat_policy, attention_impl=self.attention_impl,
            scan_unroll=self.scan_unroll,
            name="transformer",
        )(x)
        x = layer_norm(c.layer_norm_eps, self.dtype, "ln_final")(x)
        return nn.Dense(
            c.embed_dim, dtype=self.dtype, name="head",
            kernel_init=partitioned(nn.initializers.normal(c.text_width**-0.5),
                                    ("embed", None)),
            bias_init=partitioned(nn.initializers.zeros, (None,)),
        )(x[:, -1])
