"""``sjff serve --processes N``: N server processes on one port, each on a CPU of its own.

A server is one asyncio event loop on one thread, so one process uses about one core. This
starts N ordinary ``sjff serve`` processes that share the gRPC port (``--reuse-port``: the
kernel places each new connection on one of them), process i pinned to one CPU (``--cpus``;
gRPC's poller thread and the event loop then hand each call over on that CPU: docs/server.md,
Several processes on one port), and stands for them:

* one ready file, written once every process is ready;
* SIGTERM and SIGINT passed on (each process drains its calls and writes its snapshots);
* when one process exits on its own, the others are stopped and this one exits with that
  status, so that whatever supervises it (systemd, Kubernetes) restarts the set;
* each process gets SIGTERM should this one die (``PR_SET_PDEATHSIG``, set by the process
  itself first thing: :func:`die_with_parent`).

Every process gets this process's arguments, then its own overrides appended (argparse keeps
the last value): its CPU, its ready file, metrics and health ports counted up from the given
ones (0, any free port, and off stay as given), and ``--replica-id ID-i`` where an id is given.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .tuning import allowed_cpus

__all__ = ["PARENT_ENV", "die_with_parent", "exit_status", "process_cpus", "process_overrides", "run_processes"]

log = logging.getLogger("sjff_server")
#: set in each process's environment: the pid of the command standing for it
PARENT_ENV = "SJFF_SERVE_PARENT"
_PR_SET_PDEATHSIG = 1
_POLL_S = 0.1


def process_cpus(n: int, cpus: frozenset[int] | None) -> list[int]:
    """The CPU of each of ``n`` processes, in order: one each of ``cpus`` (else of every CPU
    this process may use). ValueError where there are fewer CPUs than processes."""
    pool = sorted(allowed_cpus(cpus))
    if n > len(pool):
        raise ValueError(
            f"--processes {n} needs a CPU for each process, but {'--cpus gives' if cpus else 'this host has'} "
            f"{len(pool)} ({','.join(map(str, pool))})"
        )
    return pool[:n]


def _counted(port: int | None, i: int) -> int | None:
    """Port ``port + i`` for process i; 0 (any free port) and None (off) stay as they are."""
    return port + i if port is not None and port > 0 else port


def process_overrides(args: argparse.Namespace, i: int, cpu: int, ready_file: Path) -> list[str]:
    """The arguments appended to process i's command line."""
    metrics = _counted(args.metrics_port, i)
    out = ["--processes", "1", "--reuse-port", "--cpus", str(cpu), "--ready-file", str(ready_file)]
    out += ["--metrics-port", "-1" if metrics is None else str(metrics)]
    if args.health_port is not None:
        out += ["--health-port", str(_counted(args.health_port, i))]
    if args.replica_id:
        out += ["--replica-id", f"{args.replica_id}-{i}"]
    return out


def check_ports(args: argparse.Namespace, n: int) -> None:
    """The gRPC port and the N metrics and health ports must all differ and exist: ValueError."""
    taken = {args.port: "--port"}
    for flag, first in (("--metrics-port", args.metrics_port), ("--health-port", args.health_port)):
        if first is None or first == 0:
            continue
        if first + n - 1 > 65535:
            raise ValueError(f"{flag} {first}: {n} processes need ports {first}..{first + n - 1}, above 65535")
        for port in range(first, first + n):
            if port in taken:
                raise ValueError(
                    f"{flag} {first}: {n} processes use ports {first}..{first + n - 1}, and {port} is also "
                    f"{taken[port]}'s; choose ports that do not overlap"
                )
            taken[port] = flag


def die_with_parent() -> None:
    """First thing in a process started by ``--processes``: SIGTERM when the command standing for
    it dies, and exit at once if it already has. A no-op in any other process."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(parent):  # it died before the prctl took effect
        os._exit(1)


def exit_status(code: int) -> int:
    """A process's exit status as a shell reports it: 128 + the signal for one killed by it."""
    return 128 - code if code < 0 else code


def _stop(children: list[subprocess.Popen], grace_s: float) -> list[int]:
    """SIGTERM every live child, then wait for each (SIGKILL after ``grace_s``); their return
    codes."""
    for p in children:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    codes = []
    for p in children:
        try:
            codes.append(p.wait(grace_s))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes


def run_processes(argv: list[str], args: argparse.Namespace, check: Callable[[], None]) -> int:
    """Serve with ``args.processes`` processes (``argv``: this command's own arguments;
    ``check()`` raises ValueError where they may not share the port). Returns the exit status.
    Runs on the main thread (signal handlers; and the children's death signal follows the
    thread that started them)."""
    n = args.processes
    check()
    check_ports(args, n)
    cpus = process_cpus(n, args.cpus)
    stop_signal: list[int] = []

    def on_signal(signum, _frame) -> None:
        stop_signal.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    children: list[subprocess.Popen] = []
    grace = args.shutdown_grace + 60.0  # each drains for --shutdown-grace, then writes snapshots
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    try:
        with tempfile.TemporaryDirectory(prefix="sjff-serve-") as tmp:
            try:
                return _supervise(argv, args, cpus, Path(tmp), env, children, stop_signal, grace)
            finally:
                _stop(children, grace)  # before the folder of their ready files goes; a no-op once all exited
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _supervise(argv, args, cpus, tmp: Path, env, children, stop_signal, grace) -> int:
    n = len(cpus)
    ready = [tmp / f"process-{i}.json" for i in range(n)]
    for i, (cpu, f) in enumerate(zip(cpus, ready, strict=True)):
        cmd = [sys.executable, "-m", "sjff_server", *argv, *process_overrides(args, i, cpu, f)]
        children.append(subprocess.Popen(cmd, env=env))
    log.info("processes started", extra={"processes": n, "cpus": cpus, "pids": [p.pid for p in children]})
    infos: list[dict | None] = [None] * n
    announced = False
    while not stop_signal:
        for i, p in enumerate(children):
            if p.poll() is not None and not stop_signal:
                code = p.returncode
                log.error(
                    "a server process exited: stopping the others",
                    extra={"index": i, "pid": p.pid, "exit_code": code, "ready": announced},
                )
                _stop(children, grace)
                return exit_status(code) or 1  # even a clean exit, unasked, ends the set as a failure
            if infos[i] is None and ready[i].exists():
                infos[i] = json.loads(ready[i].read_text())
        if not announced and all(infos):
            announced = True
            _announce(args, cpus, infos)
        time.sleep(_POLL_S)
    log.info("stopping the server processes", extra={"signal": signal.Signals(stop_signal[0]).name})
    codes = _stop(children, grace)
    # a process the signal reached before its handlers were in place (still starting) stopped as asked
    return next((exit_status(c) for c in codes if c not in (0, -signal.SIGTERM, -signal.SIGINT)), 0)


def _announce(args: argparse.Namespace, cpus: list[int], infos: list[dict]) -> None:
    info = {"port": infos[0]["port"], "pid": os.getpid(), "cpus": cpus, "processes": infos}
    log.info("server processes ready", extra={"port": info["port"], "pids": [i["pid"] for i in infos], "cpus": cpus})
    if args.ready_file is not None:
        part = Path(f"{args.ready_file}.part")
        part.write_text(json.dumps(info))
        part.replace(args.ready_file)
