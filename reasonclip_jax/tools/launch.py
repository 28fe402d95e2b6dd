r"""Runs a multi-process JAX job on this machine: P processes of D simulated CPU devices each.

    python -m reasonclip_jax.launch --processes 2 --devices-per-process 4 -- \
        python -m reasonclip_jax.train --config configs/demo.py --workdir /tmp/w

Every process gets `JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT`, `JAX_NUM_PROCESSES=P`,
`JAX_PROCESS_ID=i`, `JAX_PLATFORMS=cpu` and `--xla_force_host_platform_device_count=D` in
`XLA_FLAGS`, which is what `reasonclip_jax.parallel.distributed.initialize()` reads to join the job
(collectives over gloo). Output comes back line by line, prefixed `[p0] `, `[p1] `, ...

Exit status: 0 when every process exits 0. When one fails (or is killed), the others get
SIGTERM and, `--kill-timeout` seconds later, SIGKILL of their whole process group: a process
whose peer died can block in a collective or in JAX's shutdown barrier, where a Python
SIGTERM handler never runs. SIGINT/SIGTERM sent to the launcher are forwarded to the processes
(so trainers can save a checkpoint) under the same deadline; a second signal kills at once.
The launcher then exits with the code of the first process that failed, or 1. Whatever else
runs in a process's group when that process exits is killed, so nothing started here outlives
the launcher.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO

from reasonclip_jax.errors import UserError
from reasonclip_jax.tools import cli

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
POLL_SECONDS = 0.05
# After SIGKILL a process can still be stuck in uninterruptible sleep; stop waiting after this.
REAP_SECONDS = 5.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_device_count(xla_flags: str, devices: int) -> str:
    """`xla_flags` with its host device count (if any) replaced by `devices`, others kept."""
    kept = [f for f in xla_flags.split() if f.split("=", 1)[0] != DEVICE_COUNT_FLAG]
    return " ".join([*kept, f"{DEVICE_COUNT_FLAG}={devices}"])


def process_env(
    base: Mapping[str, str], address: str, processes: int, process_id: int, devices: int
) -> dict[str, str]:
    """The environment of process `process_id`: `base` plus what joins it to the job."""
    env = dict(base)
    env.update(
        JAX_COORDINATOR_ADDRESS=address,
        JAX_NUM_PROCESSES=str(processes),
        JAX_PROCESS_ID=str(process_id),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=with_device_count(env.get("XLA_FLAGS", ""), devices),
    )
    # Python children write to a pipe; without this their lines arrive in late bursts.
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def check_args(command: Sequence[str], processes: int, devices: int, kill_timeout: float) -> None:
    if not command:
        raise UserError("no command to run: put it after `--`, e.g. `-- python -m pkg.module`")
    if processes < 1:
        raise UserError(f"--processes must be at least 1, got {processes}")
    if devices < 1:
        raise UserError(f"--devices-per-process must be at least 1, got {devices}")
    if kill_timeout < 0:
        raise UserError(f"--kill-timeout must be non-negative, got {kill_timeout}")


def signal_group(pid: int, sig: int) -> None:
    """Sends `sig` to the process group led by `pid` (the child's group, not ours)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def has_exited(pid: int) -> bool:
    """Whether child `pid` has exited, leaving it unreaped so its pid (and group id) stays ours."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def stream_lines(pipe: IO[bytes], prefix: str, out: IO[str], lock: threading.Lock) -> None:
    """Copies `pipe` to `out` one whole line at a time, each line prefixed."""
    with pipe:
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            with lock:
                out.write(f"{prefix}{line}\n")
                out.flush()


@contextlib.contextmanager
def caught_signals(signums: Sequence[int], received: list[int]) -> Iterator[None]:
    """Appends each signal in `signums` to `received` instead of acting on it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, lambda signum, _: received.append(signum)) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def launch(
    command: Sequence[str],
    processes: int,
    devices_per_process: int,
    *,
    port: int | None = None,
    kill_timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Runs `processes` copies of `command` as one JAX job and returns the exit status.

    Returns 0 if all exit 0, else the first failing process's code (1 if it was killed, or if
    the launcher was interrupted). `env` defaults to `os.environ`; `stdout`/`stderr` (default
    `sys.stdout`/`sys.stderr`) receive the prefixed lines of the processes' streams, and
    `stderr` also the launcher's own one-line reports. Raises `UserError` for bad arguments or
    a command that cannot be started.
    """
    check_args(command, processes, devices_per_process, kill_timeout)
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    address = f"127.0.0.1:{port if port is not None else free_port()}"
    base_env = os.environ if env is None else env
    lock = threading.Lock()

    def report(message: str) -> None:
        with lock:
            err.write(f"launch: {message}\n")
            err.flush()

    children: list[subprocess.Popen[bytes]] = []
    readers: list[threading.Thread] = []
    received: list[int] = []
    with caught_signals((signal.SIGINT, signal.SIGTERM), received):
        try:
            for i in range(processes):
                children.append(
                    subprocess.Popen(
                        list(command),
                        env=process_env(base_env, address, processes, i, devices_per_process),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        start_new_session=True,
                    )
                )
        except OSError as e:
            for child in children:
                signal_group(child.pid, signal.SIGKILL)
                child.communicate()
            raise UserError(f"cannot start {command[0]!r}: {e.strerror or e}") from None

        for i, child in enumerate(children):
            for pipe, sink in ((child.stdout, out), (child.stderr, err)):
                assert pipe is not None
                reader = threading.Thread(
                    target=stream_lines, args=(pipe, f"[p{i}] ", sink, lock), daemon=True
                )
                reader.start()
                readers.append(reader)

        status = supervise(children, received, kill_timeout, report)

    for reader in readers:
        reader.join(timeout=REAP_SECONDS)
    return status


def supervise(
    children: Sequence[subprocess.Popen[bytes]],
    received: list[int],
    kill_timeout: float,
    report: Callable[[str], None],
) -> int:
    """Waits for `children`, stopping them all when one fails or a signal arrives."""
    running = list(range(len(children)))
    first_failure: int | None = None
    handled_signals = 0
    kill_at: float | None = None  # when still-running processes get SIGKILL
    kill_reason = f"still running {kill_timeout:g} s after being asked to stop"
    give_up_at: float | None = None  # when we stop waiting for killed processes

    def signal_running(sig: int) -> None:
        for i in running:
            signal_group(children[i].pid, sig)

    while running:
        now = time.monotonic()
        for i in list(running):
            pid = children[i].pid
            if not has_exited(pid):
                continue
            # The pid is still unreaped, so the group id cannot have been reused.
            signal_group(pid, signal.SIGKILL)
            running.remove(i)
            code = children[i].wait()
            if code == 0 or first_failure is not None:
                continue
            first_failure = i
            if kill_at is None:
                report(f"process {i} {describe(code)}; stopping the others")
                signal_running(signal.SIGTERM)
                kill_at = now + kill_timeout
            else:
                report(f"process {i} {describe(code)}")

        while handled_signals < len(received):
            name = signal.Signals(received[handled_signals]).name
            handled_signals += 1
            if handled_signals == 1 and kill_at is None:
                report(f"received {name}; forwarding it to the processes")
                signal_running(received[0])
                kill_at = now + kill_timeout
            elif give_up_at is None:
                kill_at, kill_reason = now, f"received {name} while stopping"

        if not running:
            break
        if kill_at is not None and now >= kill_at and give_up_at is None:
            report(f"killing processes {running}: {kill_reason}")
            signal_running(signal.SIGKILL)
            give_up_at = now + REAP_SECONDS
        if give_up_at is not None and now >= give_up_at:
            report(f"processes {running} did not exit after SIGKILL; giving up on them")
            break
        time.sleep(POLL_SECONDS)

    if first_failure is not None:
        code = children[first_failure].returncode
        return code if code > 0 else 1
    return 1 if received else 0


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Splits `argv` at the first `--`: launcher flags before it, the command after it."""
    argv = list(argv)
    if "--" not in argv:
        flags, command = argv, []
    else:
        split = argv.index("--")
        flags, command = argv[:split], argv[split + 1 :]
    parser = cli.ArgumentParser(
        prog="python -m reasonclip_jax.launch",
        usage="%(prog)s --processes P --devices-per-process D [options] -- COMMAND [ARGS...]",
        description=__doc__,
    )
    parser.add_argument(
        "--processes", type=int, required=True, metavar="P", help="number of processes"
    )
    parser.add_argument(
        "--devices-per-process",
        type=int,
        required=True,
        metavar="D",
        help="simulated CPU devices in each process",
    )
    parser.add_argument(
        "--port", type=int, metavar="N", help="coordinator port (default: a free one)"
    )
    parser.add_argument(
        "--kill-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL when stopping (default 10)",
    )
    args = parser.parse_args(flags)
    if args.port is not None and not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    return args, command


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> None:
    args, command = parse_args(sys.argv[1:] if argv is None else argv)
    sys.exit(
        launch(
            command,
            args.processes,
            args.devices_per_process,
            port=args.port,
            kill_timeout=args.kill_timeout,
        )
    )


if __name__ == "__main__":
    main()
