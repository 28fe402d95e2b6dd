"""CLIP in Flax, exactly as OpenAI's: a ViT image tower and a causal text transformer; and
`CLIP`, the two-tower model whose towers are CLIP's or SigLIP's (`config.family`).

Pre-LayerNorm residual blocks (eps 1e-5) with QuickGELU (`models/layers.py`); the image is
pooled at the class token then `ln_post` then projected; the text is pooled at its first
end-of-text token after `ln_final` then projected; a learnable log logit scale. `PRESETS`
holds CLIP's architectures and SigLIP's (`models/siglip.py`).

    python -c "from reasonclip_jax.models import clip; print(clip.PRESETS['ViT-B-32'])"
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reasonclip_jax.errors import UserError
from reasonclip_jax.models import siglip
from reasonclip_jax.models.config import ModelConfig
from reasonclip_jax.models.layers import (  # noqa: F401  (the names this module always had)
    ACTIVATIONS,
    ATTENTION_IMPLS,
    DEFAULT_ATTENTION_IMPL,
    REMAT_POLICIES,
    Attention,
    Mlp,
    PatchEmbedding,
    ResidualBlock,
    Transformer,
    embed_tokens,
    l2_normalize,
    layer_norm,
    normalize_pixels,
    partitioned,
    quick_gelu,
)

Array = jax.Array
NUM_CATEGORIES = 5  # S, A, H, T, P


def _vit(width: int, layers: int, patch: int, image: int, **text: int) -> dict[str, int]:
    return dict(
        image_size=image, patch_size=patch, vision_width=width, vision_layers=layers,
        vision_heads=width // 64, vision_mlp_dim=4 * width, **text,
    )


_TEXT_512 = dict(text_width=512, text_layers=12, text_heads=8, text_mlp_dim=2048)
_TEXT_768 = dict(text_width=768, text_layers=12, text_heads=12, text_mlp_dim=3072)
_VOCAB = dict(context_length=77, vocab_size=49408)

PRESETS: dict[str, ModelConfig] = {
    "ViT-B-32": ModelConfig(embed_dim=512, **_vit(768, 12, 32, 224), **_TEXT_512, **_VOCAB),
    "ViT-B-16": ModelConfig(embed_dim=512, **_vit(768, 12, 16, 224), **_TEXT_512, **_VOCAB),
    "ViT-L-14": ModelConfig(embed_dim=768, **_vit(1024, 24, 14, 224), **_TEXT_768, **_VOCAB),
    "ViT-L-14-336": ModelConfig(embed_dim=768, **_vit(1024, 24, 14, 336), **_TEXT_768, **_VOCAB),
    # Tests and the CPU demo: real vocabulary and context, tiny widths.
    "tiny": ModelConfig(
        embed_dim=64, image_size=64, patch_size=8, vision_width=64, vision_layers=2,
        vision_heads=2, vision_mlp_dim=256, text_width=64, text_layers=2, text_heads=2,
        text_mlp_dim=256, **_VOCAB,
    ),
    **siglip.PRESETS,
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """A named architecture, optionally with fields replaced (e.g. image_size=32)."""
    if name not in PRESETS:
        raise UserError(f"unknown model preset '{name}'; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


class VisionTower(nn.Module):
    config: ModelConfig
    dtype: Any
    remat_policy: str
    attention_impl: str = DEFAULT_ATTENTION_IMPL
    scan_unroll: int = 1

    @nn.compact
    def __call__(self, images: Array) -> Array:
        """images: [B, H, W, 3] -> [B, embed_dim] (not normalised).

        Float images are taken as CLIP-normalised; integer (uint8) images as raw pixels, which
        are normalised here, so input pipelines can ship a quarter of the bytes.
        """
        if jnp.issubdtype(images.dtype, jnp.integer):
            images = normalize_pixels(images)
        c = self.config
        w, p = c.vision_width, c.patch_size
        scale = w**-0.5
        x = PatchEmbedding(w, p, use_bias=False, dtype=self.dtype, name="conv1")(
            images.astype(self.dtype))
        cls = self.param("class_embedding",
                         partitioned(nn.initializers.normal(scale), ("embed",)), (w,))
        cls = jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, w))
        x = jnp.concatenate([cls, x], axis=1)
        pos = self.param(
            "positional_embedding", partitioned(nn.initializers.normal(scale), (None, "embed")),
            (x.shape[1], w),
        )
        x = x + pos.astype(self.dtype)
        x = layer_norm(c.layer_norm_eps, self.dtype, "ln_pre")(x)
        x = Transformer(
            w, c.vision_layers, c.vision_heads, c.vision_mlp_dim, c.act, c.layer_norm_eps,
            self.dtype, self.remat_policy, attention_impl=self.attention_impl,
            scan_unroll=self.scan_unroll,
            name="transformer",
        )(x)
        x = layer_norm(c.layer_norm_eps, self.dtype, "ln_post")(x[:, 0])
        proj = self.param("proj", partitioned(nn.initializers.normal(scale), ("embed", None)),
                          (w, c.embed_dim))
        return x @ proj.astype(self.dtype)


class TextTower(nn.Module):
    config: ModelConfig
    dtype: Any
    remat_policy: str
    attention_impl: str = DEFAULT_ATTENTION_IMPL
    scan_unroll: int = 1

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        """tokens: [B, L] int ids, L <= context_length -> [B, embed_dim] (not normalised)."""
        c = self.config
        x = embed_tokens(self, tokens, c.vocab_size, c.context_length, c.text_width,
                         self.dtype)
        x = Transformer(
            c.text_width, c.text_layers, c.text_heads, c.text_mlp_dim, c.act, c.layer_norm_eps,
            self.dtype, self.remat_policy, causal=True, attention_impl=self.attention_impl,
            scan_unroll=self.scan_unroll,
            name="transformer",
        )(x)
        x = layer_norm(c.layer_norm_eps, self.dtype, "ln_final")(x)
        # The first end-of-text token: OpenAI's argmax(ids) for tokenizer output.
        eot = jnp.argmax(tokens == c.eot_token_id, axis=-1)
        # A gather along the length only: indexing rows by arange would all-gather the
        # batch's indices on every device under a batch-sharded mesh.
        x = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]
        proj = self.param(
            "text_projection",
            partitioned(nn.initializers.normal(c.text_width**-0.5), ("embed", None)),
            (c.text_width, c.embed_dim),
        )
        return x @ proj.astype(self.dtype)


TOWERS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "clip": (VisionTower, TextTower),
    "siglip": (siglip.VisionTower, siglip.TextTower),
}


class CLIP(nn.Module):
    """The two towers of `config.family` (CLIP's or SigLIP's), the logit scale (and optional
    bias), optional category heads. Parameters: `visual/...`, `text/...`, `logit_scale`,
    `logit_bias`, the heads.

    `num_category_heads > 0` adds the stage-2 heads: Linear(embed_dim -> 5) on the normalised
    image and text embeddings. They are training-only and dropped at export.

    `dtype`, `remat_policy`, `attention_impl` (`layers.ATTENTION_IMPLS`) and `scan_unroll`
    (`layers.Transformer`) choose how the function is computed, not what it is: they are not
    saved with the weights.
    """

    config: ModelConfig
    dtype: Any = jnp.float32
    remat_policy: str = "none"
    num_category_heads: int = 0
    attention_impl: str = DEFAULT_ATTENTION_IMPL
    scan_unroll: int = 1

    def setup(self) -> None:
        c = self.config
        if c.act not in ACTIVATIONS:
            raise UserError(f"unknown activation '{c.act}'; choose one of {sorted(ACTIVATIONS)}")
        if self.remat_policy not in REMAT_POLICIES:
            choices = sorted(REMAT_POLICIES)
            raise UserError(f"unknown remat policy '{self.remat_policy}'; choose one of {choices}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise UserError(f"unknown attention implementation '{self.attention_impl}'; "
                            f"choose one of {ATTENTION_IMPLS}")
        if not (isinstance(self.scan_unroll, int) and self.scan_unroll >= 1):
            raise UserError(f"scan_unroll must be a positive integer (1: one block per loop "
                            f"iteration), got {self.scan_unroll!r}")
        vision_tower, text_tower = TOWERS[c.family]
        self.visual = vision_tower(c, self.dtype, self.remat_policy, self.attention_impl,
                                   self.scan_unroll)
        self.text = text_tower(c, self.dtype, self.remat_policy, self.attention_impl,
                               self.scan_unroll)
        self.logit_scale = self.param(
            "logit_scale", partitioned(nn.initializers.constant(c.logit_scale_init), ()), ()
        )
        if c.logit_bias_init is not None:
            self.logit_bias = self.param(
                "logit_bias", partitioned(nn.initializers.constant(c.logit_bias_init), ()), ()
            )
        if self.num_category_heads:
            def head(name: str) -> nn.Dense:
                return nn.Dense(
                    self.num_category_heads, name=name,
                    kernel_init=partitioned(nn.initializers.lecun_normal(), (None, None)),
                    bias_init=partitioned(nn.initializers.zeros, (None,)),
                )
            self.image_category_head = head("image_category_head")
            self.text_category_head = head("text_category_head")

    def encode_image(self, images: Array) -> Array:
        """Unnormalised image features [B, embed_dim] (float32)."""
        return self.visual(images).astype(jnp.float32)

    def encode_text(self, tokens: Array) -> Array:
        """Unnormalised text features [B, embed_dim] (float32)."""
        return self.text(tokens).astype(jnp.float32)

    def category_logits(self, image_embeds: Array, text_embeds: Array) -> tuple[Array, Array]:
        """Stage-2 head logits on normalised embeddings: (image [B,5], text [B,5])."""
        return self.image_category_head(image_embeds), self.text_category_head(text_embeds)

    def __call__(
        self, images: Array | None = None, tokens: Array | None = None
    ) -> dict[str, Array]:
        """L2-normalised embeddings of whichever inputs are given, and the log logit scale."""
        out: dict[str, Array] = {"logit_scale": self.logit_scale}
        if self.config.logit_bias_init is not None:
            out["logit_bias"] = self.logit_bias
        if images is not None:
            out["image_embeds"] = l2_normalize(self.encode_image(images))
        if tokens is not None:
            out["text_embeds"] = l2_normalize(self.encode_text(tokens))
        if self.num_category_heads and images is not None and tokens is not None:
            out["image_category_logits"], out["text_category_logits"] = self.category_logits(
                out["image_embeds"], out["text_embeds"]
            )
        return out


def dummy_inputs(config: ModelConfig, batch: int = 1) -> tuple[Array, Array]:
    """Zero images and tokens of the right shapes, for init and shape evaluation."""
    images = jnp.zeros((batch, config.image_size, config.image_size, 3), jnp.float32)
    tokens = jnp.zeros((batch, config.context_length), jnp.int32)
    return images, tokens


def init_params(model: CLIP, rng: Array) -> Any:
    """Boxed (logically partitioned) parameters; `nn.unbox` for plain arrays."""
    images, tokens = dummy_inputs(model.config)
    return model.init(rng, images, tokens)["params"]


def param_shapes(model: CLIP) -> Any:
    """Unboxed parameter shapes (`jax.ShapeDtypeStruct`s), no computation."""
    return nn.unbox(jax.eval_shape(lambda rng: init_params(model, rng), jax.random.key(0)))
