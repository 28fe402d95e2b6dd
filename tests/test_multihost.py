"""Multi-host training on one machine: 2 JAX processes x 4 CPU devices (gloo collectives)
through the launcher, against 1 process x 8 devices."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from test_trainer import final_params, logged, small_config

from reasonclip_jax.train import checkpoint, trainer

pytestmark = pytest.mark.multiprocess
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH = dict(data=2, fsdp=4, tensor=1)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from data_pipeline import build

    out = str(tmp_path_factory.mktemp("data") / "scenes")
    build.run(["--source", "scenes", "--num-scenes", "64", "--seed", "2", "--output", out])
    return out


def config_8_devices(data: str, steps: int):
    c = small_config(data, "stage1", "smoke_eval", total_steps=steps, num_devices=8, mesh=MESH)
    c.log_record_indices = True
    return c


def launcher_command(data: str, workdir: str, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "reasonclip_jax.launch", "--processes", "2",
            "--devices-per-process", "4", "--kill-timeout", "5", "--",
            sys.executable, "-m", "reasonclip_jax.train",
            f"--config=configs/demo.py:{data},stage1,smoke_eval", f"--workdir={workdir}",
            f"--config.total_steps={steps}", "--config.num_devices=-1",
            f"--config.mesh.data={MESH['data']}", f"--config.mesh.fsdp={MESH['fsdp']}",
            "--config.log_record_indices=True", *extra]


def start(data: str, workdir: str, steps: int, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.Popen(launcher_command(data, workdir, steps, *extra), cwd=ROOT,
                            env={**env, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def record_indices(workdir: str, process: int) -> dict[int, list[int]]:
    with open(os.path.join(workdir, "record_indices", f"process_{process}.jsonl")) as f:
        return {r["step"]: r["record_index"] for r in map(json.loads, f)}


def assert_params_close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5), a, b)


@pytest.fixture(scope="module")
def one_process_run(scenes, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("one") / "run")
    trainer.train(config_8_devices(scenes, 6), workdir)
    return workdir


def test_two_processes_equal_one(scenes, one_process_run, tmp_path):
    workdir = str(tmp_path / "two")
    proc = start(scenes, workdir, 6, "--verbose")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    losses = [m["loss"] for m in logged(workdir) if "loss" in m]  # evals log their own rows
    np.testing.assert_allclose(
        losses, [m["loss"] for m in logged(one_process_run) if "loss" in m], rtol=1e-5)
    assert len(losses) == 6  # metrics written once, by process 0
    # Evaluators under 2 processes: the same benchmark numbers as 1 process.
    two, one = logged(workdir)[-1], logged(one_process_run)[-1]
    assert two["scenes_bench/num_sets"] == one["scenes_bench/num_sets"] == 160
    # Weights equal to fp32 rounding: at most a near-tie of one set may differ.
    assert two["scenes_bench/accuracy"] == pytest.approx(one["scenes_bench/accuracy"], abs=0.007)
    # ... and each process decoded only its half of the benchmark's 32 images.
    for p in (0, 1):
        assert f"[p{p}] " in out and f"process {p} decoded 16 of 32 images" in out
    assert_params_close(final_params(workdir), final_params(one_process_run))
    # Each process fed a disjoint half of every global batch: together the 1-process batch.
    p0, p1, ref = (record_indices(workdir, 0), record_indices(workdir, 1),
                   record_indices(one_process_run, 0))
    for step in range(1, 7):
        assert len(p0[step]) == len(p1[step]) == 8
        assert sorted(p0[step] + p1[step]) == sorted(ref[step])
    assert not os.path.exists(os.path.join(workdir, "record_indices", "process_2.jsonl"))


def _wait_for_step(workdir: str, proc: subprocess.Popen, step: int, timeout: float = 400):
    start_time = time.time()
    path = os.path.join(workdir, "metrics.jsonl")
    while not (os.path.exists(path) and logged(workdir) and logged(workdir)[-1]["step"] >= step):
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.time() - start_time < timeout, "timed out"
        time.sleep(0.1)


def test_checkpoint_of_two_processes_resumes_in_one(scenes, one_process_run, tmp_path):
    workdir = str(tmp_path / "preempted")
    proc = start(scenes, workdir, 6)
    _wait_for_step(workdir, proc, 2)
    proc.send_signal(signal.SIGTERM)  # the launcher forwards it: both trainers save and exit
    out, _ = proc.communicate(timeout=120)
    saved = checkpoint.latest_train_step(os.path.join(workdir, "checkpoints"))
    assert saved is not None and 2 <= saved < 6, out[-4000:]
    trainer.train(config_8_devices(scenes, 6), workdir)  # one process, 8 devices
    assert logged(workdir)[-1]["step"] == 6
    assert_params_close(final_params(workdir), final_params(one_process_run))


def test_killed_process_stops_the_job_and_relaunch_resumes(scenes, one_process_run, tmp_path):
    import psutil

    workdir = str(tmp_path / "killed")
    proc = start(scenes, workdir, 6)
    _wait_for_step(workdir, proc, 3)
    trainers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                if "reasonclip_jax.train" in " ".join(c.cmdline())]
    assert len(trainers) == 2
    killed_at = time.time()
    trainers[1].send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode != 0
    assert time.time() - killed_at < 60, out[-4000:]
    assert not any(t.is_running() and t.status() != psutil.STATUS_ZOMBIE for t in trainers)
    relaunch = start(scenes, workdir, 6)
    out, _ = relaunch.communicate(timeout=600)
    assert relaunch.returncode == 0, out[-4000:]
    assert "resumed from step" in out
    assert_params_close(final_params(workdir), final_params(one_process_run))


EVAL_SCRIPT = """
import functools, json, sys
import jax
from reasonclip_jax import evaluators
from reasonclip_jax.evaluators.encoder import Encoder
from reasonclip_jax.models.clip import CLIP, init_params
from reasonclip_jax.parallel import distributed, sharding
from reasonclip_jax.train import checkpoint

distributed.initialize()
ckpt, bench, out = sys.argv[1:4]
params, config = checkpoint.load_model(ckpt)
mesh = sharding.make_mesh(dict(data=2, fsdp=4, tensor=1))
boxed = jax.eval_shape(functools.partial(init_params, CLIP(config)), jax.random.key(0))
shardings = sharding.logical_shardings(boxed, mesh)
params = jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i]),
                      params, shardings)
encoder = Encoder(params, config, 16, mesh=mesh)
evals = [dict(type="rclip_bench", name="bench", data_dir=bench, split="test"),
         dict(type="retrieval", name="s1", data_dir=bench.replace("bench", "stage1"),
              split="train", caption_field="desc", max_examples=40)]
metrics = evaluators.run_evaluators(evals, encoder)
if jax.process_index() == 0:
    with open(out, "w") as f:
        json.dump(metrics, f)
"""


def test_two_process_evaluation_equals_one_process(scenes, one_process_run, tmp_path):
    """The same weights, sharded over 2 processes x 4 devices or 1 x 8: the same metrics;
    each process decodes only its share of the images."""
    ckpt, bench = os.path.join(one_process_run, "checkpoints"), os.path.join(scenes, "bench")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    one = subprocess.run(
        [sys.executable, "-c", EVAL_SCRIPT, ckpt, bench, str(tmp_path / "one.json")],
        cwd=ROOT, env={**env, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
                       "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
        capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "reasonclip_jax.launch", "--processes", "2",
         "--devices-per-process", "4", "--", sys.executable, "-c", EVAL_SCRIPT, ckpt, bench,
         str(tmp_path / "two.json")],
        cwd=ROOT, env={**env, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    with open(tmp_path / "one.json") as f, open(tmp_path / "two.json") as g:
        metrics_one, metrics_two = json.load(f), json.load(g)
    assert metrics_one.keys() == metrics_two.keys() and metrics_one["bench/num_sets"] > 0
    for key, value in metrics_one.items():
        assert metrics_two[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.slow
def test_multi_slice_mesh_with_processes_as_slices_equals_one(scenes, one_process_run,
                                                               tmp_path):
    # Each process stands in for a slice: data crosses them (DCN), fsdp stays within each.
    workdir = str(tmp_path / "slices")
    command = [a for a in launcher_command(scenes, workdir, 6) if "mesh.data" not in a]
    command += ["--config.mesh.dcn.data=2", "--config.mesh.data=1"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(command, cwd=ROOT, env={**env, "PYTHONPATH": ROOT}, timeout=600,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert done.returncode == 0, done.stdout[-4000:]
    for p in (0, 1):
        assert (f"[p{p}] " in done.stdout and "mesh {'data': 2, 'fsdp': 4, 'tensor': 1} over "
                "2 slices" in done.stdout)
    losses = [m["loss"] for m in logged(workdir) if "loss" in m]
    np.testing.assert_allclose(
        losses, [m["loss"] for m in logged(one_process_run) if "loss" in m], rtol=1e-5)
    assert_params_close(final_params(workdir), final_params(one_process_run))
    # Data position 0 is process 0's devices: the first half of each global batch is its own.
    p0, p1, ref = (record_indices(workdir, 0), record_indices(workdir, 1),
                   record_indices(one_process_run, 0))
    for step in range(1, 7):
        assert sorted(p0[step] + p1[step]) == sorted(ref[step])
