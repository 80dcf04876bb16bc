"""benchmarks/serve_handler.py measures the handler the server registers: its calls batch as
under load and the engine runs once per batch, also with memory written over between rounds
(``--evict-mb``)."""

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
    # the engine is part of the handler's work: one batch of 4 calls costs at least its run
    assert 4 * cpu_us > engine_us


def test_a_negative_eviction_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["serve_handler.py", "--evict-mb", "-1"])
    with pytest.raises(SystemExit):
        serve_handler.main()
    assert "--evict-mb not negative" in capsys.readouterr().err
