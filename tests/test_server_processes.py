"""``sjff serve --processes N``: N server processes on one port, each on a CPU of its own,
behind one ready file; SIGTERM stops them all, one that dies ends the set with its status, and
they go when their parent dies. Refusals come before any process starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import serving_utils as su
from sjff_client.client import build_infer_request
from sjff_server.harness import ServerProcess, free_port
from sjff_server.processes import exit_status, process_cpus
from test_server_port_sharing import _infer_on_new_connection, _metric

WAIT_S = 120.0  # generous: these waits end on an event, never on a measured time


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts: only its parent can reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not all(_gone(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if not _gone(p)]}"
        time.sleep(0.05)


@pytest.fixture()
def repo(sjff_models, tmp_path):
    return su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})


def test_process_cpus_one_each_in_order():
    usable = sorted(os.sched_getaffinity(0))
    assert process_cpus(1, None) == usable[:1]
    assert process_cpus(len(usable), None) == usable
    assert process_cpus(1, frozenset(usable[-1:])) == usable[-1:]
    with pytest.raises(ValueError, match="needs a CPU for each process"):
        process_cpus(len(usable) + 1, None)
    with pytest.raises(ValueError, match="may only run on CPUs"):
        process_cpus(1, frozenset({max(usable) + 1}))


def test_exit_status_as_a_shell_reports_it():
    assert [exit_status(c) for c in (0, 2, -signal.SIGKILL, -signal.SIGTERM)] == [0, 2, 137, 143]


def _affinities(pid: int) -> set[frozenset[int]]:
    """The CPU sets of every thread of ``pid`` (a thread that ends meanwhile is left out)."""
    out = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            out.add(frozenset(os.sched_getaffinity(int(task))))
        except ProcessLookupError:
            continue
    return out


def test_processes_share_the_port_each_on_its_cpu(repo):
    port = free_port()
    images, _ = su.mnist_test(1)
    request = build_infer_request(images.astype(np.float32) / 255.0, "mnist")
    with ServerProcess(repo, extra_args=["--port", str(port), "--processes", "2"]) as srv:
        info = srv.info
        pids = [p["pid"] for p in info["processes"]]
        assert info["port"] == port and info["pid"] == srv.pid and len(set(pids)) == 2
        assert info["cpus"] == process_cpus(2, None)
        for pid, cpu in zip(pids, info["cpus"], strict=True):
            assert _affinities(pid) == {frozenset({cpu})}  # every thread of the process, not only the first
        assert all(len(p["grpc_poller_batch"]) == 1 for p in info["processes"])  # on one CPU each: tuning.py
        calls = 64  # all on one process: probability 2 * 2**-64
        labels = {_infer_on_new_connection(f"127.0.0.1:{port}", request) for _ in range(calls)}
        members = [ServerProcess(repo) for _ in pids]  # only to read each one's metrics
        for m, p in zip(members, info["processes"], strict=True):
            m.info = p
        served = [_metric(m, "sjff_inference_images_total", 'model="mnist",version="1"') for m in members]
        assert sum(served) == calls and min(served) > 0, served
        assert len(labels) == 1
        assert srv.stop() == 0  # SIGTERM to the parent: every process drains and exits 0
    _wait_gone(pids)


def test_a_process_that_dies_ends_the_set(repo):
    args = ["--port", str(free_port()), "--processes", "2", "--metrics-port", "-1"]
    with ServerProcess(repo, extra_args=args) as srv:
        assert [p["metrics_port"] for p in srv.info["processes"]] == [None, None]  # off stays off
        first, second = (p["pid"] for p in srv.info["processes"])
        os.kill(first, signal.SIGKILL)
        assert srv.proc.wait(WAIT_S) == 128 + signal.SIGKILL
        _wait_gone([first, second])
        records = srv.log_records()
    died = [r for r in records if r.get("msg") == "a server process exited: stopping the others"]
    assert died and died[0]["pid"] == first and died[0]["exit_code"] == -signal.SIGKILL


def test_processes_go_when_their_parent_dies(repo):
    with ServerProcess(repo, extra_args=["--port", str(free_port()), "--processes", "2"]) as srv:
        pids = [p["pid"] for p in srv.info["processes"]]
        try:
            srv.kill()  # kill -9: no chance to pass a signal on
            _wait_gone(pids)  # each got SIGTERM from the kernel (PR_SET_PDEATHSIG)
        finally:
            for pid in pids:  # should this fail, leave no server behind
                if not _gone(pid):
                    os.kill(pid, signal.SIGKILL)


def test_sigterm_while_starting_is_a_clean_stop(repo, tmp_path):
    """SIGTERM as soon as the processes exist, ready or not: every one stops, status 0."""
    log = tmp_path / "log"
    cmd = [sys.executable, "-m", "sjff_server", "--model-repository", str(repo), "--port", str(free_port())]
    with open(log, "w") as out:
        proc = subprocess.Popen([*cmd, "--metrics-port", "0", "--processes", "2"], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + WAIT_S
        while "processes started" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        started = next(json.loads(line) for line in log.read_text().splitlines() if "processes started" in line)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT_S) == 0, log.read_text()
        _wait_gone(started["pids"])
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--port", "0"], "--reuse-port needs a fixed --port"),
        (["--state-dir", "STATE"], "needs --replication"),
        (["--metrics-port", "65535"], "above 65535"),
        (["--port", "9001", "--metrics-port", "9000"], "choose ports that do not overlap"),
        (["--metrics-port", "9100", "--health-port", "9101"], "choose ports that do not overlap"),
        (["--cpus", str(min(os.sched_getaffinity(0)))], "needs a CPU for each process"),
        (["--model-repository", "MISSING"], "is not a directory"),
    ],
)
def test_refused_before_any_process_starts(repo, tmp_path, args, says):
    args = [a.replace("STATE", str(tmp_path / "state")).replace("MISSING", str(tmp_path / "none")) for a in args]
    cmd = [sys.executable, "-m", "sjff_server", "--model-repository", str(repo), "--port", str(free_port())]
    out = subprocess.run([*cmd, "--processes", "2", *args], capture_output=True, text=True, timeout=WAIT_S)
    assert out.returncode == 2
    assert says in out.stderr
    assert "processes started" not in out.stdout + out.stderr
