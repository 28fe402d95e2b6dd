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


class FakeDevice:
    """What the multi-slice layout reads of a device: its id, process and (TPU) slice."""

    platform = device_kind = "cpu"

    def __init__(self, id: int, process_index: int, slice_index: int = 0):
        self.id, self.process_index, self.slice_index = id, process_index, slice_index

    def __repr__(self):
        return f"d{self.id}"


def _slices_along(grid, axis: int, slice_of) -> list[list[int]]:
    """For each position along `axis`, the slices its devices are on."""
    moved = np.moveaxis(grid, axis, 0)
    return [sorted({slice_of(d) for d in moved[i].flat}) for i in range(moved.shape[0])]


@pytest.mark.parametrize("by_process", [False, True], ids=["tpu_slices", "processes"])
def test_multi_slice_grid_puts_the_data_axis_across_slices(by_process):
    # 3 slices of 4 devices, listed interleaved; the slice is the device's slice_index (TPU)
    # or its process (elsewhere), and the other attribute says nothing here.
    devices = [FakeDevice(i, i % 3 if by_process else 0, 0 if by_process else i % 3)
               for i in range(12)]
    slice_of = functools.partial(sharding.slice_of, by_process=by_process)
    grid = sharding.multi_slice_grid(dict(data=1, fsdp=2, tensor=2), dict(data=3), devices,
                                     by_process)
    assert grid.shape == (3, 2, 2)
    # Each data position is one whole slice; fsdp and tensor never leave it.
    assert _slices_along(grid, 0, slice_of) == [[0], [1], [2]]
    for s in range(3):
        assert sorted(d.id for d in grid[s].flat) == [i for i in range(12) if i % 3 == s]
    # data within a slice too: each slice's block is contiguous along data.
    grid = sharding.multi_slice_grid(dict(data=2, fsdp=2), dict(data=-1), devices, by_process)
    assert grid.shape == (6, 2, 1)
    assert _slices_along(grid, 0, slice_of) == [[0], [0], [1], [1], [2], [2]]


def test_multi_slice_mistakes_are_one_line_errors():
    devices = [FakeDevice(i, i // 4) for i in range(8)]
    grid = functools.partial(sharding.multi_slice_grid, by_process=True)
    with pytest.raises(UserError, match=r"only \('data',\) may span slices; \['tensor'\]"):
        grid(dict(data=4), dict(tensor=2), devices)
    with pytest.raises(UserError, match="mesh.dcn across 2 slices: .* needs 4 devices, only 2"):
        grid(dict(data=2), dict(data=4), devices)
    with pytest.raises(UserError, match="mesh within a slice of 4 devices: .* uses 2 of 4"):
        grid(dict(data=2), dict(data=2), devices)
    with pytest.raises(UserError, match="different numbers of devices"):
        grid(dict(data=-1), dict(data=2), devices[:7])


def test_one_slice_mesh_is_the_plain_mesh():
    plain = sharding.make_mesh(dict(data=2, fsdp=4, tensor=1))
    assert sharding.make_mesh(dict(data=2, fsdp=4, tensor=1, dcn=dict(data=1))) == plain
    # In one process (one slice) dcn.data=-1 spans that one slice.
    mesh = sharding.make_mesh(dict(data=-1, fsdp=4, dcn=dict(data=-1)))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}


def test_job_mesh_shape_is_the_shape_make_mesh_builds():
    """The planner's mesh without devices: within a slice times across slices."""
    for sizes, slices in [(dict(data=1, fsdp=2, tensor=2, dcn=dict(data=3)), None),
                          (dict(data=2, fsdp=2, dcn=dict(data=-1)), 3),
                          (dict(data=-1, fsdp=2, tensor=1, dcn=dict(data=1)), None)]:
        devices = [FakeDevice(i, i % 3) for i in range(12)]
        dcn = sizes.get("dcn", {})
        grid = (sharding.multi_slice_grid({k: v for k, v in sizes.items() if k != "dcn"},
                                          dcn, devices, by_process=True)
                if dcn.get("data") != 1 else None)
        shape = sharding.job_mesh_shape(sizes, 12, slices)
        if grid is not None:
            assert shape == grid.shape
        else:
            assert shape == sharding.mesh_shape(dict(data=-1, fsdp=2, tensor=1), 12)
    with pytest.raises(UserError, match="mesh.dcn.data=-1 takes every slice"):
        sharding.job_mesh_shape(dict(data=2, dcn=dict(data=-1)), 8)
    with pytest.raises(UserError, match="mesh.dcn across 2 slices"):
        sharding.job_mesh_shape(dict(data=-1, dcn=dict(data=4)), 8, 2)


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


@pytest.mark.parametrize("mesh", [dict(data=1, fsdp=8), dict(data=8, fsdp=1)],
                         ids=["fsdp", "data"])
def test_update_step_gathers_no_ids_derived_from_the_batch(mesh):
    """Under a batch-sharded mesh the step all-gathers weights, the loss's embeddings and,
    of the inputs, only stage 1's two caption fields as it concatenates them (stages.py):
    the token embedding table is gathered before the lookup and the end-of-text pooling
    indexes within each row, where both once all-gathered the ids for the lookup and the
    pooling of the global batch on every device."""
    from configs import common
    from reasonclip_jax.scaling import compiled_memory
    from reasonclip_jax.train import trainer

    c = common.base_config()
    c.model.preset, c.input.batch_size = "tiny", 64
    c.input.image_size, c.input.context_length = 64, 77
    c.mesh = dict(mesh, tensor=1)
    m = sharding.make_mesh(c.mesh, jax.devices())
    program = trainer.build_program(c, m)
    batch = compiled_memory.abstract_batch(program, c.input, m)
    with sharding.activation_sharding(m):
        text = program.update.lower(program.abstract_params(), program.abstract_state(),
                                    batch).compile().as_text()
    gathered = [line.split("=", 1)[1].split()[0] for line in text.splitlines()
                if " all-gather(" in line]
    assert gathered  # the weights (fsdp) or the loss's embeddings (data)
    ints = [s.split("{")[0] for s in gathered if s.startswith(("s32", "u32", "s64"))]
    assert ints == ["s32[64,77]"] * 2, gathered  # the two fields, nothing derived from them
