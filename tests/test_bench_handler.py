"""benchmarks/serve_handler.py measures the handler the server registers: its calls batch as
under load, the engine runs once per batch, and memory written over between rounds
(``--evict-mb``) is not counted as the handler's CPU."""

from __future__ import annotations

import asyncio
import sys

import numpy as np
import pytest
import serving_utils as su

sys.path.insert(0, str(su.ROOT / "benchmarks"))
import serve  # noqa: E402
import serve_handler  # noqa: E402


@pytest.mark.parametrize("evict_mb", [0, 1])
def test_calls_batch_and_the_engine_runs_once_per_batch(evict_mb, sjff_models):
    payload = serve.infer_payload(np.random.default_rng(0).integers(0, 255, (1, 784), dtype=np.uint8))
    measured = asyncio.run(serve_handler._measure(sjff_models["analog"], payload, 4, 20, evict_mb))
    cpu_us, engine_us, warm_us, per_batch = measured
    assert per_batch == 4.0  # the 4 calls of each round share one engine run
    assert cpu_us > 0 and engine_us > 0 and warm_us > 0


def test_the_eviction_runs_between_rounds_and_is_not_counted(monkeypatch, sjff_models):
    # a process clock that the eviction moves on by 1000 s: counted, it would show
    clock = {"offset": 0.0, "evictions": 0}
    real = serve_handler.time.process_time

    def evict(junk):
        assert junk.nbytes == 1 << 20  # 1 MiB of float64
        clock["evictions"] += 1
        clock["offset"] += 1000.0

    monkeypatch.setattr(serve_handler, "_evict", evict)
    monkeypatch.setattr(serve_handler.time, "process_time", lambda: real() + clock["offset"])
    payload = serve.infer_payload(np.zeros((1, 784), dtype=np.uint8))
    cpu_us, *_ = asyncio.run(serve_handler._measure(sjff_models["analog"], payload, 4, 20, 1))
    assert clock["evictions"] == 50 + 20  # before every warm-up and measured round
    assert cpu_us < 1e6  # per call; the evictions would add 1000 s / 4 calls = 2.5e8 µs


@pytest.mark.parametrize("mb", ["-1", "4097"])
def test_an_eviction_out_of_range_is_refused(mb, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["serve_handler.py", "--evict-mb", "0", mb])
    with pytest.raises(SystemExit):
        serve_handler.main()
    assert "--evict-mb must lie in [0, 4096]" in capsys.readouterr().err
