"""benchmarks/serve.py's placements: ``--pin-each`` starts each server process of a group on a
CPU of its own (read back from the running processes), and it does not combine with ``--pin``."""

from __future__ import annotations

import os
import sys

import pytest
import serving_utils as su

sys.path.insert(0, str(su.ROOT / "benchmarks"))
import serve as bench  # noqa: E402


def test_each_cpu_goes_down_from_the_last_and_wraps():
    assert bench.each_cpu(1, [0, 1]) == [1]
    assert bench.each_cpu(2, [0, 1]) == [1, 0]
    assert bench.each_cpu(3, [0, 2, 5]) == [5, 2, 0]
    assert bench.each_cpu(3, [0, 1]) == [1, 0, 1]


def test_pin_and_pin_each_are_refused_together(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--pin", "--pin-each"])
    assert "choose one" in capsys.readouterr().err


def test_pin_each_puts_each_process_of_a_group_on_its_cpu(sjff_models, tmp_path):
    root = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    each = bench.each_cpu(2, sorted(os.sched_getaffinity(0)))
    with bench.ServerGroup(root, 2, None, [], each) as group:
        placed = [os.sched_getaffinity(pid) for pid in group.pid]
        assert placed == [{cpu} for cpu in each]
        # and every thread of each process, not only its main thread
        for pid, cpu in zip(group.pid, each, strict=True):
            tasks = os.listdir(f"/proc/{pid}/task")
            assert len(tasks) > 1
            assert all(os.sched_getaffinity(int(t)) == {cpu} for t in tasks)
