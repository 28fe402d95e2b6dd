"""Contrastive losses against an independent float64 numpy reference, on 8 simulated devices.

Every implementation (softmax/sigmoid x gather/ring/tiled_ring) on meshes (8,1,1), (2,4,1)
and (2,2,2) (the tensor axis is not a batch axis) must give the single-device loss,
accuracies and gradients w.r.t. img, txt, log_scale and bias, with no factor-of-world-size
scaling. The tiled ring runs in tiles smaller than the local batch (2 x 2 tiles of a 4 x 4
block on 8 batch devices, 4 x 4 tiles of 8 x 8 on 4), and its compiled program must hold no
n x n array.

    python -m pytest tests/test_losses.py
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from reasonclip_jax.parallel.losses import (
    contrastive_loss,
    sigmoid_contrastive_loss_dense,
    softmax_contrastive_loss_dense,
)

N, D = 32, 16
LOG_SCALE, BIAS = np.log(10.0), -4.0
MESHES = {"8x1x1": (8, 1, 1), "2x4x1": (2, 4, 1), "2x2x2": (2, 2, 2)}
BATCH_AXES = ("data", "fsdp")
TILE = 2  # tiled_ring's tile side in these tests; the other implementations ignore it


# ----------------------------------------------------------------------------------------
# float64 numpy reference, written out independently of the code under test.
# ----------------------------------------------------------------------------------------
def _log_sum_exp(values: np.ndarray) -> float:
    m = max(values)
    return m + np.log(sum(np.exp(v - m) for v in values))


def _log_sigmoid(x: float) -> float:
    return -np.logaddexp(0.0, -x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def ref_loss(img, txt, log_scale, bias, kind):
    """The N x N loss with explicit loops."""
    n = img.shape[0]
    s = np.exp(log_scale)
    z = np.array([[s * np.dot(img[i], txt[j]) for j in range(n)] for i in range(n)])
    if kind == "softmax":
        i2t = sum(_log_sum_exp(z[i, :]) - z[i, i] for i in range(n))
        t2i = sum(_log_sum_exp(z[:, j]) - z[j, j] for j in range(n))
        return 0.5 * (i2t + t2i) / n
    total = 0.0
    for i in range(n):
        for j in range(n):
            label = 1.0 if i == j else -1.0
            total -= _log_sigmoid(label * (z[i, j] + bias))
    return total / n


def ref_grads(img, txt, log_scale, bias, kind):
    """Analytic gradients w.r.t. (img, txt, log_scale, bias)."""
    n = img.shape[0]
    s = np.exp(log_scale)
    z = s * img @ txt.T
    eye = np.eye(n)
    if kind == "softmax":
        p_row = np.exp(z - z.max(1, keepdims=True))
        p_row /= p_row.sum(1, keepdims=True)
        p_col = np.exp(z - z.max(0, keepdims=True))
        p_col /= p_col.sum(0, keepdims=True)
        dz = 0.5 * (p_row + p_col - 2.0 * eye) / n
    else:
        labels = 2.0 * eye - 1.0
        dz = -labels * _sigmoid(-labels * (z + bias)) / n
    return s * dz @ txt, s * dz.T @ img, np.sum(dz * z), 0.0 if kind == "softmax" else dz.sum()


def ref_accuracy(img, txt):
    sim = img @ txt.T
    target = np.arange(img.shape[0])
    return np.mean(sim.argmax(1) == target), np.mean(sim.argmax(0) == target)


def embeddings(seed: int = 0, n: int = N, noise: float = 0.5):
    """Unit-norm float32 pairs, close enough that in-batch accuracy is neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(n, D))
    txt = img + noise * rng.normal(size=(n, D)) * np.sqrt(D)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img.astype(np.float32), txt.astype(np.float32)


def make_mesh(shape):
    auto = (jax.sharding.AxisType.Auto,) * 3
    return jax.make_mesh(shape, ("data", "fsdp", "tensor"), axis_types=auto)


def assert_close(actual, expected, rtol=1e-5):
    """Relative to the largest reference magnitude, so near-zero entries are not over-judged."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(np.max(np.abs(expected)), 1e-12)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


def loss_and_grads(img, txt, kind, impl, mesh, batch_axes=BATCH_AXES, tile_size=TILE):
    """jit(value_and_grad) of `contrastive_loss` on inputs sharded like the trainer's."""

    def fn(img, txt, log_scale, bias):
        return contrastive_loss(
            img, txt, log_scale, bias, kind=kind, impl=impl, mesh=mesh, batch_axes=batch_axes,
            tile_size=tile_size,
        )

    if mesh is not None:
        batch = NamedSharding(mesh, P(batch_axes))
        img, txt = jax.device_put(img, batch), jax.device_put(txt, batch)
    grad_fn = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True))
    return grad_fn(img, txt, jnp.float32(LOG_SCALE), jnp.float32(BIAS))


# ----------------------------------------------------------------------------------------
# Tests.
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_reference_gradients_match_finite_differences(kind):
    """The analytic float64 reference gradients agree with central differences of its loss."""
    img, txt = (x.astype(np.float64) for x in embeddings(seed=1, n=6))
    args = [img, txt, LOG_SCALE, BIAS]
    analytic = ref_grads(*args, kind)
    eps = 1e-6
    for a, grad in enumerate(analytic):
        value = np.asarray(args[a], np.float64)
        numeric = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            plus, minus = value.copy(), value.copy()
            plus[idx] += eps
            minus[idx] -= eps
            lp = ref_loss(*[plus if k == a else args[k] for k in range(4)], kind)
            lm = ref_loss(*[minus if k == a else args[k] for k in range(4)], kind)
            numeric[idx] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("impl", ["gather", "tiled_ring"])  # tiled_ring: a ring of one
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_single_device(kind, impl):
    img, txt = embeddings()
    (loss, metrics), grads = loss_and_grads(img, txt, kind, impl, None, tile_size=8)
    ref = (img.astype(np.float64), txt.astype(np.float64), LOG_SCALE, BIAS)
    assert_close(loss, ref_loss(*ref, kind))
    for got, want in zip(grads, ref_grads(*ref, kind), strict=True):
        assert_close(got, want)
    acc_i2t, acc_t2i = ref_accuracy(*ref[:2])
    assert 0.0 < acc_i2t < 1.0 and 0.0 < acc_t2i < 1.0  # the data is not degenerate
    assert float(metrics["acc_i2t"]) == pytest.approx(acc_i2t)
    assert float(metrics["acc_t2i"]) == pytest.approx(acc_t2i)

    dense = softmax_contrastive_loss_dense if kind == "softmax" else sigmoid_contrastive_loss_dense
    dense_args = (img, txt, jnp.float32(LOG_SCALE)) + ((jnp.float32(BIAS),) * (kind == "sigmoid"))
    assert_close(dense(*dense_args), ref_loss(*ref, kind))


@pytest.mark.parametrize("mesh_name", list(MESHES))
@pytest.mark.parametrize("impl", ["gather", "ring", "tiled_ring"])
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_distributed_matches_reference(kind, impl, mesh_name, tile_size=TILE):
    img, txt = embeddings(seed=2)
    (loss, metrics), grads = loss_and_grads(img, txt, kind, impl, make_mesh(MESHES[mesh_name]),
                                            tile_size=tile_size)
    ref = (img.astype(np.float64), txt.astype(np.float64), LOG_SCALE, BIAS)
    assert_close(loss, ref_loss(*ref, kind))
    names = ("img", "txt", "log_scale", "bias")
    for name, got, want in zip(names, grads, ref_grads(*ref, kind), strict=True):
        assert got.shape == np.shape(want), name
        if kind == "softmax" and name == "bias":
            assert float(got) == 0.0  # softmax ignores a constant shift
        else:
            assert_close(got, want)
    acc_i2t, acc_t2i = ref_accuracy(*ref[:2])
    assert float(metrics["acc_i2t"]) == pytest.approx(acc_i2t)
    assert float(metrics["acc_t2i"]) == pytest.approx(acc_t2i)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_tile_larger_than_local_batch_is_one_tile(kind):
    """tile_size above n = 4 (8 batch devices) visits each block whole, as the ring does."""
    test_distributed_matches_reference(kind, "tiled_ring", "8x1x1", tile_size=64)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_tiled_ring_holds_no_block_of_logits(kind):
    """The compiled program of the tiled ring has no n x n array; the untiled ring's has
    (the check can fail). n = 64 rows per device, tiles of 16 x 16, D = 16."""
    mesh = make_mesh((8, 1, 1))
    emb = jax.ShapeDtypeStruct((8 * 64, D), jnp.float32,
                               sharding=NamedSharding(mesh, P(BATCH_AXES)))
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))

    def program(impl):
        def loss(img, txt, log_scale, bias):
            return contrastive_loss(img, txt, log_scale, bias, kind=kind, impl=impl, mesh=mesh,
                                    batch_axes=BATCH_AXES, tile_size=16)[0]

        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
        return grad.lower(emb, emb, scalar, scalar).compile()

    block = re.compile(r"\[64,64\]")
    tiled, ring = program("tiled_ring"), program("ring")
    assert block.search(ring.as_text())
    assert not block.search(tiled.as_text())
    assert re.search(r"\[16,16\]", tiled.as_text())
    assert (tiled.memory_analysis().temp_size_in_bytes
            < ring.memory_analysis().temp_size_in_bytes)


@pytest.mark.parametrize("impl", ["ring", "tiled_ring"])
def test_batch_axes_of_size_one_is_single_device(impl):
    """A mesh whose batch axes have size 1 (all devices on `tensor`) computes on one device."""
    img, txt = embeddings(seed=3)
    (loss, _), grads = loss_and_grads(img, txt, "softmax", impl, make_mesh((1, 1, 8)),
                                      tile_size=8)
    ref = (img.astype(np.float64), txt.astype(np.float64), LOG_SCALE, BIAS)
    assert_close(loss, ref_loss(*ref, "softmax"))
    assert_close(grads[0], ref_grads(*ref, "softmax")[0])


@pytest.mark.parametrize("impl", ["ring", "tiled_ring"])
def test_ring_keeps_bfloat16_gradients(impl):
    """bf16 embeddings: float32 logits inside, gradients come back in the inputs' dtype
    (measured on the untiled ring; the tiled one meets the same tolerances).

    Errors measured here (seed 4, mesh 8x1x1; `assert_close` scale: the largest reference
    entry). Against the float64 reference on the original float32 inputs: loss 1.9e-4,
    img / txt gradients 3.6e-3 / 3.5e-3 (mostly the inputs' bf16 rounding). Against the
    reference on the bf16-rounded inputs, only float32 arithmetic and the final cast remain:
    loss 6.4e-8, log_scale gradient 6.2e-7, and every img / txt gradient entry is the
    reference rounded to bf16 (at most 0.0038 of itself off, under half a bf16 ulp,
    2^-8 = 0.0039; the float32 path's own error is 1.9e-7). Tolerances: about 3x these.
    """
    img, txt = embeddings(seed=4)
    mesh = make_mesh((8, 1, 1))
    (loss, _), grads = loss_and_grads(jnp.bfloat16(img), jnp.bfloat16(txt), "softmax", impl, mesh)
    assert grads[0].dtype == grads[1].dtype == jnp.bfloat16
    ref = (img.astype(np.float64), txt.astype(np.float64), LOG_SCALE, BIAS)
    assert_close(loss, ref_loss(*ref, "softmax"), rtol=6e-4)  # was 2e-2, 100x the error
    for got, want in zip(grads[:2], ref_grads(*ref, "softmax")[:2], strict=True):
        assert_close(got, want, rtol=1e-2)

    rounded = tuple(np.asarray(jnp.bfloat16(x), np.float64) for x in (img, txt))
    ref = (*rounded, LOG_SCALE, BIAS)
    want = ref_grads(*ref, "softmax")
    assert_close(loss, ref_loss(*ref, "softmax"), rtol=2e-7)
    assert_close(grads[2], want[2], rtol=2e-6)
    assert float(grads[3]) == 0.0  # softmax ignores the bias
    for got, w in zip(grads[:2], want[:2], strict=True):
        # Round-to-nearest bf16: within half an ulp (2^-8 of the value), plus float32 noise.
        np.testing.assert_allclose(np.asarray(got, np.float64), w, rtol=2**-8,
                                   atol=1e-6 * np.abs(w).max())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "hinge"}, "unknown contrastive loss kind 'hinge'"),
        ({"impl": "allreduce"}, "unknown contrastive loss impl 'allreduce'"),
        ({"kind": "sigmoid", "bias": None}, "needs bias="),
        ({"batch_axes": ("data", "replica")}, "not axes of the mesh"),
        ({"impl": "tiled_ring", "tile_size": 3}, "local batch 4 .* not a multiple of tile_size 3"),
        ({"impl": "tiled_ring", "tile_size": 0}, "tile_size must be a positive"),
        ({"impl": "tiled_ring", "negatives_gradient": "local"}, "needs impl='gather'"),
    ],
)
def test_bad_arguments(kwargs, message):
    img, txt = embeddings()
    args = {"bias": jnp.float32(BIAS), "mesh": make_mesh((8, 1, 1)), **kwargs}
    bias = args.pop("bias")
    with pytest.raises(ValueError, match=message):
        contrastive_loss(img, txt, jnp.float32(LOG_SCALE), bias, **args)


@pytest.mark.parametrize("impl", ["gather", "ring", "tiled_ring"])
def test_batch_not_divisible_by_devices(impl):
    img, txt = embeddings(n=36)
    with pytest.raises(ValueError, match="36 is not divisible by the 8 devices"):
        contrastive_loss(img, txt, jnp.float32(LOG_SCALE), impl=impl, mesh=make_mesh((2, 4, 1)))
