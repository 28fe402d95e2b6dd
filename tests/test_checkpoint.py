"""Model checkpoints and the trainer's checkpoint directory (CPU, tiny model).

    python -m pytest tests/test_checkpoint.py
"""

import os

import flax.linen as nn
import grain
import jax
import numpy as np
import pytest

from reasonclip_jax.errors import UserError
from reasonclip_jax.models.clip import CLIP, get_preset, init_params
from reasonclip_jax.train import checkpoint


@pytest.fixture(scope="module")
def tiny():
    config = get_preset("tiny")
    params = jax.device_get(nn.unbox(init_params(CLIP(config), jax.random.key(0))))
    return params, config


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_model_round_trip_is_exact(tiny, tmp_path):
    params, config = tiny
    path = str(tmp_path / "model")
    checkpoint.save_model(path, params, config)
    loaded, loaded_config = checkpoint.load_model(path)
    assert loaded_config == config == checkpoint.load_model_config(path)
    assert_trees_equal(loaded, params)
    with pytest.raises(UserError, match="already exists"):
        checkpoint.save_model(path, params, config)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.load_model(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="not a reasonclip checkpoint"):
        checkpoint.load_model(str(tmp_path))


def _iterator(position: int):
    it = iter(grain.MapDataset.range(100).to_iter_dataset())
    for _ in range(position):
        next(it)
    return it


def test_train_steps_restore_and_torn_saves(tiny, tmp_path):
    params, config = tiny
    directory = str(tmp_path / "checkpoints")
    with checkpoint.train_manager(directory, keep=2, async_save=False) as manager:
        for step in (1, 2, 3):
            state = {"step": np.int32(step), "mu": jax.tree.map(lambda x, s=step: x * s, params)}
            checkpoint.save_train(manager, step, params, state, config, _iterator(10 * step))
    # A save torn half-way, as orbax leaves it: a temporary directory of a later step.
    torn = os.path.join(directory, "4.orbax-checkpoint-tmp-1234")
    os.makedirs(os.path.join(torn, "params"))

    assert checkpoint.latest_train_step(directory) == 3
    assert os.path.isdir(torn)  # looking at a run never deletes anything
    step_dir = checkpoint.resolve_step_dir(str(tmp_path))  # a workdir: its checkpoints/
    assert step_dir == os.path.join(directory, "3")
    assert checkpoint.saved_process_count(step_dir) == 1
    assert_trees_equal(checkpoint.load_model(str(tmp_path))[0], params)

    with checkpoint.train_manager(directory, keep=2) as manager:
        assert manager.all_steps() == [2, 3]  # keep=2
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
        abstract_state = {"step": jax.ShapeDtypeStruct((), np.int32), "mu": abstract}
        it = _iterator(0)
        restored, state = checkpoint.restore_train(manager, 2, abstract, abstract_state, it)
        assert_trees_equal(restored, params)
        assert int(state["step"]) == 2
        assert_trees_equal(state["mu"], jax.tree.map(lambda x: x * 2, params))
        assert next(it) == 20  # the iterator continues where step 2 left it
    assert not os.path.exists(torn)  # the trainer's manager clears torn saves
