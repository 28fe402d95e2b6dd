"""The layers CLIP and SigLIP towers share: pre-LayerNorm residual blocks stacked with
`nn.scan` (one compiled block per tower), optional rematerialisation, fp32 softmax and
LayerNorm statistics, and logical axis names on every parameter and activation
(`reasonclip_jax.parallel.sharding` maps them to mesh axes). Attention is computed by the
implementation the config names (`ATTENTION_IMPLS`). What a backward pass keeps is kept
small: LayerNorm's backward is written out (x, mean, 1/std kept) and the MLP's activation is
recomputed from its input; the patch embedding is one matmul.

    python -c "from reasonclip_jax.models import layers; print(sorted(layers.REMAT_POLICIES))"
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reasonclip_jax.errors import UserError
from reasonclip_jax.models.preprocessing import normalization_constants
from reasonclip_jax.parallel.sharding import constrain

Array = jax.Array


def partitioned(init: Callable[..., Array], names: tuple[str | None, ...]) -> Callable[..., Array]:
    """`init` with logical axis names attached to the parameter it makes."""
    return nn.with_logical_partitioning(init, names)


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


# How attention's softmax(q k^T / sqrt(d)) v is computed (`config.model.attention_impl`):
#   "einsum"  two einsums around an fp32 softmax, written out here (the original);
#   "xla"     `jax.nn.dot_product_attention`'s XLA path (fp32 logits, also under bf16);
#   "cudnn"   its cuDNN fused attention: NVIDIA GPUs, bf16/fp16 compute only.
ATTENTION_IMPLS = ("einsum", "xla", "cudnn")
DEFAULT_ATTENTION_IMPL = "einsum"  # the fastest on CPU (bench/bench_attention.py)


def dot_product_attention(query: Array, key: Array, value: Array, *, impl: str,
                          mask: Array | None = None, causal: bool = False) -> Array:
    """Multi-head attention of `query` [B, T, N, H] over `key`, `value` [B, S, N, H]:
    softmax(q k^T / sqrt(H)) v per head -> [B, T, N, H], with the softmax in fp32.

    `mask` (bool, broadcastable to [B, N, T, S]; True attends) and `causal` (query t sees
    keys s <= t) restrict what each query sees; `impl` is one of `ATTENTION_IMPLS`.
    """
    if impl == "einsum":
        head_dim = query.shape[-1]
        logits = jnp.einsum("bqhd,bkhd->bhqk", query * head_dim**-0.5, key)
        if causal:
            keep = jnp.tril(jnp.ones((query.shape[1], key.shape[1]), jnp.bool_))
            mask = keep if mask is None else jnp.logical_and(mask, keep)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(value.dtype)
        return jnp.einsum("bhqk,bkhd->bqhd", weights, value)
    if impl not in ATTENTION_IMPLS:
        raise UserError(f"unknown attention implementation '{impl}'; choose one of "
                        f"{ATTENTION_IMPLS}")
    return jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=causal,
                                        implementation=impl)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections (fp32 softmax); `causal` masks
    the future, `impl` picks the kernel (`ATTENTION_IMPLS`)."""

    width: int
    heads: int
    dtype: Any
    causal: bool = False
    impl: str = DEFAULT_ATTENTION_IMPL

    @nn.compact
    def __call__(self, x: Array, kv: Array | None = None) -> Array:
        """Queries from `x`, keys and values from `kv` (default `x`: self-attention)."""
        head_dim = self.width // self.heads
        std = self.width**-0.5
        kv = x if kv is None else kv

        def proj(name: str, inputs: Array) -> Array:
            return nn.DenseGeneral(
                (self.heads, head_dim), dtype=self.dtype, name=name,
                kernel_init=partitioned(nn.initializers.normal(std), ("embed", "heads", "kv")),
                bias_init=partitioned(nn.initializers.zeros, ("heads", "kv")),
            )(inputs)

        q, k, v = proj("query", x), proj("key", kv), proj("value", kv)
        q = constrain(q, ("act_batch", "act_length", "act_heads", None))
        out = dot_product_attention(q, k, v, impl=self.impl, causal=self.causal)
        return nn.DenseGeneral(
            self.width, axis=(-2, -1), dtype=self.dtype, name="out",
            kernel_init=partitioned(nn.initializers.normal(std), ("heads", "kv", "embed")),
            bias_init=partitioned(nn.initializers.zeros, ("embed",)),
        )(out)


class PatchEmbedding(nn.Module):
    """Non-overlapping `patch` x `patch` patches of [B, H, W, C] images projected to `width`:
    the stride-`patch` VALID convolution as one matmul (its kernel gradient one matmul too)
    -> [B, (H // patch) * (W // patch), width]; rows and columns past the last whole patch
    are dropped, as the convolution drops them. Parameters as `nn.Conv`'s: `kernel`
    [patch, patch, C, width], `bias` [width]."""

    width: int
    patch: int
    use_bias: bool
    dtype: Any

    @nn.compact
    def __call__(self, images: Array) -> Array:
        p = self.patch
        b, rows, cols, c = images.shape
        h, w = rows // p * p, cols // p * p
        images = images[:, :h, :w]
        kernel = self.param("kernel", partitioned(nn.initializers.lecun_normal(),
                                                  (None, None, None, "embed")),
                            (p, p, c, self.width), jnp.float32)
        patches = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(b, (h // p) * (w // p), p * p * c)
        x = patches @ kernel.reshape(p * p * c, self.width).astype(self.dtype)
        if self.use_bias:
            bias = self.param("bias", partitioned(nn.initializers.zeros, ("embed",)),
                              (self.width,), jnp.float32)
            x = x + bias.astype(self.dtype)
        return x


class Mlp(nn.Module):
    """c_fc, the activation, c_proj. The activation is recomputed from its input in the
    backward pass: one [tokens, mlp_dim] array kept for it per layer instead of the three
    (five for tanh GELU) that its autodiff keeps."""

    width: int
    mlp_dim: int
    act: str
    dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        std = self.width**-0.5
        x = nn.Dense(
            self.mlp_dim, dtype=self.dtype, name="c_fc",
            kernel_init=partitioned(nn.initializers.normal(std), ("embed", "mlp")),
            bias_init=partitioned(nn.initializers.zeros, ("mlp",)),
        )(x)
        x = constrain(x, ("act_batch", "act_length", "act_mlp"))
        x = jax.checkpoint(ACTIVATIONS[self.act], prevent_cse=False)(x)
        return nn.Dense(
            self.width, dtype=self.dtype, name="c_proj",
            kernel_init=partitioned(nn.initializers.normal(std), ("mlp", "embed")),
            bias_init=partitioned(nn.initializers.zeros, ("embed",)),
        )(x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm_fn(x: Array, scale: Array, bias: Array, eps: float) -> Array:
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis, in fp32 (returns
    fp32). Its backward keeps x, the mean and 1/std only and writes the gradient out, where
    autodiff would keep the centred and the normalised x as well."""
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _normalized(x: Array, mean: Array, rstd: Array) -> Array:
    return (x.astype(jnp.float32) - mean) * rstd


def _layer_norm_fwd(x: Array, scale: Array, bias: Array, eps: float
                    ) -> tuple[Array, tuple[Array, ...]]:
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, -1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(xf - mean), -1, keepdims=True) + eps)
    return _normalized(x, mean, rstd) * scale + bias, (x, mean, rstd, scale)


def _layer_norm_bwd(eps: float, res: tuple[Array, ...], dy: Array
                    ) -> tuple[Array, Array, Array]:
    del eps
    x, mean, rstd, scale = res
    xhat, dy = _normalized(x, mean, rstd), dy.astype(jnp.float32)
    g = dy * scale
    dx = rstd * (g - jnp.mean(g, -1, keepdims=True)
                 - xhat * jnp.mean(g * xhat, -1, keepdims=True))
    axes = tuple(range(x.ndim - 1))
    return (dx.astype(x.dtype), jnp.sum(dy * xhat, axes).astype(scale.dtype),
            jnp.sum(dy, axes).astype(scale.dtype))


layer_norm_fn.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis (`layer_norm_fn`): fp32 statistics and fp32 `scale` and
    `bias` parameters, output in `dtype`; the parameters of `nn.LayerNorm`."""

    epsilon: float
    dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = (x.shape[-1],)
        scale = self.param("scale", partitioned(nn.initializers.ones, ("norm",)), features,
                           jnp.float32)
        bias = self.param("bias", partitioned(nn.initializers.zeros, ("norm",)), features,
                          jnp.float32)
        return layer_norm_fn(x, scale, bias, self.epsilon).astype(self.dtype)


def layer_norm(eps: float, dtype: Any, name: str) -> LayerNorm:
    """LayerNorm with statistics in fp32, params named scale/bias."""
    return LayerNorm(eps, dtype, name=name)


class ResidualBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x)). Scanned over layers."""

    width: int
    heads: int
    mlp_dim: int
    act: str
    eps: float
    dtype: Any
    causal: bool = False
    attention_impl: str = DEFAULT_ATTENTION_IMPL

    @nn.compact
    def __call__(self, x: Array, _: None) -> tuple[Array, None]:
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        h = layer_norm(self.eps, self.dtype, "ln_1")(x)
        x = x + Attention(self.width, self.heads, self.dtype, self.causal, self.attention_impl,
                          name="attn")(h)
        h = layer_norm(self.eps, self.dtype, "ln_2")(x)
        x = x + Mlp(self.width, self.mlp_dim, self.act, self.dtype, name="mlp")(h)
        return x, None


class Transformer(nn.Module):
    """`layers` residual blocks as one `nn.scan` (parameters stacked on a leading axis);
    `causal`: each position attends to itself and the ones before it (CLIP's text).
    `scan_unroll`: blocks per loop iteration; `layers` unrolls the stack (no while loop),
    the same function and parameters, a longer compile (on a TPU XLA then holds fewer
    temporaries, README "Batch-size studies")."""

    width: int
    layers: int
    heads: int
    mlp_dim: int
    act: str
    eps: float
    dtype: Any
    remat_policy: str = "none"
    causal: bool = False
    attention_impl: str = DEFAULT_ATTENTION_IMPL
    scan_unroll: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        block = ResidualBlock
        if self.remat_policy != "none":
            # Only a rolled loop keeps XLA from merging the recomputation with the forward
            # pass; unrolled blocks need the barrier.
            block = nn.remat(block, policy=REMAT_POLICIES[self.remat_policy],
                             prevent_cse=self.scan_unroll != 1)
        stack = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast,),
            length=self.layers,
            unroll=self.scan_unroll,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = stack(
            self.width, self.heads, self.mlp_dim, self.act, self.eps, self.dtype, self.causal,
            self.attention_impl, name="layers",
        )(x, None)
        return x



def embed_tokens(module: nn.Module, tokens: Array, vocab_size: int, context_length: int,
                 width: int, dtype: Any) -> Array:
    """Token plus learned position embeddings, [B, L] ids -> [B, L, width], as a text
    tower's params `token_embedding` and `positional_embedding` of `module`."""
    embedding = module.param(
        "token_embedding", partitioned(nn.initializers.normal(0.02), ("vocab", "embed")),
        (vocab_size, width),
    )
    pos = module.param(
        "positional_embedding", partitioned(nn.initializers.normal(0.01), (None, "embed")),
        (context_length, width),
    )
    # Gather the table's fsdp shards before the lookup (as every other weight is gathered
    # before use): a table sharded on its width would otherwise have XLA all-gather the
    # global batch's token ids and look all of them up on every device.
    embedding = constrain(embedding, ("vocab", None))
    x = jnp.take(embedding, tokens, axis=0).astype(dtype)
    x = constrain(x, ("act_batch", "act_length", "act_embed"))
    return x + pos[: tokens.shape[1]].astype(dtype)


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def normalize_pixels(pixels: Array, family: str = "clip") -> Array:
    """Raw integer pixels -> float32 normalised with the family's mean and std
    (`data.transforms.normalize` on device)."""
    scale, offset = normalization_constants(family)
    return pixels.astype(jnp.float32) * scale - offset
