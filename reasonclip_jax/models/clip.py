"""CLIP in Flax, exactly as OpenAI's: a ViT image tower and a causal text transformer.

Pre-LayerNorm residual blocks (eps 1e-5) with QuickGELU; the image is pooled at the class
token then `ln_post` then projected; the text is pooled at its first end-of-text token after
`ln_final` then projected; a learnable log logit scale. Layers are stacked with `nn.scan`
(one compiled block per tower), optionally rematerialised. Parameters and activations carry
logical axis names only; `reasonclip_jax.parallel.sharding` maps them to mesh axes.

    python -c "from reasonclip_jax.models import clip; print(clip.PRESETS['ViT-B-32'])"
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reasonclip_jax.errors import UserError
from reasonclip_jax.models.preprocessing import normalization_constants
from reasonclip_jax.parallel.sharding import constrain

Array = jax.Array
NUM_CATEGORIES = 5  # S, A, H, T, P


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The architecture; saved with every checkpoint, inferred from weights on import."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp_dim: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp_dim: int
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eot_token_id: int = 49407
    logit_scale_init: float = math.log(1 / 0.07)
    logit_bias_init: float | None = None  # a SigLIP-style learnable bias when set

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown model config keys {sorted(unknown)}")
        return cls(**d)


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
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """A named architecture, optionally with fields replaced (e.g. image_size=32)."""
    if name not in PRESETS:
        raise UserError(f"unknown model preset '{name}'; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


REMAT_POLICIES: dict[str, Callable[..., Any] | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def quick_gelu(x: Array) -> Array:
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def _param(init: Callable[..., Array], names: tuple[str | None, ...]) -> Callable[..., Array]:
    return nn.with_logical_partitioning(init, names)


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (fp32 softmax)."""

    width: int
    heads: int
    dtype: Any

    @nn.compact
    def __call__(self, x: Array, mask: Array | None) -> Array:
        head_dim = self.width // self.heads
        std = self.width**-0.5

        def proj(name: str) -> Array:
            return nn.DenseGeneral(
                (self.heads, head_dim), dtype=self.dtype, name=name,
                kernel_init=_param(nn.initializers.normal(std), ("embed", "heads", "kv")),
                bias_init=_param(nn.initializers.zeros, ("heads", "kv")),
            )(x)

        q, k, v = proj("query"), proj("key"), proj("value")
        q = constrain(q, ("act_batch", "act_length", "act_heads", None))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * head_dim**-0.5, k)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return nn.DenseGeneral(
            self.width, axis=(-2, -1), dtype=self.dtype, name="out",
            kernel_init=_param(nn.initializers.normal(std), ("heads", "kv", "embed")),
            bias_init=_param(nn.initializers.zeros, ("embed",)),
        )(out)


class Mlp(nn.Module):
    width: int
    mlp_dim: int
    act: str
    dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        std = self.width**-0.5
        x = nn.Dense(
            self.mlp_dim, dtype=self.dtype, name="c_fc",
            kernel_init=_param(nn.initializers.normal(std), ("embed", "mlp")),
            bias_init=_param(nn.initializers.zeros, ("mlp",)),
        )(x)
        x = constrain(x, ("act_batch", "act_length", "act_mlp"))
        x = ACTIVATIONS[self.act](x)
        return nn.Dense(
            self.width, dtype=self.dtype, name="c_proj",
            kernel_init=_param(nn.initializers.normal(std), ("mlp", "embed")),
            bias_init=_param(nn.initializers.zeros, ("embed",)),
        )(x)


def layer_norm(eps: float, dtype: Any, name: str) -> nn.LayerNorm:
    """LayerNorm with statistics in fp32 (flax promotes), params named scale/bias."""
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, name=name,
        scale_init=_param(nn.initializers.ones, ("norm",)),
        bias_init=_param(nn.initializers.zeros, ("norm",)),
    )


class ResidualBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x)). Scanned over layers."""

    width: int
    heads: int
    mlp_dim: int
    act: str
    eps: float
    dtype: Any

    @nn.compact
    def __call__(self, x: Array, mask: Array | None) -> tuple[Array, None]:
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        h = layer_norm(self.eps, self.dtype, "ln_1")(x)
        x = x + Attention(self.width, self.heads, self.dtype, name="attn")(h, mask)
        h = layer_norm(self.eps, self.dtype, "ln_2")(x)
        x = x + Mlp(self.width, self.mlp_dim, self.act, self.dtype, name="mlp")(h)
        return x, None


class Transformer(nn.Module):
    """`layers` residual blocks as one `nn.scan` (parameters stacked on a leading axis)."""

    width: int
    layers: int
    heads: int
    mlp_dim: int
    act: str
    eps: float
    dtype: Any
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        block = ResidualBlock
        if self.remat_policy != "none":
            block = nn.remat(block, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=False)
        stack = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast,),
            length=self.layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = stack(
            self.width, self.heads, self.mlp_dim, self.act, self.eps, self.dtype, name="layers"
        )(x, mask)
        return x


def normalize_pixels(pixels: Array) -> Array:
    """Raw integer pixels -> CLIP-normalised float32: `data.transforms.normalize` on device."""
    scale, offset = normalization_constants()
    return pixels.astype(jnp.float32) * scale - offset


class VisionTower(nn.Module):
    config: ModelConfig
    dtype: Any
    remat_policy: str

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
        x = nn.Conv(
            w, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=self.dtype,
            name="conv1",
            kernel_init=_param(nn.initializers.lecun_normal(), (None, None, None, "embed")),
        )(images.astype(self.dtype))
        x = x.reshape(x.shape[0], -1, w)
        cls = self.param("class_embedding", _param(nn.initializers.normal(scale), ("embed",)), (w,))
        cls = jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, w))
        x = jnp.concatenate([cls, x], axis=1)
        pos = self.param(
            "positional_embedding", _param(nn.initializers.normal(scale), (None, "embed")),
            (x.shape[1], w),
        )
        x = x + pos.astype(self.dtype)
        x = layer_norm(c.layer_norm_eps, self.dtype, "ln_pre")(x)
        x = Transformer(
            w, c.vision_layers, c.vision_heads, c.vision_mlp_dim, c.act, c.layer_norm_eps,
            self.dtype, self.remat_policy, name="transformer",
        )(x)
        x = layer_norm(c.layer_norm_eps, self.dtype, "ln_post")(x[:, 0])
        proj = self.param("proj", _param(nn.initializers.normal(scale), ("embed", None)),
                          (w, c.embed_dim))
        return x @ proj.astype(self.dtype)


class TextTower(nn.Module):
    config: ModelConfig
    dtype: Any
    remat_policy: str

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        """tokens: [B, L] int ids, L <= context_length -> [B, embed_dim] (not normalised)."""
        c = self.config
        length = tokens.shape[1]
        embedding = self.param(
            "token_embedding", _param(nn.initializers.normal(0.02), ("vocab", "embed")),
            (c.vocab_size, c.text_width),
        )
        x = jnp.take(embedding, tokens, axis=0).astype(self.dtype)
        pos = self.param(
            "positional_embedding", _param(nn.initializers.normal(0.01), (None, "embed")),
            (c.context_length, c.text_width),
        )
        x = x + pos[:length].astype(self.dtype)
        causal = nn.make_causal_mask(jnp.ones((1, length), jnp.bool_), dtype=jnp.bool_)
        x = Transformer(
            c.text_width, c.text_layers, c.text_heads, c.text_mlp_dim, c.act, c.layer_norm_eps,
            self.dtype, self.remat_policy, name="transformer",
        )(x, causal)
        x = layer_norm(c.layer_norm_eps, self.dtype, "ln_final")(x)
        # The first end-of-text token: OpenAI's argmax(ids) for tokenizer output.
        eot = jnp.argmax(tokens == c.eot_token_id, axis=-1)
        x = x[jnp.arange(x.shape[0]), eot]
        proj = self.param(
            "text_projection", _param(nn.initializers.normal(c.text_width**-0.5), ("embed", None)),
            (c.text_width, c.embed_dim),
        )
        return x @ proj.astype(self.dtype)


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


class CLIP(nn.Module):
    """The two towers, the logit scale (and optional bias), optional category heads.

    `num_category_heads > 0` adds the stage-2 heads: Linear(embed_dim -> 5) on the normalised
    image and text embeddings. They are training-only and dropped at export.
    """

    config: ModelConfig
    dtype: Any = jnp.float32
    remat_policy: str = "none"
    num_category_heads: int = 0

    def setup(self) -> None:
        c = self.config
        if c.act not in ACTIVATIONS:
            raise UserError(f"unknown activation '{c.act}'; choose one of {sorted(ACTIVATIONS)}")
        if self.remat_policy not in REMAT_POLICIES:
            choices = sorted(REMAT_POLICIES)
            raise UserError(f"unknown remat policy '{self.remat_policy}'; choose one of {choices}")
        self.visual = VisionTower(c, self.dtype, self.remat_policy)
        self.text = TextTower(c, self.dtype, self.remat_policy)
        self.logit_scale = self.param(
            "logit_scale", _param(nn.initializers.constant(c.logit_scale_init), ()), ()
        )
        if c.logit_bias_init is not None:
            self.logit_bias = self.param(
                "logit_bias", _param(nn.initializers.constant(c.logit_bias_init), ()), ()
            )
        if self.num_category_heads:
            def head(name: str) -> nn.Dense:
                return nn.Dense(
                    self.num_category_heads, name=name,
                    kernel_init=_param(nn.initializers.lecun_normal(), (None, None)),
                    bias_init=_param(nn.initializers.zeros, (None,)),
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
