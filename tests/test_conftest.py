"""The test session's own setup: always 8 simulated CPU devices, whatever XLA_FLAGS held.

    python -m pytest tests/test_conftest.py
"""

import os
import subprocess
import sys

import conftest
import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")


def test_session_has_8_cpu_devices():
    assert len(jax.devices()) == conftest.NUM_DEVICES == 8
    assert {d.platform for d in jax.devices()} == {"cpu"}
    counts = [f for f in os.environ["XLA_FLAGS"].split() if "device_count" in f]
    assert counts == ["--xla_force_host_platform_device_count=8"]


def test_with_device_count_replaces_an_existing_count():
    flags = "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=2 --xla_foo=1"
    assert conftest.with_device_count(flags, 8) == (
        "--xla_dump_to=/tmp/x --xla_foo=1 --xla_force_host_platform_device_count=8"
    )
    assert conftest.with_device_count("", 8) == "--xla_force_host_platform_device_count=8"
    assert conftest.with_device_count("  ", 3) == "--xla_force_host_platform_device_count=3"


def test_preset_xla_flags_still_give_8_devices(tmp_path):
    # A machine that sets XLA_FLAGS (here a dump directory and a different device count):
    # importing conftest first still gives jax 8 devices and keeps the other flag.
    env = {**os.environ, "XLA_FLAGS": f"--xla_dump_to={tmp_path} "
           "--xla_force_host_platform_device_count=2", "PYTHONPATH": TESTS}
    code = "import conftest, jax, os; print(len(jax.devices())); print(os.environ['XLA_FLAGS'])"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    count, flags = proc.stdout.splitlines()[-2:]
    assert count == "8"
    assert flags == f"--xla_dump_to={tmp_path} --xla_force_host_platform_device_count=8"


def test_session_stops_when_jax_started_with_fewer_devices():
    # jax initialised (1 device) before pytest loads conftest: the run must stop, not skip.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = ("import jax; jax.devices(); import sys, pytest; sys.exit(pytest.main(["
            "'-q', '-p', 'no:cacheprovider', "
            "'tests/test_conftest.py::test_with_device_count_replaces_an_existing_count']))")
    proc = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": REPO},
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 4, output  # pytest.ExitCode.USAGE_ERROR
    assert "the tests need 8 jax devices, got 1" in output, output
    assert "passed" not in output
