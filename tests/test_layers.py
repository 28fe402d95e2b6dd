"""The shared layers (`models/layers.py`). Attention: every implementation against a float64
numpy reference, forward and backward, with masks, and the implementations against each
other through whole CLIP and SigLIP models; unrolled towers against the scanned loop.
LayerNorm against flax's and a float64 formula, the MLP against its plain activation, the
patch embedding against the strided convolution; and what their backward passes keep.

    python -m pytest -q tests/test_layers.py
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_tokens

from reasonclip_jax.errors import UserError
from reasonclip_jax.models import layers
from reasonclip_jax.models.clip import CLIP, get_preset, init_params

CPU_IMPLS = [impl for impl in layers.ATTENTION_IMPLS if impl != "cudnn"]  # cuDNN: GPU only


def reference_attention(q, k, v, keep, d_out):
    """Float64 softmax attention [B, T, N, H] and its gradients for the cotangent `d_out`,
    written out (dV = P^T dO, dS = P (dP - rowsum(dP P)), dQ = s dS K, dK = s dS^T Q);
    `keep` [B, N, T, S] bool. Returns out, (dq, dk, dv)."""
    q, k, v, d_out = (np.asarray(a, np.float64) for a in (q, k, v, d_out))
    scale = q.shape[-1] ** -0.5
    logits = np.where(keep, scale * np.einsum("btnh,bsnh->bnts", q, k), -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bnts,bsnh->btnh", p, v)
    dv = np.einsum("bnts,btnh->bsnh", p, d_out)
    dp = np.einsum("btnh,bsnh->bnts", d_out, v)
    ds = p * (dp - np.sum(dp * p, -1, keepdims=True))
    dq = scale * np.einsum("bnts,bsnh->btnh", ds, k)
    dk = scale * np.einsum("bnts,btnh->bsnh", ds, q)
    return out, (dq, dk, dv)


def _inputs(rng, batch=2, t=7, s=9, heads=3, dim=8):
    q = rng.standard_normal((batch, t, heads, dim)).astype(np.float32)
    k = rng.standard_normal((batch, s, heads, dim)).astype(np.float32)
    v = rng.standard_normal((batch, s, heads, dim)).astype(np.float32)
    d_out = rng.standard_normal((batch, t, heads, dim)).astype(np.float32)
    return q, k, v, d_out


def _value_and_grads(impl, q, k, v, d_out, **kw):
    def f(q, k, v):
        return layers.dot_product_attention(q, k, v, impl=impl, **kw)

    out, vjp = jax.vjp(jax.jit(f), q, k, v)
    return out, vjp(jnp.asarray(d_out))


def _check(out, grads, ref_out, ref_grads):
    np.testing.assert_allclose(out, ref_out, atol=2e-6, rtol=0)
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        assert np.abs(r).max() > 0.1, name  # a gradient worth comparing
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=0, err_msg=f"d{name}")


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_attention_matches_float64_reference(impl, rng):
    q, k, v, d_out = _inputs(rng)
    keep = np.ones((2, 3, 7, 9), bool)
    out, grads = _value_and_grads(impl, q, k, v, d_out)
    _check(out, grads, *reference_attention(q, k, v, keep, d_out))


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_causal_attention_matches_float64_reference(impl, rng):
    q, k, v, d_out = _inputs(rng, t=9, s=9)
    keep = np.broadcast_to(np.tril(np.ones((9, 9), bool)), (2, 3, 9, 9))
    out, grads = _value_and_grads(impl, q, k, v, d_out, causal=True)
    _check(out, grads, *reference_attention(q, k, v, keep, d_out))
    # the first query sees only the first key: its output is that key's value
    np.testing.assert_allclose(out[:, 0], v[:, 0], atol=1e-6)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_masked_attention_matches_float64_reference(impl, rng):
    # A per-example, per-head mask (every query keeps at least one key), alone and with the
    # causal mask on top; queries and keys of different lengths (cross-attention).
    q, k, v, d_out = _inputs(rng, t=9, s=9)
    keep = rng.random((2, 3, 9, 9)) < 0.5
    keep[..., 0] = True
    out, grads = _value_and_grads(impl, q, k, v, d_out, mask=jnp.asarray(keep))
    _check(out, grads, *reference_attention(q, k, v, keep, d_out))
    causal = keep & np.tril(np.ones((9, 9), bool))
    out, grads = _value_and_grads(impl, q, k, v, d_out, mask=jnp.asarray(keep), causal=True)
    _check(out, grads, *reference_attention(q, k, v, causal, d_out))
    q, k, v, d_out = _inputs(rng, t=1, s=9)  # one query (SigLIP's pooling probe)
    keep = np.broadcast_to(np.arange(9) < 6, (2, 1, 1, 9))
    out, grads = _value_and_grads(impl, q, k, v, d_out, mask=jnp.asarray(keep))
    _check(out, grads, *reference_attention(q, k, v, keep, d_out))


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_bf16_attention_is_close_to_fp32(impl, rng):
    q, k, v, d_out = _inputs(rng, t=9, s=9)
    keep = np.broadcast_to(np.tril(np.ones((9, 9), bool)), (2, 3, 9, 9))
    ref_out, ref_grads = reference_attention(q, k, v, keep, d_out)
    bf16 = [jnp.asarray(a, jnp.bfloat16) for a in (q, k, v, d_out)]
    out, grads = _value_and_grads(impl, *bf16, causal=True)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    # bf16 keeps 8 bits of mantissa: inputs and outputs each about 0.4% off
    np.testing.assert_allclose(np.asarray(out, np.float32), ref_out, atol=0.05, rtol=0)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float32), r, atol=0.05 * np.abs(r).max())


def test_unknown_attention_impl_is_refused(rng):
    q, k, v, _ = _inputs(rng)
    with pytest.raises(UserError, match="unknown attention implementation 'flash'"):
        layers.dot_product_attention(q, k, v, impl="flash")
    model = CLIP(get_preset("tiny"), attention_impl="flash")
    with pytest.raises(UserError, match="choose one of"):
        init_params(model, jax.random.key(0))


@pytest.mark.parametrize("preset", ["tiny", "siglip-tiny"])
def test_models_agree_across_attention_impls(preset, rng):
    # Every attention of the model (CLIP's causal text, SigLIP's non-causal text and its
    # pooling head) through each implementation: the same embeddings and gradients.
    config = get_preset(preset)
    params = nn.unbox(init_params(CLIP(config), jax.random.key(0)))
    images = jnp.asarray(rng.standard_normal((2, 64, 64, 3)), jnp.float32)
    tokens = jnp.asarray(random_tokens(rng, 2, config.context_length))

    def loss(p, impl):
        out = CLIP(config, attention_impl=impl).apply({"params": p}, images, tokens)
        return jnp.sum(out["image_embeds"] * out["text_embeds"]), out

    results = {impl: jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(
        params, impl) for impl in CPU_IMPLS}
    reference = results["einsum"]
    for impl, result in results.items():
        _assert_same_model(result, reference, impl)


def _assert_same_model(result, reference, label):
    """Two `value_and_grad(has_aux=True)` results of a CLIP loss: the same embeddings and
    gradients. fp32 summation order may differ: 1e-5 of each leaf's scale (the attention
    key biases' true gradient is 0: noise of 1e-9 there)."""
    ((_, out), grad), ((_, ref_out), ref_grad) = result, reference
    for key in ("image_embeds", "text_embeds"):
        np.testing.assert_allclose(out[key], ref_out[key], atol=1e-6, err_msg=label)
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grad),
                            jax.tree.leaves(ref_grad), strict=True):
        np.testing.assert_allclose(g, r, atol=1e-6 + 1e-5 * np.abs(r).max(), rtol=0,
                                   err_msg=f"{label} {path}")


@pytest.mark.parametrize("preset", ["tiny", "siglip-tiny"])
@pytest.mark.parametrize("remat", ["none", "full"])
def test_unrolled_towers_compute_the_scanned_function(preset, remat, rng):
    # scan_unroll changes how the blocks are compiled, not the parameters or the function:
    # the same tree initialises, and embeddings and gradients agree with the rolled loop.
    config = get_preset(preset, vision_layers=3, text_layers=3)
    params = nn.unbox(init_params(CLIP(config), jax.random.key(0)))
    unrolled_init = nn.unbox(init_params(CLIP(config, scan_unroll=3), jax.random.key(0)))
    jax.tree.map(np.testing.assert_array_equal, unrolled_init, params)
    images = jnp.asarray(rng.standard_normal((2, 64, 64, 3)), jnp.float32)
    tokens = jnp.asarray(random_tokens(rng, 2, config.context_length))

    def loss(p, unroll):
        out = CLIP(config, remat_policy=remat, scan_unroll=unroll).apply(
            {"params": p}, images, tokens)
        return jnp.sum(out["image_embeds"] * out["text_embeds"]), out

    run = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    reference = run(params, 1)
    # 2: a remainder block after the loop; 4: more than the layers (all unrolled, as a
    # model-wide setting does for its shorter tower)
    for unroll in (2, 3, 4):
        _assert_same_model(run(params, unroll), reference, f"unroll {unroll}")


@pytest.mark.parametrize("unroll", [0, 1.5])
def test_bad_scan_unroll_is_refused(unroll):
    with pytest.raises(UserError, match="scan_unroll must be a positive integer"):
        init_params(CLIP(get_preset("tiny"), scan_unroll=unroll), jax.random.key(0))


def test_attention_impl_is_carried_to_every_attention(monkeypatch):
    # The implementation reaches every attention of both families' towers, and the causal
    # mask only CLIP's text.
    seen = []

    def spy(q, k, v, *, impl, mask=None, causal=False):
        seen.append((q.shape[1], k.shape[1], impl, causal))
        return jnp.zeros_like(q)

    monkeypatch.setattr(layers, "dot_product_attention", spy)
    for preset in ("tiny", "siglip-tiny"):
        config = get_preset(preset)
        jax.eval_shape(lambda c=config: init_params(CLIP(c, attention_impl="einsum"),
                                                    jax.random.key(0)))
    patches = (64 // 8) ** 2
    assert set(seen) == {
        (patches + 1, patches + 1, "einsum", False),  # CLIP image, with its class token
        (77, 77, "einsum", True),  # CLIP text
        (patches, patches, "einsum", False),  # SigLIP image
        (1, patches, "einsum", False),  # SigLIP's pooling head
        (64, 64, "einsum", False),  # SigLIP text
    }


def _saved(fn, x):
    """The arrays of x's shape that the backward pass of `fn` keeps from the forward."""
    _, vjp = jax.vjp(fn, x)
    return [leaf for leaf in jax.tree.leaves(vjp) if getattr(leaf, "shape", None) == x.shape]


def test_layer_norm_matches_flax_and_float64(rng):
    x = jnp.asarray(3 + 2 * rng.standard_normal((3, 5, 16)), jnp.float32)
    ours, flax_ln = layers.LayerNorm(1e-5, jnp.float32), nn.LayerNorm(1e-5)
    params = nn.unbox(ours.init(jax.random.key(0), x))
    jax.tree.map(np.testing.assert_array_equal, params, flax_ln.init(jax.random.key(0), x))
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.standard_normal(p.shape), p.dtype),
                          params)
    x64 = np.asarray(x, np.float64)
    scale, bias = (np.asarray(params["params"][k], np.float64) for k in ("scale", "bias"))
    reference = ((x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True)
                                                                 + 1e-5)) * scale + bias
    np.testing.assert_allclose(ours.apply(params, x), reference, atol=2e-6, rtol=0)
    cotangent = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

    def grads(module):
        return jax.grad(lambda p, x: jnp.sum(module.apply(p, x) * cotangent),
                        argnums=(0, 1))(params, x)

    for g, r in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(flax_ln)), strict=True):
        np.testing.assert_allclose(g, r, atol=2e-5 * np.abs(r).max(), rtol=0)
    bf16 = layers.LayerNorm(1e-5, jnp.bfloat16).apply(params, x.astype(jnp.bfloat16))
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf16, np.float32), reference, atol=0.05, rtol=0.01)


def test_layer_norm_backward_keeps_only_its_input(rng):
    x = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
    ours, flax_ln = layers.LayerNorm(1e-5, jnp.float32), nn.LayerNorm(1e-5)
    params = nn.unbox(ours.init(jax.random.key(0), x))
    assert len(_saved(lambda x: ours.apply(params, x), x)) == 1
    assert len(_saved(lambda x: flax_ln.apply(params, x), x)) == 3  # autodiff's, for contrast


@pytest.mark.parametrize("act", sorted(layers.ACTIVATIONS))
def test_mlp_backward_keeps_one_hidden_array(act, rng):
    # The activation is recomputed in the backward pass: of the [.., mlp_dim] arrays only
    # the activation's input is kept (its autodiff alone keeps three, tanh GELU five).
    x = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
    mlp = layers.Mlp(16, 64, act, jnp.float32)
    params = nn.unbox(mlp.init(jax.random.key(0), x))
    _, vjp = jax.vjp(lambda x: mlp.apply(params, x), x)
    hidden = [leaf for leaf in jax.tree.leaves(vjp) if getattr(leaf, "shape", None) == (2, 5, 64)]
    assert len(hidden) == 1
    act_fn = layers.ACTIVATIONS[act]
    assert len(_saved(lambda h: act_fn(h) @ jnp.ones((64, 4)), jnp.ones((2, 5, 64)))) >= 3
    # and the gradient is the plain activation's
    def plain(p, x):
        h = x @ p["params"]["c_fc"]["kernel"] + p["params"]["c_fc"]["bias"]
        return act_fn(h) @ p["params"]["c_proj"]["kernel"] + p["params"]["c_proj"]["bias"]

    cotangent = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
    ours = jax.grad(lambda p: jnp.sum(mlp.apply(p, x) * cotangent))(params)
    reference = jax.grad(lambda p: jnp.sum(plain(p, x) * cotangent))(params)
    for g, r in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5 * np.abs(r).max(), rtol=0)


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("size", [32, 30])  # 30: the last 6 rows and columns are dropped
def test_patch_embedding_is_the_strided_convolution(use_bias, size, rng):
    images = jnp.asarray(rng.standard_normal((2, size, size, 3)), jnp.float32)
    ours = layers.PatchEmbedding(8, 8, use_bias=use_bias, dtype=jnp.float32)
    conv = nn.Conv(8, (8, 8), strides=(8, 8), padding="VALID", use_bias=use_bias,
                   kernel_init=nn.initializers.lecun_normal())
    params = nn.unbox(ours.init(jax.random.key(0), images))
    conv_params = conv.init(jax.random.key(0), images)
    jax.tree.map(np.testing.assert_array_equal, params, conv_params)  # the same init
    if use_bias:
        params = jax.tree.map(lambda p: p + 0.1, params)
    out = ours.apply(params, images)
    assert out.shape == (2, (size // 8) ** 2, 8)
    np.testing.assert_allclose(out, conv.apply(params, images).reshape(out.shape), atol=1e-5)
    cotangent = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
    g = jax.grad(lambda p: jnp.sum(ours.apply(p, images) * cotangent))(params)
    r = jax.grad(lambda p: jnp.sum(conv.apply(p, images).reshape(out.shape) * cotangent))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), g, r)
