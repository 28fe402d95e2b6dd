"""A run whose workdir is a bucket (`gs://`, the local Cloud Storage emulator): preempted,
killed in the middle of a save, resumed bitwise; its best weights evaluated, encoded and
exported straight from the bucket, as from a disk."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_trainer import ROOT, final_params, logged, scenes, small_config  # noqa: F401

from reasonclip_jax import paths
from reasonclip_jax.tools import convert, encode, evaluate
from reasonclip_jax.train import checkpoint, trainer

pytestmark = [pytest.mark.gcs, pytest.mark.slow]

STEPS = 8


def _start(workdir: str, data: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "reasonclip_jax.train",
            f"--config=configs/demo.py:{data},stage1,smoke", f"--workdir={workdir}",
            f"--config.total_steps={STEPS}"]
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _bucket_rows(workdir: str) -> list[dict]:
    return [json.loads(line)
            for line in paths.Path(workdir, "metrics.jsonl").read_text().splitlines()]


def _signal_at_write(gcs, proc_box: list, name: str, count: int, signum: int):
    """Sends `signum` to the trainer while it waits for its `count`-th write of `name`;
    with SIGKILL, the write itself never lands (the process is dead before it)."""
    from gcp_storage_emulator.exceptions import NotFound

    seen = []

    def hook(bucket: str, written: str) -> None:
        if written != name:
            return
        seen.append(written)
        if len(seen) == count:
            proc_box[0].send_signal(signum)
            if signum == signal.SIGKILL:
                proc_box[0].wait()
                raise NotFound(name)

    return gcs.on_create(hook)


def test_a_bucket_run_preempted_then_killed_in_a_save_resumes_bitwise(scenes, gcs, tmp_path):  # noqa: F811
    ref_dir = str(tmp_path / "ref")
    trainer.train(small_config(scenes, total_steps=STEPS), ref_dir)
    workdir = gcs.uri("runs", "s1")
    proc: list = [None]

    # Preemption: SIGTERM while step 3's metrics are being written; the trainer saves step 3
    # (checkpoints every 2 steps otherwise) and exits cleanly.
    remove = _signal_at_write(gcs, proc, "runs/s1/metrics.jsonl", 3, signal.SIGTERM)
    try:
        proc[0] = _start(workdir, scenes)
        out, _ = proc[0].communicate(timeout=600)
    finally:
        remove()
    assert proc[0].returncode == 0 and "preempted" in out, out[-3000:]
    ckpt_dir = f"{workdir}/checkpoints"
    assert checkpoint.latest_train_step(ckpt_dir) == 3

    # Killed during the next save (step 4): every object of it is written but orbax's commit
    # marker, which the kill stops.
    remove = _signal_at_write(gcs, proc, "runs/s1/checkpoints/4/commit_success.txt", 1,
                              signal.SIGKILL)
    try:
        proc[0] = _start(workdir, scenes)
        out, _ = proc[0].communicate(timeout=600)
    finally:
        remove()
    assert proc[0].returncode == -signal.SIGKILL, out[-3000:]
    torn = gcs.objects("runs/s1/checkpoints/4/")
    assert "runs/s1/checkpoints/4/params/manifest.ocdbt" in torn
    assert "runs/s1/checkpoints/4/commit_success.txt" not in torn
    assert checkpoint.latest_train_step(ckpt_dir) == 3
    assert checkpoint.resolve_step_dir(workdir) == f"{ckpt_dir}/3"

    # Resumed from step 3, as from a disk: the same parameters as the uninterrupted run.
    trainer.train(small_config(scenes, total_steps=STEPS), workdir)
    steps = [r["step"] for r in _bucket_rows(workdir)]
    assert steps[-1] == STEPS and steps[:3] == [1, 2, 3] and 4 in steps[3:]
    assert checkpoint.resolve_step_dir(workdir) == f"{ckpt_dir}/{STEPS}"
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir), final_params(ref_dir))
    np.testing.assert_allclose(_bucket_rows(workdir)[-1]["loss"], logged(ref_dir)[-1]["loss"],
                               rtol=0)
    assert json.loads(paths.Path(workdir, "config.json").read_text())["total_steps"] == STEPS


def test_a_bucket_run_keeps_its_best_and_exports_encodes_evaluates_from_it(
        scenes, gcs, tmp_path):  # noqa: F811
    s1 = gcs.uri("runs", "best-s1")
    trainer.train(small_config(scenes, total_steps=2, log_record_indices=True), s1)
    # init_from a bucket; best/ kept in the bucket.
    workdir = gcs.uri("runs", "best-s2")
    trainer.train(small_config(scenes, "stage2", "smoke_eval", init_from=s1), workdir)
    rows = _bucket_rows(workdir)
    best_step = checkpoint.resolve_step_dir(f"{workdir}/best")
    assert best_step == f"{workdir}/best/3" and checkpoint.finished(best_step)
    params = final_params(workdir)
    jax.tree.map(np.testing.assert_array_equal, checkpoint.load_model(f"{workdir}/best")[0],
                 params)
    assert checkpoint.read_best_metric(f"{workdir}/best")["step"] == 3
    record_log = paths.Path(s1, "record_indices", "process_0.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in record_log] == [1, 2]

    # The same weights on a disk, written by the reference (local) path of each tool.
    local_best = str(tmp_path / "best")
    checkpoint.save_model(local_best, checkpoint.load_model(f"{workdir}/best")[0],
                          checkpoint.load_model_config(f"{workdir}/best"))

    # evaluate: the in-run evaluation's metrics; its outputs written into the bucket.
    out = gcs.uri("evals", "metrics.json")
    metrics = evaluate.main(["--checkpoint", f"{workdir}/best", "--eval",
                             f"rclip_bench:{scenes}/bench", "split=test", "max_examples=32",
                             "name=scenes_bench", "--batch-size", "16", "--output", out])
    assert metrics["scenes_bench/accuracy"] == pytest.approx(
        rows[-1]["scenes_bench/accuracy"], abs=1e-9)
    assert json.loads(paths.Path(out).read_text()) == metrics
    items = paths.Path(gcs.uri("evals", "metrics.items.jsonl")).read_text().splitlines()
    assert len(items) == metrics["scenes_bench/num_sets"]

    # encode: a bucket checkpoint and output equal the disk's.
    texts = tmp_path / "texts.txt"
    texts.write_text("a red square\na blue circle\n")
    encode.main(["--checkpoint", f"{workdir}/best", "--texts-file", str(texts),
                 "--output", gcs.uri("evals", "e.npz")])
    encode.main(["--checkpoint", local_best, "--texts-file", str(texts),
                 "--output", str(tmp_path / "e.npz")])
    with paths.Path(gcs.uri("evals", "e.npz")).open("rb") as f:
        remote = dict(np.load(f))
    local = dict(np.load(tmp_path / "e.npz"))
    assert remote.keys() == local.keys() and remote["text_embeds"].shape == (2, 64)
    for key in local:
        np.testing.assert_array_equal(remote[key], local[key])

    # export: byte-identical weights; the provenance names the bucket run.
    info = convert.export_weights("hf", f"{workdir}/best", gcs.uri("release", "hf"))
    convert.export_weights("hf", local_best, str(tmp_path / "hf"))
    exported = paths.Path(gcs.uri("release", "hf", "model.safetensors")).read_bytes()
    assert exported == (tmp_path / "hf" / "model.safetensors").read_bytes()
    assert info["source"]["workdir"] == workdir and info["source"]["step"] == 3
    assert info["training_config"]["init_from"] == s1
    assert paths.Path(gcs.uri("release", "hf", convert.PROVENANCE_FILE)).is_file()
    convert.export_weights("openai", f"{workdir}/best", gcs.uri("release", "w.safetensors"))
    assert paths.Path(gcs.uri("release", "w.safetensors.provenance.json")).is_file()
    # import: an HF directory in the bucket into a checkpoint in the bucket, the same weights.
    back = gcs.uri("release", "back")
    convert.import_weights("hf", gcs.uri("release", "hf"), back)
    params.pop("image_category_head"), params.pop("text_category_head")  # export drops them
    jax.tree.map(np.testing.assert_array_equal, checkpoint.load_model(back)[0], params)
