"""Gradient accumulation for contrastive training: GradCache and plain accumulation.

A contrastive loss couples every example of the batch (each one is every other one's
negative), so accumulating over K micro-batches is not free:

- `gradcache_value_and_grad` (GradCache, Gao et al. 2021) keeps the whole batch in one
  loss: (1) embed every micro-batch without keeping activations; (2) take the loss and its
  gradient w.r.t. the params (logit scale, bias, category heads) AND the embeddings over
  the full batch; (3) re-run each micro-batch's forward under `jax.vjp` and pull its slice
  of the embedding gradient back into the params. The result is the full-batch gradient
  (every negative kept) with the activation memory of one micro-batch, for one extra
  forward pass.
- `plain_accumulation_value_and_grad`: the loss and gradient of each micro-batch on its
  own, averaged. Each contrastive step then sees only N / K examples, so N / K - 1
  negatives per example, not N - 1 (what the ReasonCLIP release does with 2 steps).

Micro-batch k holds the examples k, k + K, k + 2K, ... (a strided slice: [N] is reshaped
to [N / K, K] and the axes swapped). The global batch is sharded over the mesh's batch axes
along dim 0, so a strided micro-batch stays spread over every device, where a contiguous
slice would sit on N / K's worth of devices only. Pass `sharding_constraint` (e.g.
`batch_sharding_constraint(mesh, ("data", "fsdp"))`) to pin every per-micro-batch tree
with a leading batch dimension to that sharding. N / K should be a multiple of the number
of batch devices.

`embed_fn` must be deterministic: GradCache runs it twice per micro-batch and the second
run must reproduce the first (pass any dropout key inside the batch). Per-example targets
the loss needs (e.g. the stage-2 category labels) are closed over by `loss_fn` from the
full batch: the embeddings it receives are in the batch's original example order.

    python -m pytest tests/test_grad_accum.py
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any
Metrics = dict[str, jax.Array]
LossAndMetrics = tuple[jax.Array, Metrics]
Constraint = Callable[[PyTree], PyTree]


def batch_sharding_constraint(mesh: Mesh, batch_axes: tuple[str, ...]) -> Constraint:
    """A `sharding_constraint` pinning dim 0 of every leaf to `batch_axes` of `mesh`."""
    sharding = NamedSharding(mesh, P(tuple(batch_axes)))
    return lambda tree: jax.lax.with_sharding_constraint(
        tree, jax.tree.map(lambda _: sharding, tree)
    )


def _identity(tree: PyTree) -> PyTree:
    return tree


def _batch_size(batch: PyTree, num_micro_batches: int) -> int:
    sizes = {x.shape[0] if x.ndim else None for x in jax.tree.leaves(batch)}
    if not sizes or None in sizes or len(sizes) != 1:
        shapes = jax.tree.map(lambda x: tuple(x.shape), batch)
        raise ValueError(f"every batch array needs the same leading batch dimension, got {shapes}")
    (n,) = sizes
    if num_micro_batches < 1 or n % num_micro_batches:
        raise ValueError(
            f"the batch of {n} examples does not split into {num_micro_batches} micro-batches; "
            "use a num_micro_batches that divides the (global) batch size"
        )
    return n


def split_micro_batches(tree: PyTree, num_micro_batches: int) -> PyTree:
    """[N, ...] -> [K, N / K, ...]; micro-batch k is examples k, k + K, k + 2K, ..."""
    k = num_micro_batches
    return jax.tree.map(
        lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), tree
    )


def merge_micro_batches(tree: PyTree) -> PyTree:
    """The inverse of `split_micro_batches`: [K, N / K, ...] -> [N, ...] in the original order."""
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:]), tree)


def _zeros_f32(tree: PyTree) -> PyTree:
    """Accumulators: float32 (or wider) zeros shaped like `tree`."""
    return jax.tree.map(
        lambda x: jnp.zeros(x.shape, jnp.promote_types(x.dtype, jnp.float32)), tree
    )


def _cast_like(tree: PyTree, like: PyTree) -> PyTree:
    """Back to `like`'s floating dtypes (means of integer values stay float)."""
    return jax.tree.map(
        lambda x, y: x.astype(y.dtype) if jnp.issubdtype(y.dtype, jnp.inexact) else x, tree, like
    )


def gradcache_value_and_grad(
    embed_fn: Callable[[PyTree, PyTree], dict[str, jax.Array]],
    loss_fn: Callable[[PyTree, dict[str, jax.Array]], LossAndMetrics],
    params: PyTree,
    batch: PyTree,
    num_micro_batches: int,
    sharding_constraint: Constraint | None = None,
) -> tuple[LossAndMetrics, PyTree]:
    """The full-batch loss, metrics and gradient of `loss_fn(params, embed_fn(params, batch))`.

    Args:
      embed_fn: `(params, micro_batch) -> {name: [n, ...] embeddings}`, per example.
      loss_fn: `(params, embeddings) -> (loss, metrics)` over the whole batch's embeddings
        (in the batch's example order); it may read params (logit scale, heads) directly.
      params: the parameters to differentiate.
      batch: a pytree of [N, ...] arrays.
      num_micro_batches: K, which must divide N; 1 is a plain `jax.value_and_grad`.
      sharding_constraint: applied to every micro-batch, its embeddings and their gradient,
        and the full batch's embeddings and their gradient (see `batch_sharding_constraint`).

    Returns:
      `((loss, metrics), grads)`, as `jax.value_and_grad(..., has_aux=True)` would.
    """
    _batch_size(batch, num_micro_batches)
    if num_micro_batches == 1:
        full = lambda p: loss_fn(p, embed_fn(p, batch))
        return jax.value_and_grad(full, has_aux=True)(params)
    pin = sharding_constraint or _identity
    micro = split_micro_batches(batch, num_micro_batches)

    # (1) Embeddings of every micro-batch, no activations kept (nothing is differentiated).
    def embed(mb: PyTree) -> dict[str, jax.Array]:
        return pin(jax.lax.stop_gradient(embed_fn(params, pin(mb))))

    embeds = pin(merge_micro_batches(jax.lax.map(embed, micro)))

    # (2) The loss over the full batch; direct param gradients and embedding gradients.
    (loss, metrics), (direct, embed_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True
    )(params, embeds)
    embed_grads = split_micro_batches(pin(embed_grads), num_micro_batches)

    # (3) Each micro-batch's forward again, its embedding gradient pulled back to params.
    def accumulate(total: PyTree, xs: tuple[PyTree, PyTree]) -> tuple[PyTree, None]:
        mb, g = xs
        _, pullback = jax.vjp(lambda p: pin(embed_fn(p, pin(mb))), params)
        (grads,) = pullback(pin(g))
        return jax.tree.map(lambda t, x: t + x.astype(t.dtype), total, grads), None

    accumulated, _ = jax.lax.scan(accumulate, _zeros_f32(params), (micro, embed_grads))
    grads = jax.tree.map(lambda d, a: (d + a).astype(d.dtype), direct, accumulated)
    return (loss, metrics), grads


def plain_accumulation_value_and_grad(
    embed_and_loss_fn: Callable[[PyTree, PyTree], LossAndMetrics],
    params: PyTree,
    batch: PyTree,
    num_micro_batches: int,
    sharding_constraint: Constraint | None = None,
) -> tuple[LossAndMetrics, PyTree]:
    """Loss, metrics and gradient averaged over K micro-batches, each taken on its own.

    A contrastive loss then sees N / K examples per step (N / K - 1 negatives per example),
    not the whole batch; use `gradcache_value_and_grad` to keep every negative.

    Args:
      embed_and_loss_fn: `(params, micro_batch) -> (loss, metrics)`.
      params: the parameters to differentiate.
      batch: a pytree of [N, ...] arrays.
      num_micro_batches: K, which must divide N; 1 is a plain `jax.value_and_grad`.
      sharding_constraint: applied to every micro-batch (see `batch_sharding_constraint`).

    Returns:
      `((mean loss, mean metrics), mean grads)` over the strided micro-batches.
    """
    _batch_size(batch, num_micro_batches)
    value_and_grad = jax.value_and_grad(embed_and_loss_fn, has_aux=True)
    if num_micro_batches == 1:
        return value_and_grad(params, batch)
    pin = sharding_constraint or _identity
    micro = split_micro_batches(batch, num_micro_batches)

    def accumulate(totals: PyTree, mb: PyTree) -> tuple[PyTree, None]:
        out = value_and_grad(params, pin(mb))
        return jax.tree.map(lambda t, x: t + x.astype(t.dtype), totals, out), None

    shapes = jax.eval_shape(value_and_grad, params, jax.tree.map(lambda x: x[0], micro))
    totals, _ = jax.lax.scan(accumulate, _zeros_f32(shapes), micro)
    mean = jax.tree.map(lambda t: t / num_micro_batches, totals)
    return _cast_like(mean, shapes)
