"""Contrastive losses over the global batch: symmetric softmax InfoNCE and sigmoid (SigLIP).

Inputs are L2-normalised image and text embeddings `img`, `txt` of shape (N, D) (row i of
one is the positive of row i of the other) and a learnable log temperature `log_scale`:

    logits  = exp(log_scale) * img @ txt.T                  (N x N)
    softmax = 0.5 * (CE(logits, diag) + CE(logits.T, diag)), mean over the N rows
    sigmoid = -sum(log_sigmoid(labels * (logits + bias))) / N, labels +1 on the diagonal, -1 off it

Both are computed over the GLOBAL batch; every gradient is the exact gradient of that global
mean (no per-device scaling). Two distributed implementations, sharded over the batch axes
of the mesh (n = N / world rows per device):

- `gather`: all-gather the other modality; each device holds local rows x global columns,
  n x N logits (twice for softmax: images vs all texts, texts vs all images). Autodiff
  keeps them for the backward pass.
- `ring`: the text blocks travel around the batch devices with `ppermute`, one n x n logits
  block per step; softmax carries an online log-sum-exp for rows (images) at home and for
  columns (texts) with the travelling block, which comes home after `world` steps. The
  backward pass is a second ring (a `custom_vjp`) that recomputes every block from the
  embeddings and the saved log-sum-exps and sends each text block's gradient around with it.
  Nothing per step is stored, so per-device memory is O(n^2 + n*D) whatever the world size.
  (Differentiating the forward ring instead, even with `jax.checkpoint` per step, saves the
  travelling n x D block of every step: N x D per device, growing with the world size.)
- `tiled_ring`: the ring, with each n x n block visited in t x t tiles (Inf-CL,
  arXiv:2410.17243), forward and backward: the running statistics (row and column
  log-sum-exps for softmax, plain sums for sigmoid) and the gradients are merged tile by
  tile, so no n x n array exists and per-device memory is O(t^2 + n*D). The same exact
  loss and gradients as `ring` (only the float32 summation order differs); `ring` is this
  code with one tile per block.

Accuracy metrics (top-1 over the global batch, image->text and text->image) never build an
N x N matrix per device: the ring keeps a running argmax per row and per column, the gather
path reduces column maxima across devices.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

KINDS = ("softmax", "sigmoid")
IMPLS = ("gather", "ring", "tiled_ring")
NEGATIVES_GRADIENTS = ("global", "local")

Metrics = dict[str, jax.Array]


# ----------------------------------------------------------------------------------------
# Block math shared by every implementation.
# ----------------------------------------------------------------------------------------
def _similarity(rows: jax.Array, cols: jax.Array) -> jax.Array:
    """Float32 `rows @ cols.T`, the cosine similarities of normalised embeddings."""
    return rows.astype(jnp.float32) @ cols.astype(jnp.float32).T


def _logits(
    rows: jax.Array, cols: jax.Array, log_scale: jax.Array, bias: jax.Array | None
) -> jax.Array:
    """`exp(log_scale) * rows @ cols.T (+ bias)` in float32."""
    z = jnp.exp(log_scale).astype(jnp.float32) * _similarity(rows, cols)
    return z if bias is None else z + bias.astype(jnp.float32)


def _softmax_rows_loss(z: jax.Array, positive: jax.Array) -> jax.Array:
    """Summed cross-entropy of each row of `z` against the column index `positive[row]`."""
    picked = jnp.take_along_axis(z, positive[:, None], axis=1)[:, 0]
    return jnp.sum(jax.nn.logsumexp(z, axis=1) - picked)


def _sigmoid_rows_loss(z: jax.Array, positive: jax.Array) -> jax.Array:
    """Summed -log_sigmoid(label * z), label +1 at column `positive[row]` (-1: none), else -1."""
    labels = jnp.where(jnp.arange(z.shape[1])[None, :] == positive[:, None], 1.0, -1.0)
    return -jnp.sum(jax.nn.log_sigmoid(labels * z))


def _rows_loss(kind: str, z: jax.Array, positive: jax.Array) -> jax.Array:
    return (_softmax_rows_loss if kind == "softmax" else _sigmoid_rows_loss)(z, positive)


# ----------------------------------------------------------------------------------------
# Single device: the N x N formulas.
# ----------------------------------------------------------------------------------------
def _dense_loss_and_metrics(
    img: jax.Array, txt: jax.Array, log_scale: jax.Array, bias: jax.Array | None, kind: str
) -> tuple[jax.Array, Metrics]:
    """Loss and top-1 accuracies from the full N x N logits."""
    n = img.shape[0]
    target = jnp.arange(n)
    z = _logits(img, txt, log_scale, bias if kind == "sigmoid" else None)
    if kind == "softmax":
        loss = 0.5 * (_softmax_rows_loss(z, target) + _softmax_rows_loss(z.T, target)) / n
    else:
        loss = _sigmoid_rows_loss(z, target) / n
    z = lax.stop_gradient(z)
    metrics = {
        "acc_i2t": jnp.mean(jnp.argmax(z, axis=1) == target, dtype=jnp.float32),
        "acc_t2i": jnp.mean(jnp.argmax(z, axis=0) == target, dtype=jnp.float32),
    }
    return loss, metrics


def softmax_contrastive_loss_dense(
    img: jax.Array, txt: jax.Array, log_scale: jax.Array
) -> jax.Array:
    """Symmetric InfoNCE, 0.5 * (CE(i->t) + CE(t->i)), mean over the N pairs."""
    return _dense_loss_and_metrics(img, txt, log_scale, None, "softmax")[0]


def sigmoid_contrastive_loss_dense(
    img: jax.Array, txt: jax.Array, log_scale: jax.Array, bias: jax.Array
) -> jax.Array:
    """SigLIP loss, -sum(log_sigmoid(labels * logits)) / N over all N x N pairs."""
    return _dense_loss_and_metrics(img, txt, log_scale, bias, "sigmoid")[0]


# ----------------------------------------------------------------------------------------
# gather: local rows x global columns.
# ----------------------------------------------------------------------------------------
def _all_gather(x: jax.Array, axes: tuple[str, ...], first: jax.Array, local_gradient: bool
                ) -> jax.Array:
    """Every device's rows of `x`; with `local_gradient`, the other devices' copies are
    constants (the release's rule: gradients reach an embedding only from its own device)."""
    gathered = lax.all_gather(x, axes, tiled=True)
    if not local_gradient:
        return gathered
    return lax.dynamic_update_slice_in_dim(lax.stop_gradient(gathered), x, first, axis=0)


def _gather_body(
    img: jax.Array,
    txt: jax.Array,
    log_scale: jax.Array,
    bias: jax.Array,
    *,
    kind: str,
    axes: tuple[str, ...],
    total: int,
    local_gradient: bool,
) -> tuple[jax.Array, Metrics]:
    """shard_map body: this device's rows of the loss against all-gathered columns."""
    n = img.shape[0]
    first = lax.axis_index(axes) * n
    positive = first + jnp.arange(n)
    z = _logits(img, _all_gather(txt, axes, first, local_gradient), log_scale,
                bias if kind == "sigmoid" else None)  # local images x all texts
    local = _rows_loss(kind, z, positive)
    if kind == "softmax":  # t->i needs the local texts' rows too: local texts x all images
        z_t2i = _logits(txt, _all_gather(img, axes, first, local_gradient), log_scale, None)
        local = 0.5 * (local + _softmax_rows_loss(z_t2i, positive))

    z = lax.stop_gradient(z)
    hits_i2t = lax.psum(jnp.sum(jnp.argmax(z, axis=1) == positive), axes)
    # Best image of every text: the column maxima of all devices' rows, O(N) per device.
    col_max = jnp.max(z, axis=0)
    best = lax.pmax(col_max, axes)
    best_image = lax.pmin(jnp.where(col_max == best, first + jnp.argmax(z, axis=0), total), axes)
    hits_t2i = jnp.sum(best_image == jnp.arange(total))
    metrics = {
        "acc_i2t": hits_i2t.astype(jnp.float32) / total,
        "acc_t2i": hits_t2i.astype(jnp.float32) / total,
    }
    return lax.psum(local, axes) / total, metrics


def _gather_loss(
    img: jax.Array,
    txt: jax.Array,
    log_scale: jax.Array,
    bias: jax.Array,
    *,
    kind: str,
    mesh: Mesh,
    axes: tuple[str, ...],
    local_gradient: bool,
) -> tuple[jax.Array, Metrics]:
    """The `gather` implementation; autodiff transposes the all-gathers into reduce-scatters."""
    body = functools.partial(_gather_body, kind=kind, axes=axes, total=img.shape[0],
                             local_gradient=local_gradient)
    batch, replicated = P(axes), P()
    return jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(batch, batch, replicated, replicated),
        out_specs=(replicated, replicated),
    )(img, txt, log_scale, bias)


# ----------------------------------------------------------------------------------------
# ring: n x n blocks, text blocks (and their column statistics) passed around with ppermute.
# ----------------------------------------------------------------------------------------
class _Running(NamedTuple):
    """Statistics of a set of logit rows, merged one block of columns at a time."""

    max: jax.Array  # (n,) largest logit so far
    arg: jax.Array  # (n,) its global column index
    sumexp: jax.Array | None  # (n,) sum(exp(logit - max)) so far; softmax only


def _running_init(n: int, with_sumexp: bool, axes: tuple[str, ...]) -> _Running:
    stats = _Running(
        jnp.full((n,), -jnp.inf, jnp.float32),
        jnp.zeros((n,), jnp.int32),
        jnp.zeros((n,), jnp.float32) if with_sumexp else None,
    )
    return lax.pcast(stats, axes, to="varying")  # scan carries must be per-device values


def _running_merge(stats: _Running, z: jax.Array, first: jax.Array, axis: int) -> _Running:
    """Merge a logits block whose `axis` runs over the next entries, from global index `first`.

    `axis=1`: the stats are z's rows, the block adds columns; `axis=0`: the stats are z's
    columns, the block adds rows (reduced in place rather than over a transposed copy).
    """
    block_max = jnp.max(z, axis=axis)
    block_arg = jnp.argmax(z, axis=axis).astype(jnp.int32) + first
    new_max = jnp.maximum(stats.max, block_max)
    # Blocks arrive out of index order: break exact ties towards the lower index, as argmax.
    take = (block_max > stats.max) | ((block_max == stats.max) & (block_arg < stats.arg))
    sumexp = None
    if stats.sumexp is not None:
        shifted = z - jnp.expand_dims(new_max, axis)
        sumexp = stats.sumexp * jnp.exp(stats.max - new_max) + jnp.sum(jnp.exp(shifted), axis)
    return _Running(new_max, jnp.where(take, block_arg, stats.arg), sumexp)


def _ring_perm(world: int) -> list[tuple[int, int]]:
    """Each device sends its travelling block to the previous one; it is home after `world`."""
    return [(j, (j - 1) % world) for j in range(world)]


def _rows_at(x: jax.Array, start: jax.Array | int, size: int) -> jax.Array:
    return lax.dynamic_slice_in_dim(x, start, size, axis=0)


def _merge_at(stats: _Running, start: jax.Array | int, z: jax.Array, first: jax.Array,
              axis: int) -> _Running:
    """`_running_merge` of the entries [start, start + tile) of `stats`, written back."""
    part = jax.tree.map(lambda a: _rows_at(a, start, z.shape[1 - axis]), stats)
    part = _running_merge(part, z, first, axis)
    return jax.tree.map(lambda a, b: lax.dynamic_update_slice_in_dim(a, b, start, 0),
                        stats, part)


def _add_at(x: jax.Array, start: jax.Array | int, update: jax.Array) -> jax.Array:
    """`x[start : start + len(update)] += update`, in place inside a loop."""
    return lax.dynamic_update_slice_in_dim(x, _rows_at(x, start, len(update)) + update,
                                           start, 0)


def _over_tiles(tile_fn, n: int, tile: int, carry):
    """`carry = tile_fn(row_start, col_start, carry)` for every tile x tile tile of an n x n
    block, row tile by row tile; one tile per block calls it once, outside any loop."""
    per_side = n // tile
    if per_side == 1:
        return tile_fn(0, 0, carry)

    def body(k, carry):
        return tile_fn((k // per_side) * tile, (k % per_side) * tile, carry)

    return lax.fori_loop(0, per_side * per_side, body, carry)


def _ring_forward(
    img: jax.Array,
    txt: jax.Array,
    log_scale: jax.Array,
    bias: jax.Array,
    *,
    kind: str,
    axes: tuple[str, ...],
    world: int,
    total: int,
    tile: int,
) -> tuple[tuple[jax.Array, Metrics], tuple[jax.Array, ...]]:
    """shard_map body: loss, metrics, and the log-sum-exps the backward ring needs."""
    n = img.shape[0]
    me = lax.axis_index(axes)
    softmax = kind == "softmax"
    perm = _ring_perm(world)

    def step(carry, k):
        rows, cols, txt_c, loss = carry
        c = (me + k) % world  # global block index of the texts held at this step

        def tile_fn(r0, c0, acc):
            rows, cols, loss = acc
            z = _logits(_rows_at(img, r0, tile), _rows_at(txt_c, c0, tile), log_scale,
                        None if softmax else bias)
            rows = _merge_at(rows, r0, z, c * n + c0, axis=1)
            cols = _merge_at(cols, c0, z, me * n + r0, axis=0)
            if not softmax:  # only the home block has positives, on its diagonal
                positive = jnp.where(c == me, r0 - c0 + jnp.arange(tile), -1)
                loss = loss + _sigmoid_rows_loss(z, positive)
            return rows, cols, loss

        rows, cols, loss = _over_tiles(tile_fn, n, tile, (rows, cols, loss))
        cols, txt_c = lax.ppermute((cols, txt_c), axes, perm)
        return (rows, cols, txt_c, loss), None

    init = (
        _running_init(n, softmax, axes),
        _running_init(n, softmax, axes),
        txt,
        lax.pcast(jnp.zeros((), jnp.float32), axes, to="varying"),
    )
    (rows, cols, _, local), _ = lax.scan(step, init, jnp.arange(world))

    residuals: tuple[jax.Array, ...] = ()
    if softmax:
        row_lse = rows.max + jnp.log(rows.sumexp)
        col_lse = cols.max + jnp.log(cols.sumexp)
        positive_logit = jnp.exp(log_scale) * jnp.sum(
            img.astype(jnp.float32) * txt.astype(jnp.float32), axis=1
        )
        local = 0.5 * jnp.sum(row_lse + col_lse - 2.0 * positive_logit)
        residuals = (row_lse, col_lse)

    own = me * n + jnp.arange(n)
    metrics = {
        "acc_i2t": lax.psum(jnp.sum(rows.arg == own), axes).astype(jnp.float32) / total,
        "acc_t2i": lax.psum(jnp.sum(cols.arg == own), axes).astype(jnp.float32) / total,
    }
    return (lax.psum(local, axes) / total, metrics), residuals


def _ring_backward(
    img: jax.Array,
    txt: jax.Array,
    log_scale: jax.Array,
    bias: jax.Array,
    g: jax.Array,
    *lse: jax.Array,
    kind: str,
    axes: tuple[str, ...],
    world: int,
    total: int,
    tile: int,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """shard_map body: gradients of `g * loss`, recomputing each logits tile once more."""
    n = img.shape[0]
    me = lax.axis_index(axes)
    softmax = kind == "softmax"
    scale = jnp.exp(log_scale).astype(jnp.float32)
    img32 = img.astype(jnp.float32)
    coef = g.astype(jnp.float32) / total
    perm = _ring_perm(world)
    index = jnp.arange(tile)

    def step(carry, k):
        txt_c, col_lse_c, dtxt_c, dimg, dlog_scale, dbias = carry
        c = (me + k) % world

        def tile_fn(r0, c0, acc):
            dimg, dtxt_c, dlog_scale, dbias = acc
            img_t = _rows_at(img32, r0, tile)
            txt_t = _rows_at(txt_c, c0, tile).astype(jnp.float32)
            z = scale * _similarity(img_t, txt_t)
            positive = (c == me) & (r0 + index[:, None] == c0 + index[None, :])
            if softmax:  # d/dz of 0.5 * (row LSE + column LSE - 2 * positive logit)
                row_lse = _rows_at(lse[0], r0, tile)
                col_lse = _rows_at(col_lse_c, c0, tile)
                dz = (0.5 * coef) * (jnp.exp(z - row_lse[:, None])
                                     + jnp.exp(z - col_lse[None, :]) - 2.0 * positive)
            else:  # d/dz of -log_sigmoid(label * z)
                labels = jnp.where(positive, 1.0, -1.0)
                dz = -coef * labels * jax.nn.sigmoid(-labels * (z + bias))
            dimg = _add_at(dimg, r0, scale * (dz @ txt_t))
            dtxt_c = _add_at(dtxt_c, c0, scale * jnp.einsum("nm,nd->md", dz, img_t))
            dlog_scale = dlog_scale + jnp.sum(dz * z)  # dz/dlog_scale = exp(log_scale) * sim
            dbias = dbias + jnp.sum(dz)
            return dimg, dtxt_c, dlog_scale, dbias

        dimg, dtxt_c, dlog_scale, dbias = _over_tiles(
            tile_fn, n, tile, (dimg, dtxt_c, dlog_scale, dbias))
        txt_c, col_lse_c, dtxt_c = lax.ppermute((txt_c, col_lse_c, dtxt_c), axes, perm)
        return (txt_c, col_lse_c, dtxt_c, dimg, dlog_scale, dbias), None

    zeros = lambda shape: lax.pcast(jnp.zeros(shape, jnp.float32), axes, to="varying")
    init = (
        txt,
        lse[1] if softmax else None,
        zeros(txt.shape),
        zeros(img.shape),
        zeros(()),
        zeros(()),
    )
    (_, _, dtxt, dimg, dlog_scale, dbias), _ = lax.scan(step, init, jnp.arange(world))
    return dimg, dtxt, lax.psum(dlog_scale, axes), lax.psum(dbias, axes)


def _ring_loss(
    img: jax.Array,
    txt: jax.Array,
    log_scale: jax.Array,
    bias: jax.Array,
    *,
    kind: str,
    mesh: Mesh,
    axes: tuple[str, ...],
    world: int,
    tile: int,
) -> tuple[jax.Array, Metrics]:
    """`ring` and `tiled_ring`: a forward ring and, as its VJP, a backward ring; each
    n x n block is visited in `tile` x `tile` tiles (`tile == n`: the whole block)."""
    static = {"kind": kind, "axes": axes, "world": world, "total": img.shape[0], "tile": tile}
    batch, replicated = P(axes), P()
    residual_specs = (batch, batch) if kind == "softmax" else ()
    forward = jax.shard_map(
        functools.partial(_ring_forward, **static),
        mesh=mesh,
        in_specs=(batch, batch, replicated, replicated),
        out_specs=((replicated, replicated), residual_specs),
    )
    backward = jax.shard_map(
        functools.partial(_ring_backward, **static),
        mesh=mesh,
        in_specs=(batch, batch, replicated, replicated, replicated, *residual_specs),
        out_specs=(batch, batch, replicated, replicated),
    )

    @jax.custom_vjp
    def loss_fn(img, txt, log_scale, bias):
        return forward(img, txt, log_scale, bias)[0]

    def loss_fwd(img, txt, log_scale, bias):
        out, lse = forward(img, txt, log_scale, bias)
        return out, (img, txt, log_scale, bias, lse)

    def loss_bwd(res, cotangents):
        img, txt, log_scale, bias, lse = res
        g = cotangents[0]  # the metrics are not differentiable
        grads = backward(img, txt, log_scale, bias, g, *lse)
        return tuple(
            d.astype(x.dtype) for d, x in zip(grads, (img, txt, log_scale, bias), strict=True)
        )

    loss_fn.defvjp(loss_fwd, loss_bwd)
    return loss_fn(img, txt, log_scale, bias)


# ----------------------------------------------------------------------------------------
# Public entry point.
# ----------------------------------------------------------------------------------------
def _batch_world_size(mesh: Mesh | None, batch_axes: tuple[str, ...]) -> int:
    if mesh is None:
        return 1
    missing = [a for a in batch_axes if a not in mesh.axis_names]
    if missing:
        raise ValueError(
            f"batch axes {missing} are not axes of the mesh {tuple(mesh.axis_names)}; "
            "pass batch_axes naming the mesh axes the batch is sharded over"
        )
    return math.prod(mesh.shape[a] for a in batch_axes)


def contrastive_loss(
    img: jax.Array,
    txt: jax.Array,
    log_scale: jax.Array,
    bias: jax.Array | None = None,
    *,
    kind: str = "softmax",
    impl: str = "gather",
    mesh: Mesh | None = None,
    batch_axes: tuple[str, ...] = ("data", "fsdp"),
    negatives_gradient: str = "global",
    tile_size: int = 1024,
) -> tuple[jax.Array, Metrics]:
    """Contrastive loss over the global batch and its top-1 accuracies.

    Args:
      img, txt: (N, D) L2-normalised embeddings, row i of each is a positive pair; global
        arrays, typically sharded over `batch_axes` (call this inside `jax.jit`).
      log_scale: scalar; the logits are `exp(log_scale) * img @ txt.T`.
      bias: scalar logit bias, required by `kind="sigmoid"`; ignored by softmax, which a
        constant shift does not change (its gradient is then zero).
      kind: "softmax" (symmetric InfoNCE) or "sigmoid" (SigLIP).
      impl: "gather" (n x N logits per device), "ring" (n x n per device, any world size)
        or "tiled_ring" (tile_size x tile_size per device, any world size and batch).
      mesh: the device mesh; None, or batch axes of total size 1, computes on one device
        (`tiled_ring` there too in tiles, a ring of one device; the others the N x N way).
      batch_axes: mesh axes the batch dimension is sharded over; other axes replicate.
      negatives_gradient: "global": the exact gradient of the global loss. "local": the
        PyTorch release's rule (features all-gathered with the remote copies detached, DDP
        averaging): the same loss value, but an embedding gets its gradient as a negative
        only from its own device's rows, 1/world of the global one. Gather only; on one
        device the two are the same.
      tile_size: the tiles' side for `tiled_ring` (at most the local batch n, which it
        must divide); the other implementations ignore it.

    Returns:
      The scalar mean loss and {"acc_i2t", "acc_t2i"}: top-1 in-batch retrieval accuracy
      over the global batch (not differentiable).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown contrastive loss kind {kind!r}; expected one of {KINDS}")
    if impl not in IMPLS:
        raise ValueError(f"unknown contrastive loss impl {impl!r}; expected one of {IMPLS}")
    if img.ndim != 2 or img.shape != txt.shape:
        raise ValueError(
            f"img and txt must both be (N, D) with equal shapes, got {img.shape} and {txt.shape}"
        )
    if negatives_gradient not in NEGATIVES_GRADIENTS:
        raise ValueError(f"unknown negatives_gradient {negatives_gradient!r}; expected one of "
                         f"{NEGATIVES_GRADIENTS}")
    if negatives_gradient == "local" and impl != "gather":
        raise ValueError("negatives_gradient='local' (the release's rule) needs impl='gather'")
    if kind == "sigmoid" and bias is None:
        raise ValueError("the sigmoid loss needs bias= (SigLIP's learnable logit bias)")
    batch_axes = tuple(batch_axes)
    log_scale = jnp.asarray(log_scale)
    world = _batch_world_size(mesh, batch_axes)
    if world == 1 and impl != "tiled_ring":
        return _dense_loss_and_metrics(img, txt, log_scale, bias, kind)
    if img.shape[0] % world:
        raise ValueError(
            f"global batch {img.shape[0]} is not divisible by the {world} devices of the batch "
            f"axes {batch_axes}; use a global batch that is a multiple of {world}"
        )
    n = img.shape[0] // world
    tile = n
    if impl == "tiled_ring":
        if tile_size < 1:
            raise ValueError(f"tile_size must be a positive number of rows, got {tile_size}")
        tile = min(tile_size, n)
        if n % tile:
            raise ValueError(
                f"the local batch {n} (global {img.shape[0]} over {world} devices) is not a "
                f"multiple of tile_size {tile_size}; use a tile_size that divides it"
            )
    if mesh is None:  # one device: a ring of one, so the tiles still bound the memory
        devices = np.asarray(jax.devices()[:1]).reshape((1,) * len(batch_axes))
        mesh = Mesh(devices, batch_axes)
    bias = jnp.asarray(bias) if kind == "sigmoid" else jnp.zeros((), jnp.float32)
    if impl == "gather":
        return _gather_loss(img, txt, log_scale, bias, kind=kind, mesh=mesh, axes=batch_axes,
                            local_gradient=negatives_gradient == "local")
    return _ring_loss(img, txt, log_scale, bias, kind=kind, mesh=mesh, axes=batch_axes,
                      world=world, tile=tile)
