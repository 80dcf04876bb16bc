"""Tuning for latency: gRPC core's listener (always), gRPC's poller thread yielding to the
event loop on a server with one CPU, and two opt-in host settings: pin the server to CPUs,
keep idle CPUs awake.

On a small machine or a VM a call that finds the server's CPU idle pays twice: the wake-up
itself and the cold state after it, and once more for every thread it hops to (docs/server.md,
Performance). Each helper acts on this process only and is undone when it exits.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "CPU_LATENCY_DEVICE",
    "allowed_cpus",
    "GRPC_EXPERIMENTS",
    "POLLED_LISTENER",
    "grpc_experiments",
    "hold_cpu_latency",
    "parse_cpu_list",
    "pin_process",
    "yield_grpc_poller",
]

#: gRPC core's switches for its experiments, read once, when the process first imports grpc
GRPC_EXPERIMENTS = "GRPC_EXPERIMENTS"
#: Serve accepted connections from the thread that polls the completion queue (gRPC's poll
#: engine) rather than from the EventEngine's own threads, which grpcio turned on for Python in
#: 1.80. Why: a lone call then switches the server's threads about 4 times instead of 11, and
#: on a VM whose idle CPUs halt each hop costs a wake-up and a cold core (docs/server.md,
#: Performance, has the measurements).
POLLED_LISTENER = "-event_engine_listener"


@contextmanager
def grpc_experiments(setting: str = POLLED_LISTENER) -> Iterator[str]:
    """Hold ``GRPC_EXPERIMENTS=setting`` in the environment while the caller imports grpc, then
    restore the environment, so that this process runs with it and its children do not inherit
    it. Yields what is in force: ``setting``; the operator's own ``GRPC_EXPERIMENTS``, left
    alone; or ``""`` (gRPC's defaults) where grpc was imported before, too late to change."""
    env = os.environ
    if GRPC_EXPERIMENTS in env:
        yield env[GRPC_EXPERIMENTS]
        return
    if "grpc" in sys.modules:
        yield ""
        return
    env[GRPC_EXPERIMENTS] = setting
    try:
        yield setting
    finally:
        env.pop(GRPC_EXPERIMENTS, None)


#: the kernel's PM QoS interface: a request lives as long as the file stays open
CPU_LATENCY_DEVICE = Path("/dev/cpu_dma_latency")


def parse_cpu_list(text: str) -> frozenset[int]:
    """``"1"``, ``"0,2"``, ``"0-3,6"`` -> CPU numbers (taskset's list syntax); ValueError otherwise."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            first, last = int(lo), int(hi or lo)
            if first < 0 or last < first:
                raise ValueError
            cpus.update(range(first, last + 1))
    except ValueError:
        raise ValueError(f"not a CPU list: {text!r} (examples: 1, 0,2, 0-3)") from None
    return frozenset(cpus)


def allowed_cpus(cpus: frozenset[int] | None) -> frozenset[int]:
    """``cpus`` if this process may run on all of them (ValueError otherwise); None: every CPU
    it may run on."""
    usable = frozenset(os.sched_getaffinity(0))
    if cpus is None:
        return usable
    if not cpus <= usable:
        raise ValueError(f"--cpus {sorted(cpus)}: this process may only run on CPUs {sorted(usable)}")
    return cpus


def pin_process(cpus: frozenset[int]) -> None:
    """Restrict this process (every thread it has, and every thread it will start) to ``cpus``.
    Why: a server pinned to its own core keeps its caches warm between calls instead of
    following the scheduler from core to core."""
    cpus = allowed_cpus(cpus)
    for task in os.listdir("/proc/self/task"):  # threads started so far (later ones inherit)
        os.sched_setaffinity(int(task), cpus)


#: grpc.aio's poller: a Python thread (``PollerCompletionQueue._poll_wrapper``) that waits on
#: gRPC core's completion queue and wakes the event loop for each completion
GRPC_POLLER_THREAD = "_poll_wrapper"


def yield_grpc_poller() -> list[int]:
    """Where this process may run on one CPU only, put grpc.aio's poller thread under
    ``SCHED_BATCH`` and return its thread ids (none where the process has more CPUs, or where
    this grpcio names its poller otherwise). Why: on one CPU each completion (a request in, an
    answer out) woke the poller, which preempted the event loop in the middle of its work: about
    five context switches per call at 16 clients. A ``SCHED_BATCH`` thread does not preempt on
    wake-up, so the poller runs when the loop waits, and hands it every completion that came
    meanwhile: about one switch per call (docs/server.md, Performance)."""
    if len(os.sched_getaffinity(0)) != 1:
        return []
    import threading

    tids = [t.native_id for t in threading.enumerate() if GRPC_POLLER_THREAD in t.name and t.native_id]
    for tid in tids:
        os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
    return tids


def hold_cpu_latency(max_us: int, device: Path = CPU_LATENCY_DEVICE) -> BinaryIO:
    """Ask the kernel to keep every CPU's wake-up latency at or below ``max_us`` microseconds
    (0: idle CPUs poll instead of halting) until the returned file is closed or the process
    exits. Costs power (and, in a VM, host CPU) while the server idles; needs write access to
    ``device`` (root, or a udev rule for the service user). OSError with the reason otherwise."""
    if max_us < 0:
        raise ValueError(f"--cpu-latency-us must be 0 or more, got {max_us}")
    try:
        fh = open(device, "wb", buffering=0)  # noqa: SIM115 - held open for the process lifetime
    except OSError as exc:
        raise OSError(f"--cpu-latency-us needs write access to {device}: {exc.strerror}") from None
    fh.write(struct.pack("=i", max_us))  # the interface takes a native 32-bit integer
    return fh
