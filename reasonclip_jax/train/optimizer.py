"""The optimizer: per-group AdamW with warmup + decay, clipping, L2-to-init, logit-scale cap.

Parameters are assigned to groups by regex over their '/'-joined paths (first match wins,
as in big_vision), e.g. `visual/transformer/layers/attn/query/kernel`, `visual/proj`,
`text/text_projection`, `logit_scale`. One `optax` chain, applied in this order:

1. `l2_init`: adds `2 * beta * (theta - theta_0)` to the gradient of the selected params,
   the exact gradient of the penalty `beta * sum ||theta - theta_0||^2`. `theta_0` is
   captured by `tx.init(params)`, so a run initialised from a checkpoint pulls towards it.
2. Frozen groups' gradients are zeroed (they then take no part in the clipping norm).
3. Global-norm clipping over the whole (trainable) gradient.
4. `optax.multi_transform`: each group its own `optax.adamw` with its own schedule;
   frozen groups `optax.set_to_zero` (no update, no moments).
5. The logit-scale cap: the update of `logit_scale` is changed so that the new value is
   `min(old + update, log(logit_scale_max))`.

The transformation needs `params` in `tx.update(grads, state, params)`, works under
`jax.jit` on unboxed (plain dict) params, and its state holds only scalars and arrays of
a param's shape (Adam moments, theta_0), so shardings follow the params'.

Config (`config.optim`; every key the trainer's configs use):

    b1, b2, eps          AdamW moments' decay rates and epsilon (e.g. 0.9, 0.999, 1e-8).
    grad_clip_norm       max global gradient norm; 0 or None (or absent): no clipping.
    warmup_fraction      warmup length as a fraction of total_steps (e.g. 0.1), or
    warmup_steps         the warmup length in steps; set exactly one of the two.
    decay                after warmup: 'cosine', 'linear' (to end_lr_fraction * lr at
                         total_steps) or 'constant'.
    end_lr_fraction      final lr as a fraction of each group's peak lr (absent: 0.0).
    groups               list of dicts, first regex match (re.search) wins, every param must
                         match one: name (str), regex (str), lr (peak learning rate),
                         wd (decoupled weight decay, multiplied by the lr as in
                         optax.adamw; absent: 0.0), frozen (bool, absent: False; a frozen
                         group needs no lr and gets no update and no optimizer state).
    l2_init              dict(beta=..., regex=...): the L2-to-init penalty on params that
                         match `regex` and are not frozen; beta 0 or None (or l2_init None
                         or absent): off.
    logit_scale_max      cap on exp(logit_scale) after every update; None (or absent): off.

Learning rate of a group with peak `lr`, `w` warmup steps and `T` total steps:

    lr(s) = lr * s / w                                          for s < w
    lr(s) = end + (lr - end) * 0.5 * (1 + cos(pi * p))           'cosine'
    lr(s) = lr + (end - lr) * p                                  'linear'
    lr(s) = lr                                                   'constant'
    with p = clip((s - w) / (T - w), 0, 1) and end = lr * end_lr_fraction.

The stage-1 recipe (reasonclip_recipe.md):

    optim = dict(b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=1.0, warmup_fraction=0.1,
                 decay='cosine', end_lr_fraction=0.0, logit_scale_max=50.0,
                 l2_init=dict(beta=1e-5, regex=r'^(visual|text)/(?!proj$|text_projection$)'),
                 groups=[dict(name='vision', regex=r'^visual/(?!proj$)', lr=1e-5, wd=0.0),
                         dict(name='text', regex=r'^text/(?!text_projection$)', lr=3e-5, wd=0.0),
                         dict(name='logit', regex=r'^logit_(scale|bias)$', lr=1e-4, wd=0.0),
                         dict(name='rest', regex=r'.*', lr=1e-4, wd=0.05)])

    python -m pytest tests/test_optimizer.py
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reasonclip_jax.errors import UserError

PyTree = Any
DECAYS = ("cosine", "linear", "constant")
LOGIT_SCALE_PATH = "logit_scale"

_OPTIM_KEYS = {
    "b1", "b2", "eps", "grad_clip_norm", "warmup_fraction", "warmup_steps", "decay",
    "end_lr_fraction", "groups", "l2_init", "logit_scale_max",
}
_REQUIRED_KEYS = ("b1", "b2", "eps", "decay", "groups")
_GROUP_KEYS = {"name", "regex", "lr", "wd", "frozen"}


# ----------------------------------------------------------------------------------------
# Parameter paths and groups.
# ----------------------------------------------------------------------------------------
def param_path(path: tuple[Any, ...]) -> str:
    """The '/'-joined name of a pytree key path, e.g. `visual/transformer/ln_1/scale`."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def tree_map_with_names(fn: Callable[[str, Any], Any], tree: PyTree) -> PyTree:
    """`fn(name, leaf)` over every leaf, `name` its '/'-joined path."""
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(param_path(p), x), tree)


@dataclasses.dataclass(frozen=True)
class Group:
    """One parameter group: the params whose path `regex` matches first."""

    name: str
    regex: str
    lr: float
    wd: float
    frozen: bool


def _parse_groups(raw: Any) -> tuple[Group, ...]:
    if not raw:
        raise UserError("optim.groups is empty; give at least one group, e.g. regex '.*'")
    groups = []
    for i, g in enumerate(raw):
        g = _as_dict(g)
        unknown = set(g) - _GROUP_KEYS
        if unknown:
            raise UserError(f"optim.groups[{i}] has unknown keys {sorted(unknown)}; "
                            f"known: {sorted(_GROUP_KEYS)}")
        frozen = bool(g.get("frozen", False))
        missing = [k for k in ("name", "regex") + (() if frozen else ("lr",)) if g.get(k) is None]
        if missing:
            raise UserError(f"optim.groups[{i}] lacks {missing}")
        try:
            re.compile(g["regex"])
        except re.error as e:
            raise UserError(
                f"optim.groups[{i}] ('{g['name']}'): bad regex {g['regex']!r}: {e}"
            ) from None
        groups.append(Group(
            name=str(g["name"]), regex=str(g["regex"]), lr=float(g.get("lr") or 0.0),
            wd=float(g.get("wd") or 0.0), frozen=frozen,
        ))
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise UserError(f"optim.groups names must be unique, got {names}")
    return tuple(groups)


def param_labels(params: PyTree, groups: tuple[Group, ...]) -> PyTree:
    """Each param's group name: the first group whose regex `re.search`es its path."""

    def label(name: str, _: Any) -> str:
        for g in groups:
            if re.search(g.regex, name):
                return g.name
        raise UserError(
            f"parameter '{name}' matches no optim.groups regex {[g.regex for g in groups]}; "
            "add a group for it (e.g. a last group with regex '.*')"
        )

    return tree_map_with_names(label, params)


# ----------------------------------------------------------------------------------------
# Schedules.
# ----------------------------------------------------------------------------------------
def warmup_decay_schedule(
    peak: float, warmup_steps: int, total_steps: int, decay: str, end_fraction: float
) -> optax.Schedule:
    """Linear warmup from 0 to `peak` over `warmup_steps`, then `decay` to the end value."""
    if decay not in DECAYS:
        raise UserError(f"unknown optim.decay {decay!r}; choose one of {DECAYS}")
    end = peak * end_fraction
    decay_steps = max(total_steps - warmup_steps, 1)
    after = {
        "cosine": optax.cosine_decay_schedule(peak, decay_steps, alpha=end_fraction),
        "linear": optax.linear_schedule(peak, end, decay_steps),
        "constant": optax.constant_schedule(peak),
    }[decay]
    if not warmup_steps:
        return after
    warmup = optax.linear_schedule(0.0, peak, warmup_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


# ----------------------------------------------------------------------------------------
# Transformations.
# ----------------------------------------------------------------------------------------
class L2InitState(NamedTuple):
    """theta_0 of the penalised params; `optax.MaskedNode()` in place of the others."""

    init_params: PyTree


def add_l2_to_init(
    beta: float, mask_fn: Callable[[PyTree], PyTree]
) -> optax.GradientTransformation:
    """Adds `2 * beta * (theta - theta_0)` to the gradient of the params `mask_fn` selects.

    `theta_0` is a copy of the params given to `init`.
    """

    def init_fn(params: PyTree) -> L2InitState:
        mask = mask_fn(params)
        return L2InitState(jax.tree.map(
            lambda m, p: jnp.array(p, copy=True) if m else optax.MaskedNode(), mask, params
        ))

    def update_fn(updates: PyTree, state: L2InitState, params: PyTree = None):
        if params is None:
            raise ValueError("the l2_init transformation needs params: tx.update(g, s, params)")

        def add(g: jax.Array, p: jax.Array, p0: Any) -> jax.Array:
            if isinstance(p0, optax.MaskedNode):
                return g
            return g + (2.0 * beta * (p - p0)).astype(g.dtype)

        return jax.tree.map(add, updates, params, state.init_params), state

    return optax.GradientTransformation(init_fn, update_fn)


def _floor_to_dtype(x: float, dtype: Any) -> np.ndarray:
    """The largest value of `dtype` that is <= x (so a cap holds after rounding too)."""
    c = np.asarray(x).astype(dtype)
    return np.nextafter(c, np.asarray(-np.inf, dtype)) if float(c) > x else c


def cap_logit_scale(max_scale: float) -> optax.GradientTransformation:
    """Changes the `logit_scale` update so that `exp(logit_scale + update) <= max_scale`.

    The update is left exactly as it is where the new value stays below the cap.
    """
    cap = math.log(max_scale)

    def init_fn(params: PyTree) -> optax.EmptyState:
        names = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        if LOGIT_SCALE_PATH not in names:
            raise UserError(f"optim.logit_scale_max is set but the model has no "
                            f"'{LOGIT_SCALE_PATH}' parameter; set it to None")
        return optax.EmptyState()

    def update_fn(updates: PyTree, state: optax.EmptyState, params: PyTree = None):
        if params is None:
            raise ValueError("the logit-scale cap needs params: tx.update(g, s, params)")

        def capped(name: str, u: jax.Array, p: jax.Array) -> jax.Array:
            if name != LOGIT_SCALE_PATH:
                return u
            c = _floor_to_dtype(cap, p.dtype)
            return jnp.where(p + u > c, c - p, u).astype(u.dtype)

        capped_updates = jax.tree_util.tree_map_with_path(
            lambda path, u, p: capped(param_path(path), u, p), updates, params
        )
        return capped_updates, state

    return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------------------
# The optimizer.
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Optimizer:
    """`tx` (call `tx.update(grads, state, params)`), its groups and their schedules."""

    tx: optax.GradientTransformationExtraArgs
    groups: tuple[Group, ...]
    schedules: Mapping[str, optax.Schedule]
    l2_init_beta: float = 0.0

    def labels(self, params: PyTree) -> PyTree:
        """Each param's group name (a pytree of str shaped like `params`)."""
        return param_labels(params, self.groups)

    def learning_rates(self, step: jax.Array | int) -> dict[str, jax.Array]:
        """The learning rate of every trainable group at `step` (for metrics)."""
        return {name: sched(step) for name, sched in self.schedules.items()}

    def l2_init_penalty(self, params: PyTree, opt_state: PyTree) -> jax.Array:
        """`beta * sum ||theta - theta_0||^2` over the penalised params (0 when off), for logs.

        theta_0 is read from the `L2InitState` inside `opt_state`.
        """
        states = [
            s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, L2InitState))
            if isinstance(s, L2InitState)
        ]
        if not self.l2_init_beta or not states:
            return jnp.zeros((), jnp.float32)

        def squared_distance(p: jax.Array, p0: Any) -> jax.Array:
            if isinstance(p0, optax.MaskedNode):
                return jnp.zeros((), jnp.float32)
            d = p.astype(jnp.float32) - p0.astype(jnp.float32)
            return jnp.sum(d * d)

        distances = jax.tree.map(squared_distance, params, states[0].init_params)
        return self.l2_init_beta * sum(jax.tree.leaves(distances), jnp.zeros((), jnp.float32))


def _as_dict(x: Any) -> dict[str, Any]:
    return dict(x.to_dict() if hasattr(x, "to_dict") else x)


def _warmup_steps(optim: dict[str, Any], total_steps: int) -> int:
    steps, fraction = optim.get("warmup_steps"), optim.get("warmup_fraction")
    if (steps is None) == (fraction is None):
        raise UserError("set exactly one of optim.warmup_steps and optim.warmup_fraction "
                        f"(got {steps!r} and {fraction!r}); the other must be None")
    if steps is None:
        if not 0.0 <= fraction <= 1.0:
            raise UserError(f"optim.warmup_fraction must be in [0, 1], got {fraction}")
        return int(round(fraction * total_steps))
    if steps < 0:
        raise UserError(f"optim.warmup_steps must be >= 0, got {steps}")
    return int(steps)


def make_optimizer(config: Any, total_steps: int) -> Optimizer:
    """The optimizer of `config.optim` (see the module docstring) for a run of `total_steps`."""
    if "optim" not in config:
        raise UserError("the config has no 'optim' section")
    optim = _as_dict(config.optim)
    unknown = set(optim) - _OPTIM_KEYS
    if unknown:
        raise UserError(f"unknown optim keys {sorted(unknown)}; known: {sorted(_OPTIM_KEYS)}")
    missing = [k for k in _REQUIRED_KEYS if optim.get(k) is None]
    if missing:
        raise UserError(f"config.optim lacks {missing}")
    if total_steps < 1:
        raise UserError(f"total_steps must be >= 1, got {total_steps}")

    groups = _parse_groups(optim["groups"])
    warmup = _warmup_steps(optim, total_steps)
    end_fraction = float(optim.get("end_lr_fraction") or 0.0)
    schedules = {
        g.name: warmup_decay_schedule(g.lr, warmup, total_steps, optim["decay"], end_fraction)
        for g in groups if not g.frozen
    }
    l2 = optim.get("l2_init")
    l2 = _as_dict(l2) if l2 is not None else {}
    beta = float(l2.get("beta") or 0.0)
    frozen_names = {g.name for g in groups if g.frozen}
    labels = lambda params: param_labels(params, groups)
    is_frozen = lambda params: jax.tree.map(lambda label: label in frozen_names, labels(params))

    chain: list[optax.GradientTransformation] = []
    if beta:
        if not l2.get("regex"):
            raise UserError("optim.l2_init needs a regex of the params to pull towards init")
        regex = str(l2["regex"])

        def l2_mask(params: PyTree) -> PyTree:
            frozen = is_frozen(params)
            selected = tree_map_with_names(lambda name, _: bool(re.search(regex, name)), params)
            return jax.tree.map(lambda s, f: s and not f, selected, frozen)

        chain.append(add_l2_to_init(beta, l2_mask))
    if any(g.frozen for g in groups):
        chain.append(optax.masked(optax.set_to_zero(), is_frozen))
    if optim.get("grad_clip_norm"):
        chain.append(optax.clip_by_global_norm(float(optim["grad_clip_norm"])))

    b1, b2, eps = float(optim["b1"]), float(optim["b2"]), float(optim["eps"])
    transforms = {
        g.name: optax.set_to_zero() if g.frozen else
        optax.adamw(schedules[g.name], b1=b1, b2=b2, eps=eps, weight_decay=g.wd)
        for g in groups
    }
    chain.append(optax.multi_transform(transforms, labels))
    if optim.get("logit_scale_max") is not None:
        chain.append(cap_logit_scale(float(optim["logit_scale_max"])))
    return Optimizer(optax.chain(*chain), groups, schedules, beta)
