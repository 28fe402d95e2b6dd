"""The trainer: sharded runs equal a 1-device run; kill, SIGTERM, torn checkpoints, NaN guard."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import demo
from reasonclip_jax.errors import UserError
from reasonclip_jax.models import flops
from reasonclip_jax.parallel import grad_accum
from reasonclip_jax.tools import evaluate
from reasonclip_jax.train import checkpoint, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from data_pipeline import build

    out = str(tmp_path_factory.mktemp("data") / "scenes")
    build.run(["--source", "scenes", "--num-scenes", "96", "--seed", "1", "--output", out])
    return out


def small_config(data: str, stage: str = "stage1", variant: str = "smoke", **overrides):
    c = demo.get_config(f"{data},{stage},{variant}")
    for key, value in overrides.items():
        node, *path = key.split(".")
        target = c
        for p in [node, *path][:-1]:
            target = target[p]
        target[[node, *path][-1]] = value
    return c


def logged(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def final_params(workdir: str):
    return checkpoint.load_model(workdir)[0]


@pytest.fixture(scope="module")
def one_device_run(scenes, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("one") / "run")
    trainer.train(small_config(scenes), workdir)
    return workdir


def test_meshes_match_one_device(scenes, one_device_run, tmp_path):
    ref_dir = one_device_run
    ref_losses = [m["loss"] for m in logged(ref_dir)]
    ref_params = final_params(ref_dir)
    assert len(ref_losses) == 3 and ref_losses[0] > 0
    with open(os.path.join(ref_dir, "config.json")) as f:  # the run's provenance
        saved = json.load(f)
    assert saved["stage"] == "stage1" and saved["input"]["batch_size"] == 16
    for data, fsdp, tensor in [(8, 1, 1), (2, 4, 1), (2, 2, 2)]:
        workdir = str(tmp_path / f"m{data}{fsdp}{tensor}")
        config = small_config(scenes, num_devices=8,
                              mesh=dict(data=data, fsdp=fsdp, tensor=tensor))
        trainer.train(config, workdir)
        np.testing.assert_allclose([m["loss"] for m in logged(workdir)], ref_losses, rtol=1e-5)
        # Adam divides by the gradient's scale, so near-zero gradients (fp32 noise of a
        # different reduction order) can move a weight by up to lr = 1e-4 per step: allow
        # half of one step (on the demo data one weight in 32,768 differs by 1.9e-5).
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-5),
                     final_params(workdir), ref_params)


def test_gradcache_in_the_trainer_equals_the_full_batch(scenes, one_device_run, tmp_path,
                                                        monkeypatch):
    traced = []  # the train step is traced once: GradCache must be what it traces
    real = grad_accum.gradcache_value_and_grad

    def spy(*args, **kwargs):
        traced.append(args[4])  # micro-batches
        return real(*args, **kwargs)

    monkeypatch.setattr(grad_accum, "gradcache_value_and_grad", spy)
    workdir = str(tmp_path / "gradcache")
    config = small_config(scenes, num_devices=8, mesh=dict(data=4, fsdp=2, tensor=1))
    config.grad_accum = dict(micro_batches=2, mode="gradcache")
    trainer.train(config, workdir)
    assert traced == [2]
    np.testing.assert_allclose([m["loss"] for m in logged(workdir)],
                               [m["loss"] for m in logged(one_device_run)], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                 final_params(workdir), final_params(one_device_run))


def test_stage2_from_stage1_adds_heads_evaluates_and_keeps_best(scenes, one_device_run,
                                                               tmp_path):
    from reasonclip_jax.tools import convert

    workdir = str(tmp_path / "stage2")
    trainer.train(small_config(scenes, "stage2", "smoke_eval", init_from=one_device_run), workdir)
    rows = logged(workdir)
    assert {"loss_text_category", "loss_image_category", "text_category_acc"} <= set(rows[0])
    assert rows[-1]["scenes_bench/num_sets"] == 32 * 5
    # The in-loop evaluation (sharded params, the trainer's encoder) equals the evaluate
    # command's on the saved best weights.
    standalone = evaluate.main(["--checkpoint", os.path.join(workdir, "best"), "--eval",
                                f"rclip_bench:{scenes}/bench", "split=test", "max_examples=32",
                                "name=scenes_bench", "--batch-size", "16"])
    assert rows[-1]["scenes_bench/accuracy"] == pytest.approx(
        standalone["scenes_bench/accuracy"], abs=1e-9)
    params = final_params(workdir)
    assert params["text_category_head"]["kernel"].shape == (64, 5)
    assert checkpoint.read_best_metric(os.path.join(workdir, "best"))["step"] == 3
    assert os.listdir(os.path.join(workdir, "best")) == ["3"]
    best, _ = checkpoint.load_model(os.path.join(workdir, "best"))
    jax.tree.map(np.testing.assert_array_equal, best, params)
    convert.export_weights("hf", workdir, str(tmp_path / "hf"))  # heads are dropped
    params.pop("image_category_head"), params.pop("text_category_head")
    back = convert.import_weights("hf", str(tmp_path / "hf"), str(tmp_path / "back"))
    assert back.image_size == 32
    jax.tree.map(np.testing.assert_array_equal, final_params(str(tmp_path / "back")), params)


def _start(config_overrides: list[str], workdir: str, data: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "reasonclip_jax.train",
            f"--config=configs/demo.py:{data},stage1,smoke",
            f"--workdir={workdir}", *config_overrides]
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _cli_overrides(steps: int) -> list[str]:
    return [f"--config.total_steps={steps}"]


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    start = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early:\n{proc.stdout.read()[-3000:]}")
        if time.time() - start > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the trainer")
        time.sleep(0.05)


def _steps(workdir: str) -> list[int]:
    root = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []


def test_sigkill_resume_is_bitwise_identical_and_ignores_torn_checkpoints(scenes, tmp_path):
    steps = 8
    ref_dir = str(tmp_path / "ref")
    trainer.train(small_config(scenes, total_steps=steps), ref_dir)

    workdir = str(tmp_path / "killed")
    proc = _start(_cli_overrides(steps), workdir, scenes)
    _wait_for(lambda: 4 in _steps(workdir), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = max(_steps(workdir))
    assert latest < steps
    # A save torn half-way, as orbax leaves it: a temporary directory of a later step.
    torn = os.path.join(workdir, "checkpoints", f"{latest + 1}.orbax-checkpoint-tmp-1234")
    os.makedirs(os.path.join(torn, "params"))
    with open(os.path.join(torn, "params", "junk"), "w") as f:
        f.write("half")

    trainer.train(small_config(scenes, total_steps=steps), workdir)
    resumed = [m["step"] for m in logged(workdir)]
    assert resumed[-1] == steps and latest + 1 in resumed  # continued after the last save
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir), final_params(ref_dir))


def test_sigterm_saves_and_exits_cleanly(scenes, tmp_path):
    workdir = str(tmp_path / "term")
    proc = _start(_cli_overrides(200), workdir, scenes)
    _wait_for(lambda: os.path.exists(os.path.join(workdir, "metrics.jsonl"))
              and len(logged(workdir)) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    last_logged = logged(workdir)[-1]["step"]
    assert "preempted" in out
    assert _steps(workdir)[-1] >= last_logged and _steps(workdir)[-1] < 200


def test_nonfinite_steps_are_skipped_then_stop_the_run(scenes, tmp_path):
    workdir = str(tmp_path / "nan")
    config = small_config(scenes, total_steps=20, max_nonfinite_streak=3)
    config.model.overrides = {"image_size": 32, "logit_scale_init": float("nan")}
    with pytest.raises(trainer.NonFiniteError, match="3 consecutive steps"):
        trainer.train(config, workdir)
    rows = logged(workdir)
    assert [r["nonfinite_total"] for r in rows] == [1, 2, 3]
    saved = final_params(workdir)
    assert _steps(workdir)[-1] == 3
    # Skipped updates leave the weights as initialised (finite).
    assert all(np.isfinite(x).all() for k, x in jax.tree_util.tree_flatten_with_path(saved)[0]
               if "logit_scale" not in jax.tree_util.keystr(k))


def test_user_errors(scenes, tmp_path):
    with pytest.raises(UserError, match="not divisible by the data-parallel size"):
        trainer.train(small_config(scenes, num_devices=8, **{"input.batch_size": 12}),
                    str(tmp_path / "a"))
    with pytest.raises(UserError, match="needs 16 devices"):
        trainer.train(small_config(scenes, num_devices=8, mesh=dict(data=4, fsdp=4, tensor=1)),
                    str(tmp_path / "b"))
    with pytest.raises(UserError, match="data_dir /nonexistent is not a directory"):
        config = small_config(scenes, "stage1", "smoke_eval")
        config.evals[0]["data_dir"] = "/nonexistent"
        trainer.train(config, str(tmp_path / "f"))
    with pytest.raises(UserError, match="input.image_size 48 does not match the model's "
                                        "image_size 32"):
        trainer.train(small_config(scenes, **{"input.image_size": 48}), str(tmp_path / "g"))
    with pytest.raises(UserError, match="unknown model preset"):
        trainer.train(small_config(scenes, **{"model.preset": "ViT-Z-1"}), str(tmp_path / "c"))
    # A pretrained checkpoint whose weights do not fit the configured model.
    other = str(tmp_path / "other")
    from reasonclip_jax.models.clip import CLIP, get_preset, param_shapes

    shapes = param_shapes(CLIP(get_preset("tiny")))
    checkpoint.save_model(other, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes),
                          get_preset("tiny"))
    with pytest.raises(UserError, match=r"is a different architecture \(image 64px .*\) from "
                                        r"model.preset 'tiny' \(image 32px"):
        trainer.train(small_config(scenes, init_from=other), str(tmp_path / "d"))
    # An empty preset takes the checkpoint's architecture with the overrides (image_size
    # 32 here), and the weights' shapes are still checked one by one.
    config = small_config(scenes, init_from=other, **{"model.preset": ""})
    with pytest.raises(UserError, match="'visual/positional_embedding' has shape"):
        trainer.train(config, str(tmp_path / "d2"))
    # A workdir that holds a run of another model.
    trainer.train(small_config(scenes, total_steps=1), str(tmp_path / "e"))
    with pytest.raises(UserError, match="different model"):
        config = small_config(scenes, total_steps=2)
        config.model.overrides = {"image_size": 32, "text_layers": 1}
        trainer.train(config, str(tmp_path / "e"))


def test_second_run_reads_its_programs_from_the_compilation_cache(scenes, tmp_path,
                                                                 monkeypatch):
    """`compilation_cache_dir` is filled by a first run and read by a second one, which
    compiles nothing new; JAX's settings are restored after each run. MFU: none on this CPU
    with peak_flops_per_device=0, the configured peak's when it is positive."""
    monkeypatch.setattr(trainer, "_CACHE_MIN_COMPILE_TIME_S", 0.0)  # however quick
    cache = tmp_path / "xla"
    before = jax.config.jax_compilation_cache_dir
    hits = []

    def count_hits(event: str, **kwargs) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            hits.append(event)

    config = small_config(scenes, total_steps=2, compilation_cache_dir=str(cache))
    jax.monitoring.register_event_listener(count_hits)
    try:
        trainer.train(config, str(tmp_path / "first"))
        written = set(os.listdir(cache))
        first_hits = len(hits)
        assert written and jax.config.jax_compilation_cache_dir == before
        config.peak_flops_per_device = 1e12  # host-side only: the same programs
        trainer.train(config, str(tmp_path / "second"))
    finally:
        jax.monitoring.unregister_event_listener(count_hits)
    assert len(hits) > first_hits
    assert set(os.listdir(cache)) == written
    assert jax.config.jax_compilation_cache_dir == before

    assert all("mfu" not in row for row in logged(str(tmp_path / "first")))
    row = logged(str(tmp_path / "second"))[-1]
    flops_per_step = config.input.batch_size * 3 * (
        flops.image_forward_flops(trainer.model_config_of(config))
        + 2 * flops.text_forward_flops(trainer.model_config_of(config),
                                       config.input.context_length))  # stage 1: two captions
    assert row["mfu"] == pytest.approx(flops_per_step / row["step_time_s"] / 1e12, rel=1e-6)


def test_scan_unroll_reaches_the_programs_model(scenes):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1),
                             ("data", "fsdp", "tensor"))
    program = trainer.build_program(small_config(scenes, **{"model.scan_unroll": 2}), mesh)
    assert program.model.scan_unroll == program.objective.model.scan_unroll == 2
    assert trainer.build_program(small_config(scenes), mesh).model.scan_unroll == 1


def test_attention_impl_reaches_the_programs_model(scenes):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1),
                             ("data", "fsdp", "tensor"))
    for impl in ("einsum", "xla"):
        program = trainer.build_program(small_config(scenes, **{"model.attention_impl": impl}),
                                        mesh)
        assert program.model.attention_impl == impl
        assert program.objective.model.attention_impl == impl
    with pytest.raises(UserError, match="unknown attention implementation 'flash'"):
        trainer.build_program(small_config(scenes, **{"model.attention_impl": "flash"}), mesh)
