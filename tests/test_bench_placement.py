"""benchmarks/serve.py's placements: ``--server-procs N --pin-each`` measures the command an
operator runs (``sjff serve --processes N``), counting the command's CPU time with its
processes' and reading each process's metrics; ``--pin-each`` does not combine with ``--pin``."""

from __future__ import annotations

import os
import sys

import pytest
import serving_utils as su
from sjff_server.processes import process_cpus

sys.path.insert(0, str(su.ROOT / "benchmarks"))
import serve as bench  # noqa: E402
import serve_measure as measure  # noqa: E402


def test_pin_and_pin_each_are_refused_together(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--pin", "--pin-each"])
    assert "choose one" in capsys.readouterr().err


def test_pin_each_measures_sjff_serve_processes(sjff_models, tmp_path):
    root = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    with bench.ProcessSet(root, 2, None, []) as group:
        command, *processes = group.pid
        assert command == group.command.pid and len(set(processes)) == 2
        assert group.cpus == process_cpus(2, None)
        placed = [os.sched_getaffinity(pid) for pid in processes]
        assert placed == [{cpu} for cpu in group.cpus]
        lines = measure.scrape(group)  # both processes' metrics
        assert len([line for line in lines if line.startswith("# HELP sjff_inference_images_total")]) == 2
