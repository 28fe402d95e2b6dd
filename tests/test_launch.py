"""The local multi-process launcher: a real 2-process JAX job over gloo, failure handling,
signal forwarding and argument errors.

python -m pytest tests/test_launch.py
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reasonclip_jax.tools import launch

pytestmark = pytest.mark.multiprocess

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

# Each process contributes [2i+1, 2i+2] to a global array over 4 devices: the sum is 10.
JOB = """
import numpy as np
from reasonclip_jax.parallel import distributed

distributed.initialize()

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

counts = (jax.process_count(), jax.device_count(), jax.local_device_count())
assert counts == (2, 4, 2), counts
indices = multihost_utils.process_allgather(np.int32(jax.process_index()))
mesh = Mesh(np.array(jax.devices()), ("data",))
local = np.arange(1, 3, dtype=np.float32) + 2 * jax.process_index()
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
print(f"result indices={indices.tolist()} sum={float(total)} shape={x.shape}")
"""

# Process 1 crashes after a first collective; process 0 ignores SIGTERM, starts a grandchild
# in its process group, and blocks in a second collective that can never complete.
CRASH = """
import os, signal, subprocess, time
import numpy as np
from reasonclip_jax.parallel import distributed

distributed.initialize()

import jax
from jax.experimental import multihost_utils

multihost_utils.process_allgather(np.int32(0))
print(f"pid {os.getpid()}", flush=True)
if jax.process_index() == 1:
    os._exit(3)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(f"pid {subprocess.Popen(['sleep', '300']).pid}", flush=True)
time.sleep(0.5)
multihost_utils.process_allgather(np.int32(0))
"""

# A stand-in trainer that saves and exits when told to stop.
SAVER = """
import signal, sys, time

def stop(signum, frame):
    print(f"saved on {signal.Signals(signum).name}", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
time.sleep(60)
"""


def write_script(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def is_running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_with_device_count_replaces_only_the_count() -> None:
    flags = "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8 --xla_bar"
    assert launch.with_device_count(flags, 2) == (
        "--xla_cpu_foo=1 --xla_bar --xla_force_host_platform_device_count=2"
    )
    assert launch.with_device_count("", 3) == "--xla_force_host_platform_device_count=3"


def test_two_processes_agree_on_collectives(tmp_path: Path) -> None:
    out = io.StringIO()
    script = write_script(tmp_path, "job.py", JOB)
    code = launch.launch([sys.executable, script], 2, 2, env=ENV, stdout=out, stderr=out)
    text = out.getvalue()
    assert code == 0, text
    expected = "result indices=[0, 1] sum=10.0 shape=(4,)"
    assert f"[p0] {expected}" in text.splitlines(), text
    assert f"[p1] {expected}" in text.splitlines(), text


def test_failure_stops_a_process_blocked_in_a_collective(tmp_path: Path) -> None:
    out = io.StringIO()
    script = write_script(tmp_path, "crash.py", CRASH)
    start = time.monotonic()
    code = launch.launch(
        [sys.executable, script], 2, 2, kill_timeout=2.0, env=ENV, stdout=out, stderr=out
    )
    elapsed = time.monotonic() - start
    text = out.getvalue()
    assert code == 3, text
    assert elapsed < 60, text
    assert "launch: process 1 exited with code 3; stopping the others" in text
    # A child's pid line may follow a partial line of Gloo's own logging on the same pipe.
    pids = [int(p) for p in re.findall(r"^\[p\d\] .*?pid (\d+)$", text, re.MULTILINE)]
    assert len(pids) == 3, text  # both processes and process 0's grandchild
    assert not [pid for pid in pids if is_running(pid)], text


def test_sigterm_is_forwarded_and_launcher_exits_non_zero(tmp_path: Path) -> None:
    script = write_script(tmp_path, "saver.py", SAVER)
    command = [sys.executable, "-m", "reasonclip_jax.launch", "--processes", "2"]
    command += ["--devices-per-process", "1", "--", sys.executable, script]
    proc = subprocess.Popen(
        command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    ready = {proc.stdout.readline().strip() for _ in range(2)}
    assert ready == {"[p0] ready", "[p1] ready"}
    proc.terminate()
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1, stderr
    assert {"[p0] saved on SIGTERM", "[p1] saved on SIGTERM"} <= set(stdout.splitlines())
    assert "launch: received SIGTERM; forwarding it to the processes" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--processes", "2", "--devices-per-process", "1"], "no command to run"),
        (["--processes", "2", "--devices-per-process", "1", "--"], "no command to run"),
        (["--processes", "0", "--devices-per-process", "1", "--", "true"], "--processes"),
        (["--processes", "1", "--devices-per-process", "0", "--", "true"], "--devices-per"),
        (["--processes", "x", "--devices-per-process", "1", "--", "true"], "--processes"),
        (["--processes", "1", "--devices-per-process", "1", "--", "/no/such/cmd"], "cannot"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: list[str], message: str) -> None:
    command = [sys.executable, "-m", "reasonclip_jax.launch", *args]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
