"""The analytic memory model of one update step: what takes each device's memory, and why.

Bytes per device, for a config on `num_devices` devices of a platform:

    peak = params + optimizer state + inputs + max(backward pass, optimizer update)

- params, optimizer state: every leaf's shard under the trainer's sharding rules (fsdp shards
  them, data replicates them); the state mirrors the params (Adam's two moments, the
  L2-to-init anchor).
- inputs: the per-device slice of the global batch (uint8 images, int32 tokens, labels).
- backward pass, at the height of its two phases: the loss's (the loss's temporaries beside
  every saved activation) and the towers' (the gradients and the layer being recomputed
  beside the saved activations); under GradCache the loss is taken on the micro-batches'
  embeddings before the towers' backward pass, which holds one micro-batch's activations:
  - gradients: float32, the params' per-device size; GradCache holds two on CPUs and GPUs
    (the running sum over micro-batches and the current micro-batch's), one on TPUs (XLA
    adds the micro-batch's into the sum; the live ranges at its peak hold one);
  - activations: the residuals autodiff keeps for the backward pass under the remat policy,
    counted exactly by JAX (`jax.vjp`'s saved values of each tower, under `jax.eval_shape`),
    per example, times the examples of one micro-batch; on TPUs under GradCache without the
    attention weights, which XLA recomputes inside the micro-batch loop;
  - recomputation: with remat, a layer's backward pass recomputes what was not saved. On
    TPUs and GPUs one block (attention or the MLP) of the larger tower at a time, each
    just before its own backward pass, and on TPUs without the attention weights (XLA
    recomputes them inside attention's fused backward). On CPUs the whole layer at once,
    and, under every policy, one layer's MLP activation per tower (the MLP recomputes it
    from its input, `models/layers.py`, and XLA's CPU backend materialises what autodiff
    of the activation keeps);
  - the loss: gather keeps n x N logits per text field (n local rows, N global), the rings
    a few n x n blocks, the tiled ring a few tile^2 tiles, all in float32, plus their n x D
    embeddings; the constants are XLA's own figures for the losses alone
    (`bench/bench_loss_memory.py`);
  - GradCache: the embeddings of every micro-batch and their gradients.
- optimizer update: the gradients and two more float32 trees of the params' size (the
  clipped gradient and Adam's update, before they are written into the donated buffers).

On TPUs the float32 trees of the params' shape that the step holds as temporaries (the
gradients and the update's trees) are counted at their tiled size: XLA's TPU program keeps
them row-major, the two minor dimensions in tiles of 8 x 128, so the attention kernels
[..., heads, head_dim] of 12 x 64 take 16 x 128 (2.7x: f32[12,768,12,64] is 27 MiB as a
donated parameter, laid out without padding, and 72 MiB as the optimizer's temporary, in
the buffer assignment of ViT-B-32's step compiled for v5e). ViT-B-32's float32 tree is
577 MiB, 764 MiB tiled.

Platforms count bytes as their compilers store them: XLA's CPU backend has no bfloat16
arithmetic and computes (and keeps) bfloat16 values in float32; TPUs and GPUs keep them in
bfloat16. `reasonclip_jax/scaling/compiled_memory.py` gives the compiled figure this model
explains, on TPUs XLA's own peak (`python -m reasonclip_jax.plan` prints both). On several
slices (`mesh.dcn`) the mesh is the one the trainer builds over all of them
(`sharding.job_mesh_shape`).

    python -c "from configs.sweeps import tiny; from reasonclip_jax.scaling import \
memory_model; print(memory_model.estimate(tiny.get_config('/tmp/s').base, 1, 'cpu'))"
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reasonclip_jax.models.clip import CLIP, ModelConfig, init_params
from reasonclip_jax.models.layers import ACTIVATIONS, REMAT_POLICIES, Attention, Mlp
from reasonclip_jax.parallel import sharding
from reasonclip_jax.train import optimizer, stages, trainer

# Loss memory (float32 elements), fitted to XLA's compiled figures of the loss alone
# (bench/bench_loss_memory.py, 8 devices, N up to 65,536): gather softmax keeps ~5 n x N
# arrays (logits both ways, their softmax, the gradient), gather sigmoid ~3; the rings ~2.5
# blocks of the block side; every implementation ~3 n x D arrays.
_GATHER_LOGIT_ARRAYS = {"softmax": 5.0, "sigmoid": 3.0}
_RING_BLOCKS = 2.5
_EMBEDDING_ARRAYS = 3.0
# Optimizer update: the gradients plus the clipped gradient and Adam's update.
_UPDATE_TREES = 3.0
_F32 = 4


@dataclasses.dataclass(frozen=True)
class Breakdown:
    """Bytes per device of each part of an update step (see the module docstring)."""

    params: float
    optimizer_state: float
    inputs: float
    gradients: float
    activations: float
    recomputation: float
    loss: float
    gradcache_embeddings: float
    update: float

    @property
    def backward(self) -> float:
        """The backward pass at its height, in one of two phases: the loss's (its
        temporaries beside every saved activation) or the towers' (the gradients and the
        layer being recomputed beside the saved activations). GradCache takes the loss on
        the micro-batches' embeddings before any tower's backward pass."""
        towers = self.gradients + self.recomputation
        if self.gradcache_embeddings:
            return self.gradcache_embeddings + max(self.loss, towers + self.activations)
        return self.activations + max(self.loss, towers)

    @property
    def resident(self) -> float:
        """What lives through the whole step: params, optimizer state and the batch."""
        return self.params + self.optimizer_state + self.inputs

    @property
    def peak(self) -> float:
        return self.resident + max(self.backward, self.update)

    def as_dict(self) -> dict[str, float]:
        return dict(dataclasses.asdict(self), backward=self.backward, peak=self.peak)


def _stored_itemsize(dtype: Any, platform: str) -> int:
    """Bytes per element as the platform's compiler keeps it (CPU: floats in float32)."""
    dtype = np.dtype(dtype)
    if platform == "cpu" and jnp.issubdtype(dtype, jnp.floating):
        return max(dtype.itemsize, _F32)
    return dtype.itemsize


def _tree_bytes(tree: Any, platform: str = "tpu") -> int:
    return sum(math.prod(x.shape) * _stored_itemsize(x.dtype, platform)
               for x in jax.tree.leaves(tree))


def _is_attention_weights(x: jax.ShapeDtypeStruct) -> bool:
    """Attention's [..., L, L] logits or softmax: the only square minor pair a tower saves."""
    return len(x.shape) >= 2 and x.shape[-1] == x.shape[-2]


def _activation_bytes(x: jax.ShapeDtypeStruct, platform: str) -> int:
    """Bytes of one saved activation. TPUs store the two minor dimensions of an array in
    tiles of 8 x 128; XLA lays activations out with a batch-sized dimension minor, which
    needs no padding, except the attention weights [..., L, L], whose L x L it keeps minor
    for the softmax: L is padded to multiples of 8 and 128 there."""
    shape = x.shape
    if platform == "tpu" and _is_attention_weights(x):
        shape = (*shape[:-2], -(-shape[-2] // 8) * 8, -(-shape[-1] // 128) * 128)
    return math.prod(shape) * _stored_itemsize(x.dtype, platform)


def _shard_factor(spec: jax.sharding.PartitionSpec, shape: tuple[int, ...],
                  mesh_sizes: dict[str, int]) -> int:
    """How many devices share one leaf (the trainer's `_fit`: axes that do not divide a
    dimension leave it whole)."""
    factor = 1
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh_sizes[a] for a in names)
        if names and dim % size == 0:
            factor *= size
    return factor


def params_per_device(boxed: Any, mesh_sizes: dict[str, int]) -> tuple[float, float]:
    """(bytes per device, total bytes) of the params under the trainer's sharding rules."""
    specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), sharding.LOGICAL_RULES)
    shapes = nn.unbox(boxed)
    per_device = jax.tree.map(
        lambda spec, x: math.prod(x.shape) * x.dtype.itemsize
        / _shard_factor(spec, x.shape, mesh_sizes),
        specs, shapes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    return float(sum(jax.tree.leaves(per_device))), float(_tree_bytes(shapes))


@functools.lru_cache(maxsize=64)
def weights_per_device(model_config: ModelConfig, category_heads: int,
                       mesh_sizes: tuple[tuple[str, int], ...], optim_json: str
                       ) -> tuple[float, float]:
    """(params, optimizer state) bytes per device; the state mirrors the params (its
    moments and anchor take each param's sharding)."""
    model = CLIP(model_config, num_category_heads=category_heads)
    boxed = jax.eval_shape(functools.partial(init_params, model), jax.random.key(0))
    params, params_total = params_per_device(boxed, dict(mesh_sizes))
    opt = optimizer.make_optimizer(ml_collections.ConfigDict(
        {"optim": json.loads(optim_json)}), 1)
    state_total = _tree_bytes(jax.eval_shape(opt.tx.init, nn.unbox(boxed)))
    return params, state_total * params / params_total


def _tiled_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes of a row-major TPU array: the two minor dimensions in tiles of 8 x 128."""
    if len(shape) >= 2:
        shape = (*shape[:-2], -(-shape[-2] // 8) * 8, -(-shape[-1] // 128) * 128)
    elif len(shape) == 1:
        shape = (-(-shape[0] // 128) * 128,)
    return math.prod(shape) * itemsize


@functools.lru_cache(maxsize=64)
def gradient_tree_per_device(model_config: ModelConfig, category_heads: int,
                             mesh_sizes: tuple[tuple[str, int], ...], platform: str) -> float:
    """Bytes per device of one float32 tree of the params' shape as a temporary of the step:
    each leaf's shard, tiled on TPUs (`_tiled_bytes`), as stored elsewhere."""
    model = CLIP(model_config, num_category_heads=category_heads)
    boxed = jax.eval_shape(functools.partial(init_params, model), jax.random.key(0))
    specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), sharding.LOGICAL_RULES)
    sizes = dict(mesh_sizes)

    def leaf(spec: jax.sharding.PartitionSpec, x: jax.ShapeDtypeStruct) -> float:
        if platform != "tpu":
            return math.prod(x.shape) * x.dtype.itemsize / _shard_factor(spec, x.shape, sizes)
        # The shard's shape: each dimension its mesh axes divide is split over them (the
        # trainer's `_fit`, as `_shard_factor` counts).
        axes_of = tuple(spec) + (None,) * (len(x.shape) - len(spec))
        shape = []
        for dim, axes in zip(x.shape, axes_of, strict=True):
            names = (axes,) if isinstance(axes, str) else tuple(axes or ())
            size = math.prod(sizes[a] for a in names)
            shape.append(dim // size if names and dim % size == 0 else dim)
        return float(_tiled_bytes(tuple(shape), _F32))

    per_leaf = jax.tree.map(leaf, specs, nn.unbox(boxed),
                            is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    return float(sum(jax.tree.leaves(per_leaf)))


def residual_bytes(fn: Any, params: Any, inputs: jax.ShapeDtypeStruct, platform: str,
                   attention_weights: bool = True) -> int:
    """Bytes of what `jax.vjp` of `fn(params, inputs)` with respect to the params saves for
    the backward pass (traced on shapes only); without the attention weights if not
    `attention_weights`."""
    pullback = jax.eval_shape(lambda p, x: jax.vjp(lambda q: fn(q, x), p)[1], params, inputs)
    return sum(_activation_bytes(x, platform) for x in jax.tree.leaves(pullback)
               if attention_weights or not _is_attention_weights(x))


@functools.lru_cache(maxsize=64)
def activations_per_example(model_config: ModelConfig, dtype: str, remat_policy: str,
                            image_size: int, context_length: int, texts: int,
                            image_dtype: str, platform: str, attention_impl: str
                            ) -> tuple[float, float, float]:
    """(saved bytes per example of both towers, the larger tower's one-layer recomputation
    per example, the attention weights among the saved bytes) under the remat policy; per
    example = the difference between 2 and 1 examples, so the params (also saved) cancel
    out."""
    model = CLIP(model_config, dtype=jnp.dtype(dtype), remat_policy=remat_policy,
                 attention_impl=attention_impl)
    params = nn.unbox(jax.eval_shape(functools.partial(init_params, model), jax.random.key(0)))
    pixels = jnp.uint8 if image_dtype == "uint8" else jnp.float32

    def tower_bytes(m: CLIP, tower: str, n: int, weights: bool) -> int:
        if tower == "image":
            x = jax.ShapeDtypeStruct((n, image_size, image_size, 3), pixels)
            fn = lambda p, x: m.apply({"params": p}, images=x)["image_embeds"]  # noqa: E731
        else:
            x = jax.ShapeDtypeStruct((n, context_length), jnp.int32)
            fn = lambda p, x: m.apply({"params": p}, tokens=x)["text_embeds"]  # noqa: E731
        return residual_bytes(fn, params, x, platform, weights)

    def per_example(m: CLIP, tower: str, weights: bool = True) -> float:
        return float(tower_bytes(m, tower, 2, weights) - tower_bytes(m, tower, 1, weights))

    def both(per_tower: dict[str, float]) -> float:
        return per_tower["image"] + texts * per_tower["text"]

    saved = {t: per_example(model, t) for t in ("image", "text")}
    # Only TPUs leave the attention weights out (under GradCache, below in `estimate`).
    without_weights = ({t: per_example(model, t, weights=False) for t in saved}
                       if platform == "tpu" else saved)
    layers = {"image": model.config.vision_layers, "text": model.config.text_layers}
    recompute = 0.0
    if model.remat_policy != "none" and platform != "cpu":
        # A layer's backward pass recomputes what the policy did not save; XLA schedules
        # each block's recomputation (attention's, the MLP's) just before that block's own
        # backward pass, so one block's worth exists at a time.
        tokens = {"image": (image_size // model_config.patch_size) ** 2 + 1,
                  "text": context_length}
        recompute = max(max(block_recompute_per_example(
            model_config, dtype, model.remat_policy, t, tokens[t], platform, attention_impl,
            block) for block in ("attention", "mlp")) * (texts if t == "text" else 1)
            for t in ("image", "text"))
    elif model.remat_policy != "none":
        # XLA's CPU backend materialises the whole layer's recomputation at once.
        recompute = max(max(per_example(dataclasses.replace(model, remat_policy="none"), t)
                            - saved[t], 0.0) / layers[t] * (texts if t == "text" else 1)
                        for t in saved)
    if platform == "cpu":
        # Every policy: a layer's backward pass recomputes the MLP activation from its
        # input (models/layers.py), and XLA's CPU backend materialises what autodiff of
        # the activation keeps, for one layer of each tower at a time.
        recompute += sum(activation_recompute_per_example(
            model_config, dtype, t, image_size, context_length) * (texts if t == "text" else 1)
            for t in ("image", "text"))
    return both(saved), recompute, both(saved) - both(without_weights)


@functools.lru_cache(maxsize=64)
def block_recompute_per_example(model_config: ModelConfig, dtype: str, remat_policy: str,
                                tower: str, tokens: int, platform: str, attention_impl: str,
                                block: str) -> float:
    """Bytes per example that one layer's attention or MLP block recomputes under the remat
    policy: what autodiff of the block keeps without remat less what the policy saves. On
    TPUs without the attention weights: XLA recomputes them inside attention's fused
    backward pass from the queries and keys."""
    width, heads, mlp_dim = (
        (model_config.vision_width, model_config.vision_heads, model_config.vision_mlp_dim)
        if tower == "image" else
        (model_config.text_width, model_config.text_heads, model_config.text_mlp_dim))
    dtype_ = jnp.dtype(dtype)
    if block == "attention":
        cls, args = Attention, (width, heads, dtype_, tower == "text", attention_impl)
    else:
        cls, args = Mlp, (width, mlp_dim, model_config.act, dtype_)
    plain = cls(*args)
    rematted = nn.remat(cls, policy=REMAT_POLICIES[remat_policy])(*args)
    x1 = jax.ShapeDtypeStruct((1, tokens, width), dtype_)
    params = nn.unbox(jax.eval_shape(plain.init, jax.random.key(0), x1))["params"]
    weights = platform != "tpu"

    def kept(module: nn.Module, n: int) -> int:
        x = jax.ShapeDtypeStruct((n, tokens, width), dtype_)
        fn = lambda p, x: module.apply({"params": p}, x)  # noqa: E731
        return residual_bytes(fn, params, x, platform, weights)

    per_example = {m: kept(m, 2) - kept(m, 1) for m in (plain, rematted)}
    return float(max(per_example[plain] - per_example[rematted], 0))


def activation_recompute_per_example(model_config: ModelConfig, dtype: str, tower: str,
                                     image_size: int, context_length: int) -> float:
    """Bytes of the residuals autodiff of one layer's MLP activation keeps, per example
    (its input excluded: the layer saves that anyway), as XLA's CPU backend stores them."""
    if tower == "image":
        tokens = (image_size // model_config.patch_size) ** 2 + 1
        mlp_dim = model_config.vision_mlp_dim
    else:
        tokens, mlp_dim = context_length, model_config.text_mlp_dim
    x = jax.ShapeDtypeStruct((tokens, mlp_dim), jnp.dtype(dtype))
    pullback = jax.eval_shape(lambda v: jax.vjp(ACTIVATIONS[model_config.act], v)[1], x)
    kept = sum(_activation_bytes(r, "cpu") for r in jax.tree.leaves(pullback))
    return float(max(kept - _activation_bytes(x, "cpu"), 0))


def loss_bytes(kind: str, impl: str, local: int, global_batch: int, embed_dim: int,
               tile_size: int, text_fields: int) -> float:
    """Float32 bytes per device of the contrastive losses of a step and their gradients."""
    embeddings = _EMBEDDING_ARRAYS * local * embed_dim * _F32
    if impl == "gather":  # autodiff keeps each loss's logits for the backward pass
        return text_fields * (_GATHER_LOGIT_ARRAYS[kind] * local * global_batch * _F32
                              + embeddings)
    side = min(tile_size, local) if impl == "tiled_ring" else local
    # The rings recompute their blocks in the backward pass: one loss's blocks at a time.
    return _RING_BLOCKS * side * side * _F32 + text_fields * embeddings


def estimate(config: ml_collections.ConfigDict, num_devices: int, platform: str,
             num_slices: int | None = None) -> Breakdown:
    """The analytic breakdown of `config`'s update step on `num_devices` devices (in
    `num_slices` slices when `mesh.dcn` splits the data axis over them; None: as it names)."""
    stage = stages.get_stage(config.stage)
    model_config = trainer.model_config_of(config)
    mesh_sizes = dict(zip(sharding.MESH_AXES,
                          sharding.job_mesh_shape(config.mesh, num_devices, num_slices),
                          strict=True))
    batch_shards = math.prod(mesh_sizes[a] for a in sharding.BATCH_AXES)
    global_batch = config.input.batch_size
    local = global_batch // batch_shards
    micro = config.grad_accum.micro_batches
    texts = len(stage.make_view(config.input.text_fields).text_keys)

    params, optimizer_state = weights_per_device(
        model_config, stage.category_heads, tuple(sorted(mesh_sizes.items())),
        config.optim.to_json_best_effort(sort_keys=True))

    size, length = config.input.image_size, config.input.context_length
    image_bytes = 1 if config.input.image_dtype == "uint8" else _F32
    labels = 4 * (1 + 5) if stage.category_heads else 0
    inputs = local * (size * size * 3 * image_bytes + texts * length * 4 + labels)

    saved, recompute, attention_weights = activations_per_example(
        model_config, config.model.dtype, config.model.remat_policy, size, length, texts,
        config.input.image_dtype, platform, config.model.attention_impl)
    micro_batch = local // micro
    # float32 params: the gradient's per-device size (tiled on TPUs)
    gradients = gradient_tree_per_device(model_config, stage.category_heads,
                                         tuple(sorted(mesh_sizes.items())), platform)
    gradcache = micro > 1 and config.grad_accum.mode == "gradcache"
    if gradcache and platform == "tpu":
        # GradCache's second pass differentiates each micro-batch's towers inside its loop.
        # There XLA's TPU program recomputes the attention weights instead of keeping them,
        # and adds the micro-batch's gradients into the running sum: the live ranges at its
        # peak (`--xla_dump_to`) hold one float32 tree of the params' shape, not two.
        saved -= attention_weights
    embed_dim = model_config.embed_dim
    return Breakdown(
        params=params,
        optimizer_state=optimizer_state,
        inputs=inputs,
        gradients=(2 if gradcache and platform != "tpu" else 1) * gradients,
        activations=micro_batch * saved,
        recomputation=micro_batch * recompute,
        loss=loss_bytes(config.loss.kind, config.loss.impl, local, global_batch, embed_dim,
                        config.loss.tile_size, texts),
        gradcache_embeddings=2 * local * (1 + texts) * embed_dim * _F32 if gradcache else 0.0,
        update=_UPDATE_TREES * gradients,
    )
