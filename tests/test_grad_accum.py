"""Gradient accumulation on the tiny CLIP against full-batch and per-micro-batch references.

GradCache must give the full-batch `jax.value_and_grad` (every negative kept) for K = 2 and
4, on one device and with the batch sharded over 8 devices, also with the stage-2 category
heads; plain accumulation must give the mean of the strided micro-batches' own losses and
gradients, computed here one by one.

    python -m pytest tests/test_grad_accum.py
"""

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import random_tokens  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from reasonclip_jax.models.clip import (  # noqa: E402
    CLIP,
    get_preset,
    init_params,
    l2_normalize,
    param_shapes,
)
from reasonclip_jax.parallel.grad_accum import (  # noqa: E402
    batch_sharding_constraint,
    gradcache_value_and_grad,
    merge_micro_batches,
    plain_accumulation_value_and_grad,
    split_micro_batches,
)
from reasonclip_jax.parallel.losses import contrastive_loss  # noqa: E402

N = 32  # N / K is a multiple of the 8 devices for K = 2 and 4
CONFIG = get_preset("tiny", image_size=32, context_length=16)
GAMMA = 0.5


def embed_fn_of(model: CLIP):
    def embed(module: CLIP, images, tokens):
        return {"image": l2_normalize(module.encode_image(images)),
                "text": l2_normalize(module.encode_text(tokens))}

    return lambda params, mb: model.apply({"params": params}, mb["images"], mb["tokens"],
                                          method=embed)


def contrastive_loss_fn(mesh=None):
    return lambda params, e: contrastive_loss(
        e["image"], e["text"], params["logit_scale"], kind="softmax", mesh=mesh,
        batch_axes=("data",),
    )


def stage2_loss_fn(model: CLIP, text_labels, image_multihot):
    """InfoNCE + gamma * (CE(text head) + BCE(image head)), labels of the full batch."""

    def loss_fn(params, e):
        loss, metrics = contrastive_loss_fn()(params, e)
        img_logits, txt_logits = model.apply(
            {"params": params}, e["image"], e["text"], method=CLIP.category_logits
        )
        ce = jnp.mean(jax.nn.logsumexp(txt_logits, axis=1)
                      - jnp.take_along_axis(txt_logits, text_labels[:, None], axis=1)[:, 0])
        bce = -jnp.mean(image_multihot * jax.nn.log_sigmoid(img_logits)
                        + (1 - image_multihot) * jax.nn.log_sigmoid(-img_logits))
        return loss + GAMMA * (ce + bce), {**metrics, "ce": ce, "bce": bce}

    return loss_fn


def make_batch(rng: np.random.Generator) -> dict[str, jax.Array]:
    images = rng.normal(size=(N, CONFIG.image_size, CONFIG.image_size, 3)).astype(np.float32)
    return {"images": jnp.asarray(images),
            "tokens": jnp.asarray(random_tokens(rng, N, CONFIG.context_length))}


def make_params(model: CLIP):
    params = jax.jit(lambda key: nn.unbox(init_params(model, key)))(jax.random.key(0))
    return dict(params, logit_scale=jnp.float32(np.log(20.0)))  # sharper than init


def with_category_heads(params, rng: np.random.Generator):
    """`params` plus the two Linear(embed_dim -> 5) heads of CLIP(num_category_heads=5)."""
    head = lambda: {"kernel": jnp.asarray(rng.normal(size=(CONFIG.embed_dim, 5)), jnp.float32),
                    "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
    return dict(params, image_category_head=head(), text_category_head=head())


def full_batch(embed_fn, loss_fn, params, batch):
    """The reference: one `jax.value_and_grad` through the whole batch."""
    return jax.jit(jax.value_and_grad(lambda p: loss_fn(p, embed_fn(p, batch)), has_aux=True))(
        params
    )


def assert_trees_close(got, want, rtol=1e-4):
    """Leafwise allclose; atol scales with the largest entry of the whole tree, since some
    gradients are zero up to rounding (attention key biases cancel in the softmax)."""
    atol = rtol * max(float(np.max(np.abs(np.asarray(w)))) for w in jax.tree.leaves(want))

    def close(path, g, w):
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64),
                                   rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))

    jax.tree_util.tree_map_with_path(close, got, want)


@pytest.fixture(scope="module")
def setup():
    model = CLIP(CONFIG)
    params = make_params(model)
    batch = make_batch(np.random.default_rng(0))
    embed_fn = embed_fn_of(model)
    want = full_batch(embed_fn, contrastive_loss_fn(), params, batch)
    return model, params, batch, embed_fn, want


def test_micro_batches_are_strided_and_merge_restores_the_order():
    x = np.arange(24 * 2).reshape(24, 2)
    micro = np.asarray(split_micro_batches(jnp.asarray(x), 4))
    assert micro.shape == (4, 6, 2)
    for k in range(4):
        np.testing.assert_array_equal(micro[k], x[k::4])
    np.testing.assert_array_equal(merge_micro_batches(jnp.asarray(micro)), x)


@pytest.mark.parametrize("k", [2, 4])
def test_gradcache_equals_full_batch(setup, k):
    _, params, batch, embed_fn, want = setup
    fn = jax.jit(lambda p, b: gradcache_value_and_grad(embed_fn, contrastive_loss_fn(), p, b, k))
    got = fn(params, batch)
    assert_trees_close(got, want)
    assert float(jnp.max(jnp.abs(want[1]["visual"]["conv1"]["kernel"]))) > 0


@pytest.mark.parametrize("k", [2, 4])
def test_gradcache_sharded_equals_full_batch(setup, k):
    _, params, batch, embed_fn, want = setup
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
    params = jax.device_put(params, NamedSharding(mesh, P()))
    pin = batch_sharding_constraint(mesh, ("data",))
    fn = jax.jit(lambda p, b: gradcache_value_and_grad(
        embed_fn, contrastive_loss_fn(mesh), p, b, k, sharding_constraint=pin
    ))
    got = fn(params, batch)
    assert_trees_close(got, want)

    # A strided micro-batch of a batch sharded over dim 0 stays on all 8 devices.
    micro = jax.jit(lambda b: pin(split_micro_batches(b, k)["images"][0]))(batch)
    assert len(micro.sharding.device_set) == 8
    assert micro.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), micro.ndim)


def test_gradcache_with_category_heads(setup, rng):
    model = CLIP(CONFIG, num_category_heads=5)
    _, params, batch, _, _ = setup
    params = with_category_heads(params, rng)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, param_shapes(model))
    text_labels = jnp.asarray(rng.integers(0, 5, N), jnp.int32)
    multihot = np.zeros((N, 5), np.float32)
    for i in range(N):
        multihot[i, rng.choice(5, 3, replace=False)] = 1.0
    loss_fn = stage2_loss_fn(model, text_labels, jnp.asarray(multihot))
    embed_fn = embed_fn_of(model)
    want = full_batch(embed_fn, loss_fn, params, batch)
    got = jax.jit(lambda p, b: gradcache_value_and_grad(embed_fn, loss_fn, p, b, 4))(
        params, batch
    )
    assert_trees_close(got, want)
    # The heads get their gradient from the loss directly.
    assert float(jnp.max(jnp.abs(want[1]["text_category_head"]["kernel"]))) > 0


def test_plain_accumulation_is_the_mean_over_strided_micro_batches(setup):
    _, params, batch, embed_fn, full = setup
    k = 4
    loss_fn = contrastive_loss_fn()
    embed_and_loss = lambda p, mb: loss_fn(p, embed_fn(p, mb))
    step = jax.jit(jax.value_and_grad(embed_and_loss, has_aux=True))
    parts = [step(params, jax.tree.map(lambda x, i=i: x[i::k], batch)) for i in range(k)]
    want = jax.tree.map(lambda *xs: sum(xs) / k, *parts)

    got = jax.jit(lambda p, b: plain_accumulation_value_and_grad(embed_and_loss, p, b, k))(
        params, batch
    )
    assert_trees_close(got, want)
    # Fewer negatives per step: not the full-batch loss.
    assert abs(float(got[0][0]) - float(full[0][0])) > 1e-3


def test_one_micro_batch_is_plain_value_and_grad(setup):
    """K = 1 traces to exactly the program of one `jax.value_and_grad` (no compile needed)."""
    _, params, batch, embed_fn, _ = setup
    loss_fn = contrastive_loss_fn()
    embed_and_loss = lambda p, mb: loss_fn(p, embed_fn(p, mb))
    plain = lambda p, b: jax.value_and_grad(lambda q: embed_and_loss(q, b), has_aux=True)(p)
    want = str(jax.make_jaxpr(plain)(params, batch))
    for fn in (lambda p, b: gradcache_value_and_grad(embed_fn, loss_fn, p, b, 1),
               lambda p, b: plain_accumulation_value_and_grad(embed_and_loss, p, b, 1)):
        assert str(jax.make_jaxpr(fn)(params, batch)) == want


def test_indivisible_batch_raises(setup):
    _, params, batch, embed_fn, _ = setup
    with pytest.raises(ValueError, match="does not split into 5 micro-batches"):
        gradcache_value_and_grad(embed_fn, contrastive_loss_fn(), params, batch, 5)
    with pytest.raises(ValueError, match="does not split into 3 micro-batches"):
        plain_accumulation_value_and_grad(lambda p, b: (0.0, {}), params, batch, 3)
    with pytest.raises(ValueError, match="same leading batch dimension"):
        gradcache_value_and_grad(embed_fn, contrastive_loss_fn(), params,
                                 dict(batch, tokens=batch["tokens"][:8]), 2)
