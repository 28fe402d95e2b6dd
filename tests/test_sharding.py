"""Mesh construction, the logical-axis rules, and where activation constraints apply."""

import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from reasonclip_jax.errors import UserError
from reasonclip_jax.models.clip import CLIP, get_preset, init_params
from reasonclip_jax.parallel import sharding


def test_mesh_shape_fills_minus_one_and_rejects_bad_meshes():
    assert sharding.mesh_shape(dict(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
    assert sharding.mesh_shape(dict(data=-1), 8) == (8, 1, 1)
    with pytest.raises(UserError, match="needs 16 devices, only 8"):
        sharding.mesh_shape(dict(data=4, fsdp=4), 8)
    with pytest.raises(UserError, match="unknown mesh axes"):
        sharding.mesh_shape(dict(model=2), 8)
    with pytest.raises(UserError, match="at most one -1"):
        sharding.mesh_shape(dict(data=-1, fsdp=-1), 8)
    with pytest.raises(UserError, match="uses 4 of 8 devices"):
        sharding.mesh_shape(dict(data=4), 8)
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    with pytest.raises(UserError, match="not divisible by the data-parallel size 4"):
        sharding.batch_size_per_shard(mesh, 6)


def _param_shardings(mesh, config=None):
    model = CLIP(config or get_preset("tiny"))
    boxed = jax.eval_shape(functools.partial(init_params, model), jax.random.key(0))
    return sharding.logical_shardings(boxed, mesh), nn.unbox(boxed)


def test_rules_shard_parameters_fsdp_and_tensor():
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    shardings, _ = _param_shardings(mesh)
    layers = shardings["visual"]["transformer"]["layers"]
    assert layers["attn"]["query"]["kernel"].spec == P(None, "fsdp", "tensor", None)
    assert layers["attn"]["out"]["kernel"].spec == P(None, "tensor", None, "fsdp")
    assert layers["mlp"]["c_fc"]["kernel"].spec == P(None, "fsdp", "tensor")
    assert shardings["text"]["token_embedding"].spec == P("tensor", "fsdp")
    assert shardings["logit_scale"].spec == P()


def test_axes_that_do_not_divide_a_dimension_are_dropped():
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=8))
    shardings, shapes = _param_shardings(mesh)  # tiny: 2 heads cannot split 8 ways
    spec = shardings["visual"]["transformer"]["layers"]["attn"]["query"]["kernel"].spec
    assert spec[2] is None  # heads stay whole
    assert shardings["text"]["token_embedding"].spec[0] == "tensor"  # 49408 % 8 == 0
    for s, x in zip(jax.tree.leaves(shardings), jax.tree.leaves(shapes), strict=True):
        for dim, axes in zip(x.shape, s.spec, strict=False):
            assert axes is None or dim % mesh.shape[axes] == 0


def test_optimizer_state_follows_parameter_shardings():
    mesh = sharding.make_mesh(dict(data=2, fsdp=4, tensor=1))
    shardings, shapes = _param_shardings(mesh)
    state = jax.eval_shape(optax.adamw(1e-3).init, shapes)
    state_sh = sharding.shardings_like_params(state, shardings, mesh)
    mu = state_sh[0].mu
    assert mu["visual"]["proj"].spec == shardings["visual"]["proj"].spec == P("fsdp", None)
    assert state_sh[0].count.spec == P()


def test_activation_constraints_apply_only_inside_the_context():
    mesh = sharding.make_mesh(dict(data=4, fsdp=1, tensor=2))
    config = get_preset("tiny", image_size=32)
    model = CLIP(config)
    params = jax.jit(lambda r: nn.unbox(init_params(model, r)))(jax.random.key(0))
    images = np.zeros((8, 32, 32, 3), np.float32)
    fn = jax.jit(lambda p, x: model.apply({"params": p}, images=x)["image_embeds"])
    outside = fn.lower(params, images).as_text()
    with sharding.activation_sharding(mesh):
        inside = jax.jit(lambda p, x: model.apply({"params": p}, images=x)["image_embeds"]
                         ).lower(params, images).as_text()
    assert "sharding_constraint" not in outside
    assert inside.count("sharding_constraint") >= 3
    assert '{"data", "fsdp"}, {}, {"tensor"}' in inside  # batch and heads/mlp split
