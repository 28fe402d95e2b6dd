"""Model checkpoints and the trainer's checkpoint directory (CPU, tiny model).

    python -m pytest tests/test_checkpoint.py
"""

import json
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


def _perturbed(params, shift: float):
    return jax.tree.map(lambda x: x + np.asarray(shift, x.dtype), params)


def test_best_survives_a_resume_and_only_strictly_better_replaces_it(tiny, tmp_path):
    params, config = tiny
    best_dir = str(tmp_path / "best")
    best = checkpoint.BestCheckpoint(best_dir, "validation/loss", "min")
    assert best.update(10, {"validation/loss": 0.5}, params, config)
    assert not best.update(20, {"other": 0.1}, _perturbed(params, 1.0), config)  # lacks it
    # The run restarts: the best value comes back from disk, a worse one is not kept.
    resumed = checkpoint.BestCheckpoint(best_dir, "validation/loss", "min")
    assert resumed.value == 0.5
    assert not resumed.update(30, {"validation/loss": 0.7}, _perturbed(params, 2.0), config)
    assert not resumed.update(40, {"validation/loss": 0.5}, _perturbed(params, 3.0), config)
    assert checkpoint.read_best_metric(best_dir) == {"step": 10, "validation/loss": 0.5,
                                                     "mode": "min"}
    assert_trees_equal(checkpoint.load_model(best_dir)[0], params)
    assert resumed.update(50, {"validation/loss": 0.25}, _perturbed(params, 4.0), config)
    assert checkpoint.read_best_metric(best_dir) == {"step": 50, "validation/loss": 0.25,
                                                     "mode": "min"}
    assert_trees_equal(checkpoint.load_model(best_dir)[0], _perturbed(params, 4.0))
    assert sorted(os.listdir(tmp_path)) == ["best"]
    assert os.listdir(best_dir) == ["50"]  # no older best left
    assert checkpoint.resolve_step_dir(best_dir) == os.path.join(best_dir, "50")
    assert "step 50, best by validation/loss=0.25" in checkpoint.describe(best_dir)
    with pytest.raises(UserError, match="best_mode 'lowest'"):
        checkpoint.BestCheckpoint(best_dir, "validation/loss", "lowest")


def test_a_replacement_cut_short_keeps_a_finished_best(tiny, tmp_path):
    params, config = tiny
    best_dir = str(tmp_path / "best")
    checkpoint.BestCheckpoint(best_dir, "loss", "min").update(100, {"loss": 0.5}, params, config)
    # A resumed run found a better value at an earlier step and was killed after saving it,
    # before deleting step 100; and a later save was torn (orbax's temporary directory).
    checkpoint.save_model(os.path.join(best_dir, "90"), _perturbed(params, 1.0), config,
                          best={"step": 90, "loss": 0.4, "mode": "min"})
    os.makedirs(os.path.join(best_dir, "120.orbax-checkpoint-tmp-1234", "params"))
    # Readers take the best value, not the latest step; so does the next run.
    assert checkpoint.resolve_step_dir(best_dir) == os.path.join(best_dir, "90")
    assert_trees_equal(checkpoint.load_model(best_dir)[0], _perturbed(params, 1.0))
    resumed = checkpoint.BestCheckpoint(best_dir, "loss", "min")
    assert resumed.value == 0.4
    assert resumed.update(130, {"loss": 0.3}, _perturbed(params, 2.0), config)
    assert os.listdir(best_dir) == ["130"]  # the older bests and the torn save are gone


def test_a_best_written_before_best_held_steps_is_read_and_replaced(tiny, tmp_path):
    params, config = tiny
    best_dir = str(tmp_path / "best")
    checkpoint.save_model(best_dir, params, config)  # the earlier layout: best/ itself
    with open(os.path.join(best_dir, "best_metric.json"), "w") as f:
        json.dump({"step": 7, "acc": 0.4}, f)
    assert checkpoint.resolve_step_dir(best_dir) == best_dir
    assert "step 7, best by acc=0.4" in checkpoint.describe(best_dir)
    resumed = checkpoint.BestCheckpoint(best_dir, "acc", "max")
    assert resumed.value == 0.4
    assert not resumed.update(8, {"acc": 0.3}, _perturbed(params, 1.0), config)
    assert resumed.update(9, {"acc": 0.6}, _perturbed(params, 1.0), config)
    assert os.listdir(best_dir) == ["9"]
    assert_trees_equal(checkpoint.load_model(best_dir)[0], _perturbed(params, 1.0))



@pytest.mark.gcs
def test_in_a_bucket_a_save_cut_before_its_commit_marker_is_never_taken(tiny, gcs):
    params, config = tiny
    best_dir = gcs.uri("ckpt-test", "best")
    best = checkpoint.BestCheckpoint(best_dir, "loss", "min")
    assert best.update(10, {"loss": 0.5}, params, config)
    with gcs.refusing("ckpt-test/best/20/commit_success.txt"), pytest.raises(Exception):  # noqa: B017
        best.update(20, {"loss": 0.25}, _perturbed(params, 1.0), config)
    # Every item of step 20 is in the bucket, all but orbax's marker: not a finished step.
    written = gcs.objects("ckpt-test/best/20/")
    assert "ckpt-test/best/20/params/manifest.ocdbt" in written
    assert "ckpt-test/best/20/model_config/metadata" in written
    assert not checkpoint.finished(f"{best_dir}/20")
    assert checkpoint.resolve_step_dir(best_dir) == f"{best_dir}/10"
    assert_trees_equal(checkpoint.load_model(best_dir)[0], params)
    resumed = checkpoint.BestCheckpoint(best_dir, "loss", "min")
    assert resumed.value == 0.5
    assert resumed.update(30, {"loss": 0.25}, _perturbed(params, 2.0), config)
    assert {n.split("/")[2] for n in gcs.objects("ckpt-test/best/")} == {"30"}
    assert_trees_equal(checkpoint.load_model(best_dir)[0], _perturbed(params, 2.0))

    model = gcs.uri("ckpt-test", "model")
    with gcs.refusing("ckpt-test/model/commit_success.txt"), pytest.raises(Exception):  # noqa: B017
        checkpoint.save_model(model, params, config)
    with pytest.raises(UserError, match="was not finished"):
        checkpoint.load_model(model)
