"""``sjff serve --processes N``: N server processes on one port, each on a CPU of its own.

A server is one asyncio event loop on one thread, so one process uses about one core. This
starts N ordinary ``sjff serve`` processes that share the gRPC port (``--reuse-port``: the
kernel places each new connection on one of them), process i pinned to one CPU (``--cpus``;
with gRPC's poller thread and the event loop on one CPU a call is handed over without waking
another: docs/server.md, Several processes on one port), and stands for them:

* one ready file, written once every process is ready;
* SIGTERM and SIGINT passed on (each process drains its calls and writes its snapshots);
* when one process exits on its own, the others are stopped and this one exits with that
  status, so that whatever supervises it (systemd, Kubernetes) restarts the set;
* each process gets SIGTERM should this one die (``PR_SET_PDEATHSIG``).

Every process gets this process's arguments, then its own overrides appended (argparse keeps
the last value): its CPU, its ready file, metrics and health ports counted up from the given
ones (0 and -1 as given), and ``--replica-id ID-i`` where an id is given.
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
from pathlib import Path

__all__ = ["process_cpus", "process_overrides", "run_processes"]

log = logging.getLogger("sjff_server")
_PR_SET_PDEATHSIG = 1
_POLL_S = 0.1


def process_cpus(n: int, cpus: frozenset[int] | None) -> list[int]:
    """The CPU of each of ``n`` processes: ``cpus`` (else every CPU this process may use) in
    order, round the list again where there are more processes than CPUs."""
    pool = sorted(cpus if cpus else os.sched_getaffinity(0))
    return [pool[i % len(pool)] for i in range(n)]


def _counted(port: int | None, i: int) -> int | None:
    """Port ``port + i`` for process i; 0 (any free port), -1 (off) and None stay as they are."""
    return port + i if port is not None and port > 0 else port


def process_overrides(args: argparse.Namespace, i: int, cpu: int, ready_file: Path) -> list[str]:
    """The arguments appended to process i's command line."""
    out = ["--processes", "1", "--reuse-port", "--cpus", str(cpu), "--ready-file", str(ready_file)]
    out += ["--metrics-port", str(_counted(args.metrics_port, i))]
    if args.health_port is not None:
        out += ["--health-port", str(_counted(args.health_port, i))]
    if args.replica_id:
        out += ["--replica-id", f"{args.replica_id}-{i}"]
    return out


def _die_with_parent(parent: int) -> None:
    """In the child before exec: SIGTERM when the parent dies (and now, if it already has)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _check_last_ports(args: argparse.Namespace, n: int) -> None:
    for flag, port in (("--metrics-port", args.metrics_port), ("--health-port", args.health_port)):
        last = _counted(port, n - 1)
        if last is not None and last > 65535:
            raise ValueError(f"{flag} {port}: {n} processes need ports {port}..{last}, above 65535")


def _stop(children: list[subprocess.Popen], grace_s: float) -> list[int]:
    """SIGTERM every live child and wait for each (SIGKILL after ``grace_s`` more than its own
    drain); their exit statuses."""
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


def run_processes(argv: list[str], args: argparse.Namespace, check) -> int:
    """Serve with ``args.processes`` processes (``argv``: this command's own arguments;
    ``check(reuse_port=True)`` raises ValueError where they may not share the port). Returns
    the exit status."""
    n = args.processes
    check()
    _check_last_ports(args, n)
    cpus = process_cpus(n, args.cpus)
    stop_signal: list[int] = []

    def on_signal(signum, _frame) -> None:
        stop_signal.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    children: list[subprocess.Popen] = []
    grace = args.shutdown_grace + 60.0  # each drains for --shutdown-grace, then writes snapshots
    try:
        with tempfile.TemporaryDirectory(prefix="sjff-serve-") as tmp:
            ready = [Path(tmp) / f"process-{i}.json" for i in range(n)]
            me = os.getpid()
            for i, (cpu, f) in enumerate(zip(cpus, ready, strict=True)):
                cmd = [sys.executable, "-m", "sjff_server", *argv, *process_overrides(args, i, cpu, f)]
                children.append(subprocess.Popen(cmd, preexec_fn=lambda: _die_with_parent(me)))  # noqa: PLW1509
            log.info("processes started", extra={"processes": n, "cpus": cpus, "pids": [p.pid for p in children]})
            infos: list[dict | None] = [None] * n
            announced = False
            while not stop_signal:
                for i, p in enumerate(children):
                    if p.poll() is not None:
                        code = p.returncode
                        log.error(
                            "a server process exited: stopping the others",
                            extra={"index": i, "pid": p.pid, "exit_code": code, "ready": announced},
                        )
                        _stop(children, grace)
                        return code if code > 0 else 128 - code if code < 0 else 1  # killed by a signal: 128 + it
                    if infos[i] is None and ready[i].exists():
                        infos[i] = json.loads(ready[i].read_text())
                if not announced and all(infos):
                    announced = True
                    _announce(args, cpus, infos)
                time.sleep(_POLL_S)
            log.info("stopping the server processes", extra={"signal": signal.Signals(stop_signal[0]).name})
            codes = _stop(children, grace)
            return next((c for c in codes if c != 0), 0)
    finally:
        _stop(children, grace)  # no-op where all have exited
        for s, handler in old.items():
            signal.signal(s, handler)


def _announce(args: argparse.Namespace, cpus: list[int], infos: list[dict]) -> None:
    info = {"port": infos[0]["port"], "pid": os.getpid(), "cpus": cpus, "processes": infos}
    log.info("server processes ready", extra={"port": info["port"], "pids": [i["pid"] for i in infos], "cpus": cpus})
    if args.ready_file is not None:
        part = Path(f"{args.ready_file}.part")
        part.write_text(json.dumps(info))
        part.replace(args.ready_file)
