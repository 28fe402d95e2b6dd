"""The sweep runner: a killed sweep relaunched skips finished runs and resumes the
interrupted one; a workdir of another sweep config is refused."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from reasonclip_jax.errors import UserError
from reasonclip_jax.scaling import grid, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_SWEEP = '''
from configs.sweeps import tiny


def get_config(arg):
    c = tiny.get_config(arg)
    c.base.model.overrides = {"image_size": 32, "context_length": 24}
    c.base.input.context_length = 24
    c.base.evals = []
    c.base.checkpoint.async_save = False
    c.batch_sizes = (8, 16)
    c.losses = ("softmax",)
    c.samples = 160
    c.warmup_samples = 16
    c.eval_batch_size = 16
    c.log_every_samples = 16
    c.checkpoint_every_samples = 16
    return c
'''


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from data_pipeline import build

    out = str(tmp_path_factory.mktemp("data") / "scenes")
    build.run(["--source", "scenes", "--num-scenes", "96", "--num-bench-scenes", "8",
               "--scene-group-size", "8", "--image-size", "32", "--validation-fraction",
               "0.2", "--seed", "1", "--output", out])
    return out


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / "small_sweep.py"
    path.write_text(SMALL_SWEEP)
    return str(path)


def load(small_sweep: str, data: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("small_sweep", small_sweep)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(data)


def checkpoint_steps(run_dir: str) -> list[int]:
    root = os.path.join(run_dir, "checkpoints")
    return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []


def logged_steps(run_dir: str) -> list[int]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f if "step_time_s" in line]


@pytest.mark.slow
def test_killed_sweep_skips_finished_runs_and_resumes_the_interrupted_one(
        scenes, small_sweep, tmp_path):
    workdir = str(tmp_path / "study")
    first, second = (os.path.join(workdir, f"stage1-softmax-gather-b{b}") for b in (8, 16))
    proc = subprocess.Popen(
        [sys.executable, "-m", "reasonclip_jax.sweep", "--config", f"{small_sweep}:{scenes}",
         "--workdir", workdir], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    deadline = time.time() + 600
    while not [s for s in checkpoint_steps(second) if s >= 2]:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read()[-3000:])
        assert time.time() < deadline, "timed out waiting for the second run"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = max(checkpoint_steps(second))
    assert interrupted_at < 10  # 160 samples at 16: the second run was cut
    assert sweep.finished(first, 20)
    with open(os.path.join(first, "metrics.jsonl")) as f:
        first_metrics = f.read()

    config = load(small_sweep, scenes)
    assert sweep.run_sweep(config, workdir) == ["stage1-softmax-gather-b16"]
    with open(os.path.join(first, "metrics.jsonl")) as f:
        assert f.read() == first_metrics  # the finished run was not touched
    assert sweep.finished(second, 10)
    steps = logged_steps(second)
    resumed = steps[steps.index(interrupted_at) + 1:] if interrupted_at in steps else steps
    assert resumed[0] == interrupted_at + 1 and steps[-1] == 10  # continued after the save
    with open(os.path.join(second, "run.json")) as f:
        record = json.load(f)
    assert record["point"]["batch_size"] == 16 and record["compiled_peak_bytes"] > 0

    # Everything finished: a relaunch trains nothing; another sweep config is refused.
    assert sweep.run_sweep(config, workdir) == []
    config.samples = 320
    with pytest.raises(UserError, match="different sweep config"):
        sweep.run_sweep(config, workdir)


@pytest.mark.gcs
@pytest.mark.slow
def test_sweep_into_a_bucket(scenes, small_sweep, gcs):
    """A study whose workdir is a bucket (the emulator): run records, checkpoints, metrics,
    best/STEP/ and the report all there; a relaunch trains nothing."""
    from reasonclip_jax.scaling import report
    from reasonclip_jax.train import checkpoint

    config = load(small_sweep, scenes)
    config.batch_sizes, config.samples = (16,), 32
    config.base.checkpoint.best_metric, config.base.checkpoint.best_mode = "validation/loss", "min"
    workdir = gcs.uri("studies", "small")
    assert sweep.run_sweep(config, workdir) == ["stage1-softmax-gather-b16"]
    run_dir = f"{workdir}/stage1-softmax-gather-b16"
    assert sweep.finished(run_dir, 2)
    assert sweep.read_record(run_dir)["point"]["batch_size"] == 16
    objects = gcs.objects("studies/small/")
    assert "studies/small/sweep_config.json" in objects
    assert "studies/small/stage1-softmax-gather-b16/metrics.jsonl" in objects
    best = checkpoint.best_step_dir(f"{run_dir}/best")
    assert best == f"{run_dir}/best/2"
    assert "validation/loss" in checkpoint.read_best_metric(f"{run_dir}/best")

    assert sweep.run_sweep(config, workdir) == []
    written = report.write_report(workdir)
    md = gcs.read("studies/small/results.md").decode()
    assert written["md"] == f"{workdir}/results.md"
    assert "| stage1 | softmax | gather | 16 | 1 | 0.7071 | 2 |" in md


def test_fingerprint_follows_the_run_config():
    from configs.sweeps import tiny

    runs = grid.make_runs(tiny.get_config("/data/scenes"))
    prints = {sweep.fingerprint(r.config) for r in runs}
    assert len(prints) == len(runs)
    again = grid.make_runs(tiny.get_config("/data/scenes"))
    assert [sweep.fingerprint(r.config) for r in again] == [sweep.fingerprint(r.config)
                                                           for r in runs]


def test_device_memory_fits_unlisted_batches_with_gradcache(monkeypatch):
    from configs.sweeps import tiny
    from reasonclip_jax.scaling import compiled_memory, plan

    sweep_config = tiny.get_config("/data/scenes")
    sweep_config.device_memory = "1GiB"
    sweep_config.micro_batches = {"64": 2}
    asked = []

    def fewest(config, target):
        asked.append((config.input.batch_size, target.device_memory))
        return 4, plan.Plan(config.input.batch_size, 4,
                            compiled_memory.CompiledMemory(1, 2, 1, 5), None, True)

    compiled = []
    monkeypatch.setattr(plan, "fewest_micro_batches", fewest)
    monkeypatch.setattr(compiled_memory, "compile_step",
                        lambda config, devices: compiled.append(config.input.batch_size)
                        or compiled_memory.CompiledMemory(1, 2, 1, 3))
    runs = {r.batch_size: r for r in grid.make_runs(sweep_config) if r.loss == "softmax"}
    assert sweep.fit_and_measure(sweep_config, runs[128]).peak_bytes == 7
    assert asked == [(128, 2**30)] and runs[128].config.grad_accum.micro_batches == 4
    assert runs[128].config.grad_accum.mode == "gradcache"
    # A batch the config names keeps its micro-batches and is only measured.
    assert sweep.fit_and_measure(sweep_config, runs[64]).peak_bytes == 5
    assert compiled == [64] and runs[64].config.grad_accum.micro_batches == 2
