"""benchmarks/serve_profile.py's context switches per call: read from /proc for every thread of
a process, grouped as its CPU table groups them."""

from __future__ import annotations

import os
import sys
import threading

import serving_utils as su

sys.path.insert(0, str(su.ROOT / "benchmarks"))
import serve_profile  # noqa: E402


def test_thread_switches_counts_a_thread_that_blocks():
    pid = os.getpid()
    go, done, stop = threading.Event(), threading.Event(), threading.Event()

    def waiter():
        for _ in range(50):  # each wait blocks the thread: a voluntary switch when it is woken
            go.wait()
            go.clear()
            done.set()
        stop.wait(10)  # alive until its count is read

    t = threading.Thread(target=waiter)
    t.start()
    before = serve_profile.thread_switches(pid)
    for _ in range(50):
        done.clear()
        go.set()
        done.wait(10)
    after = serve_profile.thread_switches(pid)
    stop.set()
    t.join(10)
    key = next(k for k in after if k[0] == t.native_id)
    assert after[key] - before.get(key, 0) >= 25  # at least once per round it had to wait
    assert all(after[k] >= before[k] for k in before if k in after)


def test_switches_per_call_groups_threads_as_the_cpu_table():
    pid = 100
    before = {(100, "python"): 10, (101, "python"): 4, (102, "event_engine"): 0}
    after = {(100, "python"): 30, (101, "python"): 24, (102, "event_engine"): 40, (103, "event_engine"): 10}
    per = serve_profile.switches_per_call(pid, before, after, calls=10)
    assert per == {"event loop (main)": 2.0, "gRPC poller, other Python threads": 2.0, "gRPC event engine": 5.0}
