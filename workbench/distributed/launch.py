"""Start and join a multi-process JAX job on this machine; the worker-side `initialize`/`shutdown`.

`launch(target, num_processes, devices_per_process=...)` starts N Python processes running a
script (or `-m module`), each with `WORKBENCH_COORDINATOR`, `WORKBENCH_NUM_PROCESSES` and
`WORKBENCH_PROCESS_ID` in its environment (plus `JAX_PLATFORMS=cpu` and `JAX_NUM_CPU_DEVICES`), on
a free local port. Output is forwarded line by line with a `[pK]` prefix. If a process exits with
an error, the others are stopped at once and `LaunchError` reports every process's exit status
and the tail of its output; a job that outlives `timeout` is stopped the same way. Each process
runs in its own session and is stopped by its own id (its whole process group), so nothing is
left running, whatever happens in the parent.

In the worker, `initialize()` joins the job: with the launcher's variables it calls
`jax.distributed.initialize(coordinator, num_processes, process_id)`; on a real cluster (no
launcher variables) it calls `jax.distributed.initialize()` and lets JAX detect SLURM, Open MPI,
Kubernetes, ...; with neither it stays a single process. `shutdown()` waits for every process
(with a timeout) and leaves the job.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from workbench.core.numerics import check_positive_int

COORDINATOR_ENV = "WORKBENCH_COORDINATOR"
NUM_PROCESSES_ENV = "WORKBENCH_NUM_PROCESSES"
PROCESS_ID_ENV = "WORKBENCH_PROCESS_ID"
DEFAULT_TIMEOUT_S = 600.0
_TAIL_LINES = 40


class LaunchError(RuntimeError):
    """A launched process failed (or the job timed out); the message holds every process's
    exit status and last lines of output."""


class LaunchResult(NamedTuple):
    returncodes: tuple[int, ...]  # one per process, all 0
    outputs: tuple[str, ...]  # each process's full output (stdout and stderr interleaved)
    seconds: float  # wall time of the whole job
    port: int  # the coordinator port used


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bound to port 0 and released).

    Args:
        host: the interface to bind.

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Raise `LaunchError` if `port` cannot be bound on `host` (another job holds it).

    Args:
        port: the TCP port.
        host: the interface to bind.

    Raises:
        LaunchError: the port is in use.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, int(port)))
        except OSError as err:
            raise LaunchError(
                f"port {port} on {host} is in use ({err.strerror}); pass port=None to pick a free one"
            ) from None


def _reader(stream, index: int, sink, tail: collections.deque, full: list[str], lock: threading.Lock):
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        tail.append(line)
        full.append(line)
        if sink is not None and not line.startswith("[Gloo] Rank"):  # gloo's connection chatter
            with lock:
                print(f"[p{index}] {line}", file=sink, flush=True)
    stream.close()


def _stop(procs: Sequence[subprocess.Popen], grace_s: float = 5.0) -> None:
    """SIGTERM each still-running process group, then SIGKILL what is left after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in procs if p.poll() is None]
        for p in alive:
            try:
                os.killpg(p.pid, sig)  # the process's own group (start_new_session=True)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        for p in alive:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    for p in procs:  # reap, so no zombie is left behind
        try:
            p.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass


def _report(header: str, codes: Sequence[int | None], tails: Sequence[collections.deque], first: int | None) -> str:
    parts = [header]
    for i, (code, tail) in enumerate(zip(codes, tails)):
        status = "still running (stopped)" if code is None else (
            f"exit status {code}" if code >= 0 else f"killed by signal {-code}")
        mark = "  <- failed first" if i == first else ""
        lines = "\n".join(f"    {t}" for t in list(tail)[-15:]) or "    (no output)"
        parts.append(f"process {i}: {status}{mark}\n{lines}")
    return "\n".join(parts)


def launch(
    target: str | Path,
    num_processes: int,
    *,
    devices_per_process: int = 1,
    args: Sequence[str] = (),
    module: bool = False,
    port: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    echo: bool = True,
    python: str | None = None,
) -> LaunchResult:
    """Run `target` (a script path, or a module name with `module=True`) as `num_processes`
    processes of one JAX job on this machine, each with `devices_per_process` CPU devices.

    `port=None` picks a free port; a given port that is in use raises `LaunchError` before
    anything starts. `echo` forwards output to this process's stdout prefixed `[pK]`. Returns a
    `LaunchResult` when every process exits 0; otherwise stops the others at once and raises
    `LaunchError` with every process's status and last output lines. `timeout` (seconds) bounds
    the whole job.

    Args:
        target: the script path, or the module name with `module=True`.
        num_processes: the number of processes (>= 1).
        devices_per_process: CPU devices each process gets.
        args: command-line arguments passed to every process.
        module: run `target` as `python -m target`.
        port: the coordinator's port (None: a free one).
        timeout: seconds the whole job may take.
        env: extra environment variables for every process.
        cwd: the working directory of the processes.
        echo: forward the processes' output, prefixed `[pK]`.
        python: the interpreter (default this one).

    Returns:
        A `LaunchResult` (every process exited 0).

    Raises:
        FileNotFoundError: no such script.
        ValueError: a bad count.
        LaunchError: a process failed, the job timed out, or the port is in use.
    """
    num_processes = check_positive_int("num_processes", num_processes)
    devices_per_process = check_positive_int("devices_per_process", devices_per_process)
    if not timeout or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    target = str(target)
    if not module and not Path(target).is_file():
        raise FileNotFoundError(f"target: no script at {target} (pass module=True for a module name)")
    if port is None:
        port = free_port()
    else:
        check_port_free(port)
    command = [python or sys.executable, "-u", *(["-m", target] if module else [target]), *map(str, args)]
    base = dict(os.environ)
    # the processes import the same workbench as this one, wherever it was imported from
    package_root = str(Path(__file__).resolve().parents[2])
    base["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, base.get("PYTHONPATH")) if p)
    base.update(env or {})
    base.update({
        COORDINATOR_ENV: f"127.0.0.1:{port}",
        NUM_PROCESSES_ENV: str(num_processes),
        "JAX_PLATFORMS": "cpu",
        "JAX_NUM_CPU_DEVICES": str(devices_per_process),
        "PYTHONUNBUFFERED": "1",
    })
    sink = sys.stdout if echo else None
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    tails = [collections.deque(maxlen=_TAIL_LINES) for _ in range(num_processes)]
    fulls: list[list[str]] = [[] for _ in range(num_processes)]
    readers: list[threading.Thread] = []
    t0 = time.perf_counter()
    try:
        for i in range(num_processes):
            p = subprocess.Popen(
                command, env={**base, PROCESS_ID_ENV: str(i)}, cwd=cwd, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )
            procs.append(p)
            r = threading.Thread(target=_reader, args=(p.stdout, i, sink, tails[i], fulls[i], lock), daemon=True)
            r.start()
            readers.append(r)
        deadline = time.monotonic() + timeout
        first_failure = None
        while True:
            codes = [p.poll() for p in procs]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                first_failure = failed[0]
                break
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                _stop(procs)
                for r in readers:
                    r.join(timeout=5)
                raise LaunchError(_report(
                    f"job timed out after {timeout:.0f} s: every process was stopped",
                    codes, tails, None))
            time.sleep(0.05)
        if first_failure is not None:
            time.sleep(0.2)  # let a process failing at the same moment report its own error
            codes = [p.poll() for p in procs]
            _stop(procs)
            for r in readers:
                r.join(timeout=5)
            raise LaunchError(_report(
                f"process {first_failure} of {num_processes} failed; the others were stopped "
                f"(command: {' '.join(command)})", codes, tails, first_failure))
    finally:
        _stop(procs)  # a no-op when all exited; stops everything on errors and KeyboardInterrupt
    for r in readers:
        r.join(timeout=5)
    return LaunchResult(tuple(p.returncode for p in procs), tuple("\n".join(f) for f in fulls),
                        time.perf_counter() - t0, port)


# ----------------------------------------------------------------------------- worker side


class JobInfo(NamedTuple):
    process_index: int
    process_count: int
    local_devices: int
    global_devices: int
    coordinator: str | None  # None for a single process that joined no job


def _cluster_detected() -> bool:
    try:
        from jax._src import clusters  # JAX's own cluster detection (SLURM, MPI, k8s, TPU, ...)

        return any(c.is_env_present() for c in clusters.ClusterEnv._cluster_types
                   if not c.opt_in_only_method)
    except Exception:  # noqa: BLE001 - private API: fall back to "no cluster"
        return False


def initialize(timeout_s: float = 60.0) -> JobInfo:
    """Join the job this process belongs to (see the module docstring); returns where we are.

    Call before any other JAX work. Raises `RuntimeError` naming the coordinator when the other
    processes do not arrive within `timeout_s`.

    Args:
        timeout_s: seconds to wait for the other processes.

    Returns:
        A `JobInfo` (process index and count, local and global device counts, coordinator).

    Raises:
        RuntimeError: the job could not be joined within `timeout_s`.
    """
    import jax

    coordinator = os.environ.get(COORDINATOR_ENV)
    if coordinator:
        num = int(os.environ[NUM_PROCESSES_ENV])
        pid = int(os.environ[PROCESS_ID_ENV])
        try:
            jax.distributed.initialize(coordinator, num_processes=num, process_id=pid,
                                       initialization_timeout=int(timeout_s),
                                       heartbeat_timeout_seconds=int(timeout_s),
                                       shutdown_timeout_seconds=int(timeout_s))
        except Exception as err:  # noqa: BLE001 - re-raised with the job's context
            raise RuntimeError(
                f"process {pid} of {num} could not join the job at {coordinator} within "
                f"{timeout_s:.0f} s: {err}") from err
    elif _cluster_detected():
        jax.distributed.initialize(initialization_timeout=int(timeout_s))
        coordinator = "cluster"
    return JobInfo(jax.process_index(), jax.process_count(), jax.local_device_count(),
                   jax.device_count(), coordinator)


def barrier(name: str, timeout_s: float = 120.0) -> None:
    """Wait until every process reaches `barrier(name)`; raise after `timeout_s` (no hang).

    Args:
        name: the barrier's name (every process passes the same).
        timeout_s: seconds to wait.

    Raises:
        RuntimeError: jax.distributed is not initialised, or the wait timed out.
    """
    import jax

    if jax.process_count() == 1:
        return
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("barrier: jax.distributed is not initialised")
    client.wait_at_barrier(name, int(timeout_s * 1000))


def shutdown(timeout_s: float = 120.0) -> None:
    """Wait for every process (at most `timeout_s`), then leave the job (no-op for one process).

    Args:
        timeout_s: seconds to wait for the other processes.
    """
    import jax

    if jax.process_count() > 1:
        barrier("workbench_shutdown", timeout_s)
        jax.distributed.shutdown()
