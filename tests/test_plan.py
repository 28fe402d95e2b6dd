"""The memory planner: micro-batches that fit, the largest batch, the command line."""

import os
import subprocess
import sys
import types

import pytest

from configs import common
from configs.sweeps import tiny
from reasonclip_jax.errors import UserError
from reasonclip_jax.scaling import compiled_memory, memory_model, plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 2**30


def tiny_config(batch: int = 512):
    c = common.base_config()
    c.model.preset = "tiny"
    c.input.image_size, c.input.context_length, c.input.batch_size = 64, 77, batch
    return c


@pytest.mark.parametrize("text,expected", [
    ("80GiB", 80 * GiB), ("16 GB", 16 * 10**9), ("512MiB", 512 * 2**20), ("1e9", 10**9),
    ("1.5GiB", int(1.5 * GiB)),
])
def test_parse_bytes(text, expected):
    assert plan.parse_bytes(text) == expected


def test_parse_bytes_errors():
    with pytest.raises(UserError, match="give a number and a unit"):
        plan.parse_bytes("lots")


def test_micro_batch_choices_divide_the_per_device_batch():
    assert plan.micro_batch_choices(tiny_config(96), 8) == [1, 2, 3, 4, 6, 12]


@pytest.mark.slow
def test_fewest_micro_batches_is_the_smallest_count_whose_compiled_step_fits():
    import jax

    config = tiny_config(1024)
    devices = jax.devices()
    peaks = {k: compiled_memory.compile_step(plan.with_batch(config, 1024, k), devices)
             .peak_bytes for k in (1, 2)}
    assert peaks[2] < peaks[1]
    budget = (peaks[1] + peaks[2]) // 2
    target = compiled_memory.local_target(budget)
    micro, chosen = plan.fewest_micro_batches(config, target)
    assert micro == 2 and chosen.fits and chosen.compiled.peak_bytes == peaks[2]
    with pytest.raises(UserError, match="does not fit"):
        plan.fewest_micro_batches(config, compiled_memory.local_target(10 * 2**20))


def test_unrolled_towers_are_compiled_whatever_the_estimate(monkeypatch):
    # Scanned towers: a count whose estimate is far above the memory is not compiled.
    # Unrolled ones: XLA keeps fewer residuals than the estimate counts, so every count is.
    config = tiny_config(1024)
    target = compiled_memory.local_target(GiB)
    monkeypatch.setattr(memory_model, "estimate",
                        lambda *args, **kwargs: types.SimpleNamespace(peak=100 * GiB))
    compiled = []

    def evaluate(config, target, batch_size, micro):
        compiled.append(micro)
        return plan.Plan(batch_size, micro, None, None, True)

    monkeypatch.setattr(plan, "evaluate", evaluate)
    with pytest.raises(UserError, match="does not fit"):
        plan.fewest_micro_batches(config, target)
    assert compiled == []
    config.model.scan_unroll = 12
    assert plan.fewest_micro_batches(config, target)[0] == 1 and compiled == [1]


def test_largest_batch_on_an_analytic_target():
    config = tiny_config()
    target = compiled_memory.analytic_target(8, GiB)
    largest = plan.largest_batch(config, target)
    assert largest.compiled is None and largest.fits
    estimate = lambda b: memory_model.estimate(  # noqa: E731
        plan.with_batch(config, b, 1), 8, "gpu").peak
    assert estimate(largest.batch_size) <= GiB < estimate(largest.batch_size + 8)
    assert largest.batch_size % 8 == 0


def test_analytic_target_needs_micro_batches_for_a_large_batch():
    config = tiny_config()
    target = compiled_memory.analytic_target(8, 512 * 2**20)
    micro, p = plan.fewest_micro_batches(config, target, batch_size=4096)
    assert micro > 1 and p.fits and p.estimate.peak <= target.device_memory
    fewer = max(k for k in plan.micro_batch_choices(plan.with_batch(config, 4096, 1), 8)
                if k < micro)
    smaller = memory_model.estimate(plan.with_batch(config, 4096, fewer), 8, "gpu")
    assert smaller.peak > target.device_memory


@pytest.mark.slow
def test_plan_command_analytic_table_and_errors():
    env = dict(os.environ)
    command = [sys.executable, "-m", "reasonclip_jax.plan", "--config",
               "configs/sweeps/tiny.py:/data/scenes", "--sweep"]
    ok = subprocess.run([*command, "--devices", "8", "--device-memory", "2GiB"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    rows = [line for line in ok.stdout.splitlines() if line.startswith("| ")]
    batches = [row.split("|")[1].strip() for row in rows[1:]]
    assert batches == [str(b) for b in tiny.get_config("/data/scenes").batch_sizes]
    assert "largest global batch without micro-batches:" in ok.stdout
    bad = subprocess.run([*command, "--devices", "8", "--device-memory", "much"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: memory 'much': give a number and a unit, e.g. 16GiB, 80GB, 512MiB")


@pytest.mark.slow
def test_plan_command_on_two_tpu_slices():
    """`--slices 2`: two v5e 2x2 slices (libtpu's description, nothing compiled here), the
    data axis over them; `--slices` without a topology is refused."""
    command = [sys.executable, "-m", "reasonclip_jax.plan", "--config",
               "configs/sweeps/tiny.py:/data/scenes", "--sweep", "--nocompile"]
    ok = subprocess.run([*command, "--topology", "v5e:2x2", "--slices", "2"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.startswith("target: 2 x v5e:2x2 (8 devices, 16.0 GiB each)")
    assert "'dcn': {'data': -1}" in ok.stdout.splitlines()[0]
    rows = [line for line in ok.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(tiny.get_config("/data/scenes").batch_sizes)  # + header
    bad = subprocess.run([*command, "--slices", "2"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: --slices N describes TPU slices: give --topology too")


def test_unknown_topology_is_a_user_error():
    with pytest.raises(UserError, match="topology 'v9z:1x1': use CHIP:AxB"):
        compiled_memory.tpu_target("v9z:1x1")


def test_out_of_memory_message_of_the_tpu_compiler():
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
               "temporaries (20.94G) exceeds available HBM (15.75G).")
    assert compiled_memory.out_of_memory_bytes(message) == int(20.94 * GiB)
    assert compiled_memory.out_of_memory_bytes("INTERNAL: something else") is None
    refused = compiled_memory.CompiledMemory(0, 0, 0, 5 * GiB, out_of_memory=True)
    assert refused.peak_bytes == 5 * GiB


def test_the_compilers_own_peak_replaces_the_sum_where_it_reports_one():
    by_sum = compiled_memory.CompiledMemory(3 * GiB, 2 * GiB, 2 * GiB, 6 * GiB)
    assert by_sum.peak_bytes == 9 * GiB
    on_tpu = compiled_memory.CompiledMemory(3 * GiB, 2 * GiB, 2 * GiB, 6 * GiB,
                                            compiler_peak_bytes=7 * GiB)
    assert on_tpu.peak_bytes == 7 * GiB


def test_the_largest_batch_search_keeps_whole_loss_tiles():
    c = common.base_config()
    c.loss.impl, c.loss.tile_size = "tiled_ring", 1024
    assert plan.loss_rows(c, 3711) == 3072 and plan.loss_rows(c, 1000) == 1000
    c.loss.impl = "ring"
    assert plan.loss_rows(c, 3711) == 3711
