"""Interruptible worker threads (deadlines inside time-step loops) and the model repository scan."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest
from sjff_server.interrupt import Interrupted, WorkerPool
from sjff_server.serving.repository import scan_repository

LONG = 60.0  # a wait no passing test comes near


# -- interruptible workers ------------------------------------------------------------------------


def spin(seconds: float, started: threading.Event | None = None) -> int:
    if started is not None:
        started.set()
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:  # a Python loop, like the time-step loop
        n += 1
    return n


def test_interrupt_stops_a_running_loop_and_the_worker_survives():
    pool = WorkerPool(1)

    async def main():
        loop = asyncio.get_running_loop()
        started = threading.Event()
        job = pool.submit(lambda: spin(600.0, started), loop)
        assert await loop.run_in_executor(None, started.wait, LONG)
        assert pool.interrupt(job)
        with pytest.raises(Interrupted):  # spin would return a count, 10 minutes from now
            await job.future
        # a queued job (the worker is held by `hold`) is dropped without running
        release = threading.Event()
        hold = pool.submit(lambda: release.wait(LONG), loop)
        ran = []
        queued = pool.submit(lambda: ran.append(1), loop)
        assert pool.interrupt(queued) and queued.fn is None  # its inputs are let go at once
        with pytest.raises(Interrupted):
            await queued.future
        release.set()
        assert await hold.future is True
        assert await pool.submit(lambda: 42, loop).future == 42
        assert ran == []

    asyncio.run(main())
    pool.close()


def test_interrupt_races_never_lose_a_job():
    """Interrupts that arrive just as jobs finish must neither hang nor kill the worker."""
    pool = WorkerPool(2)

    async def main():
        loop = asyncio.get_running_loop()
        rng = np.random.default_rng(0)
        jobs = []
        for _ in range(300):
            job = pool.submit(lambda d=float(rng.uniform(0, 0.002)): spin(d), loop)
            jobs.append(job)
            if rng.random() < 0.5:
                loop.call_later(float(rng.uniform(0, 0.003)), pool.interrupt, job)
        results = await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs), return_exceptions=True), 60)
        assert all(isinstance(r, int | Interrupted) for r in results)
        # both workers still run jobs: two jobs that can only finish together, on two threads
        both = threading.Barrier(2, timeout=LONG)
        pair = [pool.submit(lambda: (both.wait(), threading.get_ident())[1], loop) for _ in range(2)]
        idents = await asyncio.gather(*(j.future for j in pair))
        assert len(set(idents)) == 2

    asyncio.run(main())
    pool.close()


# -- repository -----------------------------------------------------------------------------------


def test_repository_scan(tmp_path, sjff_models):
    import shutil

    (tmp_path / "good" / "1").mkdir(parents=True)
    shutil.copy(sjff_models["analog"], tmp_path / "good" / "1" / "model.onnx")
    (tmp_path / "good" / "3").mkdir()
    shutil.copy(sjff_models["spike"], tmp_path / "good" / "3" / "model.nir")
    (tmp_path / "good" / "config.json").write_text(json.dumps({"max_batch_size": 8}))
    (tmp_path / "good" / "3" / "config.json").write_text(json.dumps({"learning": False}))
    (tmp_path / "empty" / "1").mkdir(parents=True)
    (tmp_path / "badcfg" / "1").mkdir(parents=True)
    shutil.copy(sjff_models["analog"], tmp_path / "badcfg" / "1" / "model.onnx")
    (tmp_path / "badcfg" / "config.json").write_text(json.dumps({"max_batch": 8}))
    (tmp_path / "bad name!" / "1").mkdir(parents=True)
    specs, problems = scan_repository(tmp_path)
    assert [(s.name, s.version, s.kind, s.config.max_batch_size, s.config.learning) for s in specs] == [
        ("good", "1", "analog", 8, True),
        ("good", "3", "spiking", 8, False),
    ]
    text = "\n".join(problems)
    assert (
        "needs exactly one of" in text
        and "unknown config keys ['max_batch']" in text
        and "not a valid model name" in text
    )


def test_a_repository_cannot_allow_presentations_the_encoder_refuses():
    """A request's `steps` up to `max_steps` must be a presentation the runtime runs: a larger
    `max_steps` would answer those requests with an internal error."""
    from sjff_server.serving.repository import RepositoryError, ServingConfig

    from spikingjelly_ff.functional.params import MAX_STEPS

    assert ServingConfig.from_dict({"max_steps": MAX_STEPS}, "m").max_steps == MAX_STEPS
    with pytest.raises(RepositoryError, match=f"max_steps must be at most {MAX_STEPS}"):
        ServingConfig.from_dict({"max_steps": MAX_STEPS + 1}, "m")
