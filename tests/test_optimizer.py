"""The optimizer against float64 numpy references written out here, step by step.

Per-group AdamW (bias correction, decoupled weight decay) and warmup + decay schedules,
frozen groups, global-norm clipping, the L2-to-init gradient, the logit-scale cap, and the
config errors a user can hit. Every update runs under `jax.jit`.

    python -m pytest tests/test_optimizer.py
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from reasonclip_jax.errors import UserError
from reasonclip_jax.train.optimizer import add_l2_to_init, make_optimizer, param_path

B1, B2, EPS = 0.9, 0.999, 1e-8
RECIPE_GROUPS = [
    dict(name="vision", regex=r"^visual/(?!proj$)", lr=1e-5, wd=0.0),
    dict(name="text", regex=r"^text/(?!text_projection$)", lr=3e-5, wd=0.0),
    dict(name="logit", regex=r"^logit_(scale|bias)$", lr=1e-4, wd=0.0),
    dict(name="rest", regex=r".*", lr=1e-4, wd=0.05),
]
RECIPE_L2 = dict(beta=1e-5, regex=r"^(visual|text)/(?!proj$|text_projection$)")


def config(**optim) -> ml_collections.ConfigDict:
    base = dict(b1=B1, b2=B2, eps=EPS, grad_clip_norm=None, warmup_fraction=None,
                warmup_steps=0, decay="constant", end_lr_fraction=0.0, groups=RECIPE_GROUPS,
                l2_init=None, logit_scale_max=None)
    return ml_collections.ConfigDict({"optim": {**base, **optim}})


def clip_like_params(rng: np.random.Generator) -> dict:
    """A few params named as in model.CLIP, one per group of the recipe."""
    f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    return {
        "visual": {"conv1": {"kernel": f(2, 2, 3, 4)}, "proj": f(4, 3),
                   "transformer": {"layers": {"ln_1": {"scale": f(2, 4)}}}},
        "text": {"token_embedding": f(5, 4), "text_projection": f(4, 3)},
        "logit_scale": jnp.asarray(math.log(1 / 0.07), jnp.float32),
        "logit_bias": jnp.asarray(-1.0, jnp.float32),
    }


def run(opt, params, grad_fn, steps):
    """`steps` jitted updates with gradients `grad_fn(params, step)`; the params after each."""
    state = jax.jit(opt.tx.init)(params)
    update = jax.jit(opt.tx.update)
    history = []
    for t in range(steps):
        updates, state = update(grad_fn(params, t), state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history, state


def named(tree) -> dict:
    return {param_path(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ----------------------------------------------------------------------------------------
# float64 references.
# ----------------------------------------------------------------------------------------
def ref_lr(step, peak, warmup, total, decay, end_fraction):
    end = peak * end_fraction
    if step < warmup:
        return peak * step / warmup
    p = min(max((step - warmup) / (total - warmup), 0.0), 1.0)
    if decay == "cosine":
        return end + (peak - end) * (1 + math.cos(math.pi * p)) / 2
    if decay == "linear":
        return peak - (peak - end) * p
    return peak


def ref_adamw(p0, grads_at, lrs, wd, b1=B1, b2=B2, eps=EPS):
    """Loop-over-steps AdamW on one float64 array; `grads_at(p, t)` gives step t's gradient."""
    p = np.array(p0, np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, lr in enumerate(lrs, start=1):
        g = grads_at(p, t - 1)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = p - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * p)
    return p


# ----------------------------------------------------------------------------------------
# Tests.
# ----------------------------------------------------------------------------------------
def test_two_groups_match_numpy_adamw(rng):
    params = {"a": {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)},
              "b": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
    noise = [named({"a": {"w": rng.normal(size=(3, 4))}, "b": rng.normal(size=(5,))})
             for _ in range(5)]
    groups = [dict(name="a", regex=r"^a/", lr=1e-2, wd=0.0),
              dict(name="b", regex=r".*", lr=3e-2, wd=0.1)]
    total, warmup = 8, 2
    opt = make_optimizer(config(groups=groups, warmup_steps=warmup, decay="cosine",
                                end_lr_fraction=0.1), total)

    # A gradient that depends on the params, so the trajectories must agree step by step.
    def grads(p, t):
        return jax.tree_util.tree_map_with_path(
            lambda path, x: 0.5 * x + noise[t][param_path(path)].astype(np.float32), p)

    history, _ = run(opt, params, grads, steps=5)
    got = named(history[-1])
    for name, peak, wd in (("a/w", 1e-2, 0.0), ("b", 3e-2, 0.1)):
        lrs = [ref_lr(s, peak, warmup, total, "cosine", 0.1) for s in range(5)]
        want = ref_adamw(named(params)[name], lambda p, t, n=name: 0.5 * p + noise[t][n], lrs, wd)
        np.testing.assert_allclose(got[name], want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
def test_schedules(decay):
    total = 200
    opt = make_optimizer(config(warmup_fraction=0.1, warmup_steps=None, decay=decay,
                                end_lr_fraction=0.2), total)
    assert set(opt.learning_rates(0)) == {"vision", "text", "logit", "rest"}
    for step in (0, 1, 7, 19, 20, 21, 50, 110, 199, 200, 250):
        lrs = jax.jit(opt.learning_rates)(step)
        for g in RECIPE_GROUPS:
            want = ref_lr(step, g["lr"], 20, total, decay, 0.2)
            np.testing.assert_allclose(float(lrs[g["name"]]), want, rtol=1e-5, atol=1e-12)


def test_schedule_known_values():
    """A few values by hand: peak 1, warmup 10 of 110, cosine to 0."""
    groups = [dict(name="all", regex=".*", lr=1.0)]
    opt = make_optimizer(config(groups=groups, warmup_steps=10, decay="cosine"), 110)
    lr = lambda s: float(opt.learning_rates(s)["all"])
    assert lr(0) == 0.0
    assert lr(5) == pytest.approx(0.5)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.5, abs=1e-6)  # halfway through the cosine
    assert lr(110) == pytest.approx(0.0, abs=1e-7)


def test_frozen_group_never_changes_and_has_no_state(rng):
    params = clip_like_params(rng)
    groups = [dict(name="vision", regex=r"^visual/(?!proj$)", frozen=True), *RECIPE_GROUPS[1:]]
    opt = make_optimizer(config(groups=groups, grad_clip_norm=1.0, l2_init=RECIPE_L2,
                                logit_scale_max=50.0), 10)
    grads = lambda p, t: jax.tree.map(lambda x: jnp.full_like(x, 0.3 * (t + 1)), p)
    history, state = run(opt, params, grads, steps=3)
    frozen = {"visual/conv1/kernel", "visual/transformer/layers/ln_1/scale"}
    for name, value in named(history[-1]).items():
        if name in frozen:
            np.testing.assert_array_equal(value, named(params)[name])
        else:
            assert not np.array_equal(value, named(params)[name]), name
    # No moment and no theta_0 of a frozen param: every array of its shape is absent.
    frozen_shapes = {(2, 2, 3, 4), (2, 4)}
    shapes = [x.shape for x in jax.tree.leaves(state)]
    assert not frozen_shapes & set(shapes)
    assert opt.labels(params)["visual"]["conv1"]["kernel"] == "vision"
    assert "vision" not in opt.learning_rates(0)


def test_frozen_gradients_do_not_enter_the_clipping_norm(rng):
    params = clip_like_params(rng)
    groups = [dict(name="vision", regex=r"^visual/(?!proj$)", frozen=True), *RECIPE_GROUPS[1:]]
    opt = make_optimizer(config(groups=groups, grad_clip_norm=0.5, eps=1.0), 10)
    base = jax.tree.map(lambda x: jnp.full_like(x, 0.1), params)
    huge = dict(base, visual=jax.tree.map(lambda x: x * 1e6, base["visual"]))
    huge["visual"]["proj"] = base["visual"]["proj"]  # proj is trainable ("rest")
    u_base, _ = run(opt, params, lambda p, t: base, steps=1)
    u_huge, _ = run(opt, params, lambda p, t: huge, steps=1)
    jax.tree.map(np.testing.assert_array_equal, u_base, u_huge)


@pytest.mark.parametrize("scale", [0.1, 10.0])
def test_clipping_follows_the_global_norm_formula(rng, scale):
    params = {"a": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
    g = {"a": scale * rng.normal(size=(3, 4)), "b": scale * rng.normal(size=(5,))}
    max_norm, lr, eps = 1.0, 0.1, 1.0
    groups = [dict(name="all", regex=".*", lr=lr, wd=0.0)]
    opt = make_optimizer(config(groups=groups, grad_clip_norm=max_norm, eps=eps), 5)
    history, _ = run(opt, params, lambda p, t: jax.tree.map(jnp.float32, g), steps=1)

    norm = math.sqrt(sum(float(np.sum(x * x)) for x in g.values()))
    factor = min(1.0, max_norm / norm)
    assert (factor < 1.0) == (scale > 1.0)
    for name in ("a", "b"):
        gc = g[name] * factor
        # The first AdamW step: m_hat = g, v_hat = g^2.
        want = np.asarray(params[name], np.float64) - lr * gc / (np.abs(gc) + eps)
        np.testing.assert_allclose(np.asarray(history[0][name]), want, rtol=1e-5, atol=1e-7)


def explicit_penalty(params, params0, beta, selected):
    return beta * sum(jnp.sum((params[n] - params0[n]) ** 2) for n in selected)


def test_l2_init_gradient_is_the_penalty_gradient(rng):
    params0 = clip_like_params(rng)
    params = jax.tree.map(lambda x: x + 0.3 * jnp.asarray(rng.normal(size=x.shape), x.dtype),
                          params0)
    beta = 1e-2
    selected = {"visual/conv1/kernel", "visual/transformer/layers/ln_1/scale",
                "text/token_embedding"}  # the recipe regex: towers, no projections

    def flat_penalty(p):
        return explicit_penalty(named_jnp(p), named_jnp(params0), beta, selected)

    want = jax.grad(flat_penalty)(params)

    data_grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
    mask = lambda p: {n: n in selected for n in named(p)}
    tx = add_l2_to_init(beta, lambda p: unflatten_like(p, mask(p)))
    got, _ = jax.jit(tx.update)(data_grads, tx.init(params0), params)
    jax.tree.map(lambda g, d, w: np.testing.assert_allclose(g, d + w, rtol=1e-6, atol=1e-9),
                 got, data_grads, want)
    assert sum(np.abs(np.asarray(x)).sum() for x in jax.tree.leaves(want)) > 0

    # Through the whole optimizer: first AdamW step with only the penalty's gradient.
    lr, eps = 0.1, 1.0
    groups = [dict(name="all", regex=".*", lr=lr, wd=0.0)]
    opt = make_optimizer(config(groups=groups, eps=eps, l2_init=dict(RECIPE_L2, beta=beta)), 5)
    state = jax.jit(opt.tx.init)(params0)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(opt.tx.update)(zeros, state, params)
    jax.tree.map(lambda u, g: np.testing.assert_allclose(u, -lr * g / (np.abs(g) + eps),
                                                         rtol=1e-5, atol=1e-10), updates, want)
    np.testing.assert_allclose(opt.l2_init_penalty(params, state), flat_penalty(params),
                               rtol=1e-5)
    assert float(opt.l2_init_penalty(params0, state)) == 0.0


def named_jnp(tree) -> dict:
    return {param_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten_like(tree, flat: dict):
    paths = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    return jax.tree.unflatten(jax.tree.structure(tree), [flat[n] for n in paths])


def test_l2_init_state_holds_theta_0_of_the_selected_params_only(rng):
    params = clip_like_params(rng)
    opt = make_optimizer(config(l2_init=RECIPE_L2, grad_clip_norm=1.0, logit_scale_max=50.0), 10)
    state = opt.tx.init(params)
    l2_state = state[0]
    held = set(named(l2_state.init_params))
    assert held == {"visual/conv1/kernel", "visual/transformer/layers/ln_1/scale",
                    "text/token_embedding"}
    # Every array of the state is a scalar or has a param's shape.
    param_shapes = {x.shape for x in jax.tree.leaves(params)}
    assert all(x.shape == () or x.shape in param_shapes for x in jax.tree.leaves(state))


def test_logit_scale_cap(rng):
    params = clip_like_params(rng)
    lr, cap = 0.1, 50.0
    groups = [dict(name="all", regex=".*", lr=lr, wd=0.0)]
    capped = make_optimizer(config(groups=groups, logit_scale_max=cap), 5)
    free = make_optimizer(config(groups=groups), 5)
    push_up = lambda p, t: jax.tree.map(lambda x: -jnp.ones_like(x), p)  # update = +lr

    near = dict(params, logit_scale=jnp.float32(math.log(49.0)))
    (after,), _ = run(capped, near, push_up, steps=1)
    assert math.log(49.0) + lr > math.log(cap)  # the free update would exceed the cap
    assert math.exp(float(after["logit_scale"])) <= cap
    np.testing.assert_allclose(float(after["logit_scale"]), math.log(cap), rtol=1e-6)
    # Starting above the cap (e.g. a checkpoint with exp(logit_scale) = 100): pulled down to it.
    high = dict(params, logit_scale=jnp.float32(math.log(100.0)))
    (after,), _ = run(capped, high, push_up, steps=1)
    assert math.exp(float(after["logit_scale"])) <= cap
    np.testing.assert_allclose(float(after["logit_scale"]), math.log(cap), rtol=1e-6)

    # Below the cap: exactly the uncapped update, for logit_scale and every other param.
    low = dict(params, logit_scale=jnp.float32(math.log(10.0)))
    (a,), _ = run(capped, low, push_up, steps=1)
    (b,), _ = run(free, low, push_up, steps=1)
    jax.tree.map(np.testing.assert_array_equal, a, b)

    with pytest.raises(UserError, match="logit_scale"):
        capped.tx.init({"w": jnp.zeros(3)})


def test_recipe_labels(rng):
    labels = named(make_optimizer(config(), 10).labels(clip_like_params(rng)))
    assert labels == {
        "visual/conv1/kernel": "vision", "visual/proj": "rest",
        "visual/transformer/layers/ln_1/scale": "vision", "text/token_embedding": "text",
        "text/text_projection": "rest", "logit_scale": "logit", "logit_bias": "logit",
    }


def test_unmatched_param_raises_with_its_name(rng):
    groups = [dict(name="vision", regex=r"^visual/", lr=1e-5)]
    opt = make_optimizer(config(groups=groups), 10)
    params = {"visual": {"proj": jnp.zeros(3)}, "text": {"token_embedding": jnp.zeros(3)}}
    with pytest.raises(UserError, match="'text/token_embedding' matches no optim.groups"):
        opt.tx.init(params)
    with pytest.raises(UserError, match="'text/token_embedding' matches no optim.groups"):
        opt.labels(params)


@pytest.mark.parametrize(
    ("optim", "message"),
    [
        (dict(warmup_fraction=0.1, warmup_steps=5), "exactly one of"),
        (dict(grad_clip=1.0), "unknown optim keys"),
        (dict(decay="exponential"), "unknown optim.decay"),
        (dict(groups=[dict(name="a", regex=".*", lr=1.0, weight_decay=0.1)]), "unknown keys"),
        (dict(groups=[dict(name="a", regex=".*")]), "lacks"),
        (dict(groups=[dict(name="a", regex=".*", lr=1.0)] * 2), "unique"),
        (dict(l2_init=dict(beta=1e-5)), "regex"),
    ],
)
def test_config_errors(optim, message):
    with pytest.raises(UserError, match=message):
        make_optimizer(config(**optim), 10)
