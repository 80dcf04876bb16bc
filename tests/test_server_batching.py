"""Dynamic batching: windows, shared batches, cancellation, the byte budget, large batches off the
event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import numpy as np
import pytest
from sjff_server.errors import RequestError
from sjff_server.inference.batching import Batcher
from sjff_server.inference.engine import InferOptions
from sjff_server.interrupt import WorkerPool
from sjff_server.protocol.rpc import status_of
from sjff_server.serving.repository import scan_repository

# -- batching -------------------------------------------------------------------------------------
# Every test drives Batcher.infer, the server's entry point. Batches are made deterministic by
# a window far longer than the test (it ends when max_batch images are queued) or by a worker
# blocked on a threading.Event (later requests must queue), never by timing.

LONG = 60.0  # a batch window no test waits out


def rows(n: int, value: float, width: int = 4) -> np.ndarray:
    return np.full((n, width), value, dtype=np.float32)


def recording_run():
    """(sizes, run): a run function that returns its images as output ``x`` and records the
    size of every batch it ran in ``sizes``."""
    sizes: list[int] = []

    def run(x, opts):
        sizes.append(len(x))
        return {"x": x}, 0

    return sizes, run


class Blocker:
    """A run function that blocks (on a worker thread) while running ``x`` with ``block_rows``
    rows or more, until :meth:`release`; it records each call's size and thread."""

    def __init__(self, block_rows: int) -> None:
        self.block_rows = block_rows
        self.started = threading.Event()
        self.released = threading.Event()
        self.blocked_loop = False
        self.calls: list[tuple[int, int]] = []  # (images, thread id)

    def __call__(self, x: np.ndarray, opts: InferOptions):
        self.calls.append((len(x), threading.get_ident()))
        if opts.steps == 99:
            raise ValueError("boom")
        if len(x) >= self.block_rows:
            self.started.set()
            # a loop that this call blocks cannot release it: give up instead of hanging
            if not self.released.wait(LONG):
                self.blocked_loop = True
        return {"double": x * 2}, 7

    def release(self) -> None:
        self.released.set()

    async def wait_started(self) -> None:
        assert await asyncio.get_running_loop().run_in_executor(None, self.started.wait, LONG)


def test_small_request_on_a_quiet_model_runs_at_once():
    """The fast path: no window, nothing queued -> the request runs before infer() suspends."""
    calls = []

    def run(x, opts):
        calls.append(len(x))
        return {"double": x * 2}, 3

    async def main():
        b = Batcher(run, max_batch=8, busy_delay_s=LONG)  # a window, but only under load
        coro = b.infer(rows(2, 0.5), InferOptions())
        with pytest.raises(StopIteration) as done:
            coro.send(None)  # completes without ever yielding to the event loop
        out, version = done.value.value
        assert version == 3 and calls == [2]
        np.testing.assert_array_equal(out["double"], rows(2, 1.0))

    asyncio.run(main())


def test_concurrent_requests_share_batches_and_get_their_rows():
    calls = []

    def run(x, opts):
        calls.append(x[:, 0].tolist())
        return {"double": x * 2, "row": x[:, :1]}, 7

    async def main():
        b = Batcher(run, max_batch=8, max_delay_s=LONG)
        sizes = [3, 2, 4, 3, 1, 2, 1, 4, 2, 2]  # 24 images, each request its own value
        xs = [rows(n, i) for i, n in enumerate(sizes)]
        outs = await asyncio.gather(*[b.infer(x, InferOptions()) for x in xs])
        for x, (out, version) in zip(xs, outs):
            assert version == 7
            np.testing.assert_array_equal(out["double"], x * 2)  # its own rows, in its order
            np.testing.assert_array_equal(out["row"], x[:, :1])
        assert b.held_bytes == 0

    asyncio.run(main())
    # all ten arrive in one loop turn and the 8th image ends the window; a batch takes the
    # oldest request, then every later one that still fits in 8 images (request 2 waits)
    assert calls == [
        [0, 0, 0, 1, 1, 3, 3, 3],
        [2, 2, 2, 2, 4, 5, 5, 6],
        [7, 7, 7, 7, 8, 8, 9, 9],
    ]


def test_a_request_left_over_from_a_full_batch_waits_for_its_own_window():
    sizes = []

    def run(x, opts):
        sizes.append(x[:, 0].tolist())
        return {"x": x}, 0

    async def main():
        b = Batcher(run, max_batch=2, max_delay_s=LONG)
        first = [asyncio.ensure_future(b.infer(rows(1, i), InferOptions())) for i in range(3)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert [f.done() for f in first] == [True, True, False]  # 2 filled a batch, 1 waits
        await asyncio.gather(*first, b.infer(rows(1, 3), InferOptions()))  # company: it runs

    asyncio.run(main())
    assert sizes == [[0, 1], [2, 3]]


def test_queue_delay_waits_for_more():
    sizes, run = recording_run()

    async def main():
        b = Batcher(run, max_batch=4, max_delay_s=LONG)
        first = asyncio.ensure_future(b.infer(rows(1, 0), InferOptions()))
        await asyncio.sleep(0.01)  # a later loop turn: the window is still open
        assert not first.done() and b.queued == 1
        rest = [b.infer(rows(1, 0), InferOptions()) for _ in range(3)]
        await asyncio.gather(first, *rest)  # the 4th image fills the batch: no need to wait more

    asyncio.run(main())
    assert sizes == [4]


def test_a_closed_waiting_coroutine_withdraws_its_request():
    """A queued request whose coroutine ends without its task being cancelled (closed, as a
    caller dropping it would) leaves the queue with its bytes: the next batch runs without it."""
    sizes, run = recording_run()

    async def main():
        b = Batcher(run, max_batch=3, max_delay_s=LONG)
        dropped = b.infer(rows(1, 5), InferOptions())
        dropped.send(None)  # queued, now waiting on its future
        assert b.queued == 1 and b.held_bytes == 16
        dropped.close()
        assert b.held_bytes == 0
        # (a bound on a hang, never reached when the request is withdrawn: the batch fills at once)
        got = await asyncio.wait_for(asyncio.gather(*[b.infer(rows(1, k), InferOptions()) for k in range(3)]), LONG)
        assert [float(o["x"][0, 0]) for o, _ in got] == [0.0, 1.0, 2.0]
        assert b.held_bytes == 0

    asyncio.run(main())
    assert sizes == [3]


def test_batches_form_under_concurrent_arrivals():
    """Requests arriving one per loop turn (as grpc.aio delivers them) share a batch when the
    caller reports load (busy): the first waits in a window that the others join."""
    sizes, run = recording_run()

    async def main():
        b = Batcher(run, max_batch=19, busy_delay_s=LONG)
        futs = []
        for _ in range(20):
            futs.append(asyncio.ensure_future(b.infer(rows(1, 0), InferOptions(), busy=bool(futs))))
            await asyncio.sleep(0)  # the next call comes a loop turn later
        await asyncio.gather(*futs)

    asyncio.run(main())
    assert sizes == [1, 19]  # the first came alone (no load yet): at once; the others batched


def test_options_seeds_cancellation_errors_and_the_byte_budget():
    """Spiking-style batcher (every batch on one worker): while the worker is blocked, later
    requests queue; the byte budget counts queued and running requests and frees them whatever
    their end (answered, cancelled, expired, failed)."""
    pool = WorkerPool(1)
    run = Blocker(block_rows=256)
    mib = 1 << 20
    big = rows(256, 0.25, width=1024)  # 1 MiB of float32

    async def main():
        b = Batcher(run, max_batch=64, pool=pool, inline_rows=0, max_bytes=int(3.5 * mib), name="snn")
        first = asyncio.ensure_future(b.infer(big, InferOptions()))
        await run.wait_started()  # running on the worker, blocked
        plain = [asyncio.ensure_future(b.infer(rows(1, i), InferOptions())) for i in range(3)]
        seeded = [asyncio.ensure_future(b.infer(rows(1, 9), InferOptions(seed=s))) for s in (1, 2)]
        gone = asyncio.ensure_future(b.infer(big, InferOptions()))
        expired = asyncio.ensure_future(b.infer(big, InferOptions(), deadline=time.monotonic() - 1))
        bad = asyncio.ensure_future(b.infer(rows(1, 0), InferOptions(steps=99)))
        await asyncio.sleep(0)  # every request is queued now
        assert b.held_bytes == 3 * mib + 6 * 16
        with pytest.raises(RequestError) as refused:
            await b.infer(big, InferOptions())
        assert status_of(refused.value)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.message == (
            "inference of model 'snn' holds 3.0 MiB (limit 3.5 MiB; this request needs 1.0 MiB); "
            "retry later or raise --max-inflight-mb"
        )
        with pytest.raises(RequestError, match=r"request of 5\.0 MiB .* exceeds .* \(3\.5 MiB\); send fewer"):
            await b.infer(rows(5 * 256, 0, width=1024), InferOptions())
        gone.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the cancelled request has left its await: it holds nothing
        assert b.held_bytes == 2 * mib + 6 * 16
        late = asyncio.ensure_future(b.infer(big, InferOptions()))  # fits again
        await asyncio.sleep(0)
        assert b.held_bytes == 3 * mib + 6 * 16
        run.release()
        await asyncio.gather(first, *plain, *seeded, late)
        with pytest.raises(asyncio.TimeoutError):
            await expired
        with pytest.raises(ValueError, match="boom"):
            await bad
        assert gone.cancelled()
        assert b.held_bytes == 0 and b.queued == 0
        for i, p in enumerate(plain):
            np.testing.assert_array_equal(p.result()[0]["double"], rows(1, 2 * i))

    try:
        asyncio.run(main())
    finally:
        run.release()
        pool.close()
    assert not run.blocked_loop
    sizes = [n for n, _ in run.calls]
    # the blocked big one; the three plain ones in one batch (equal options; the cancelled one
    # and the expired one are dropped, the late big one does not fit in 64); each seeded request
    # alone (an explicit seed is a reproducible, unbatched run); the failing one; the late one
    assert sizes == [256, 3, 1, 1, 1, 256]


def test_the_budget_reserves_each_requests_working_memory():
    """``work_bytes(rows, opts)`` (a model's working memory) counts with a request's images from
    admission until its batch stops running; a request whose images and work exceed the budget
    alone is refused whatever is queued, and one that fits alone waits for room."""
    pool = WorkerPool(1)
    run = Blocker(block_rows=2)
    kib = 1 << 10

    def work(n: int, opts: InferOptions) -> int:  # 100 KiB an image per 10 steps
        return n * 10 * kib * (opts.steps or 10)

    async def main():
        b = Batcher(run, max_batch=1, pool=pool, inline_rows=0, max_bytes=1000 * kib, name="snn", work_bytes=work)
        first = asyncio.ensure_future(b.infer(rows(2, 1.0), InferOptions()))
        await run.wait_started()
        assert b.held_bytes == 2 * 16 + 200 * kib  # images (2 x 4 float32) and their work
        queued = asyncio.ensure_future(b.infer(rows(2, 2.0), InferOptions(steps=30)))
        await asyncio.sleep(0)
        assert b.held_bytes == 4 * 16 + 800 * kib
        with pytest.raises(RequestError, match=r"holds 0\.8 MiB .*this request needs 0\.2 MiB"):
            await b.infer(rows(2, 0.0), InferOptions())
        with pytest.raises(RequestError, match=r"request of 1\.0 MiB \(decoded images, message and the working"):
            await b.infer(rows(1, 0.0), InferOptions(steps=103))
        run.release()
        await asyncio.gather(first, queued)
        assert b.held_bytes == 0
        await b.infer(rows(2, 0.0), InferOptions(steps=40))  # 800 KiB: fits once the others are gone
        assert b.held_bytes == 0

    try:
        asyncio.run(main())
    finally:
        run.release()
        pool.close()


def test_each_running_batch_holds_its_fixed_part_within_the_budget():
    """``fixed_bytes`` (what a model's batch takes once, whatever its rows) counts while each
    batch runs: a request is admitted only with room for one more batch's fixed part, and a
    batch that would take the count past the budget waits for a running one to end, though a
    worker is free."""
    pool = WorkerPool(3)
    run = Blocker(block_rows=1)
    kib = 1 << 10

    def work(n: int, opts: InferOptions) -> int:
        return n * 100 * kib

    async def main():
        b = Batcher(
            run, max_batch=1, pool=pool, inline_rows=0, max_bytes=1000 * kib, work_bytes=work, fixed_bytes=300 * kib
        )
        first = asyncio.ensure_future(b.infer(rows(1, 1.0), InferOptions()))
        await run.wait_started()
        assert b.held_bytes == 16 + 100 * kib + 300 * kib
        with pytest.raises(RequestError, match=r"request of 1\.1 MiB \(decoded images, message and the working"):
            await b.infer(rows(8, 0.0), InferOptions())  # 800 KiB and a batch's 300: never fits
        # two more in one turn: both are admitted (each leaves room for one more batch), the
        # first starts on the second worker, the other waits although the third is free
        later = [asyncio.ensure_future(b.infer(rows(1, v), InferOptions())) for v in (2.0, 3.0)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert b.queued == 1 and b.held_bytes == 3 * (16 + 100 * kib) + 2 * 300 * kib
        with pytest.raises(RequestError, match=r"holds 0\.9 MiB .*this request needs 0\.4 MiB"):
            await b.infer(rows(1, 0.0), InferOptions())
        run.release()
        outs = await asyncio.gather(first, *later)
        assert [float(o["double"][0, 0]) for o, _ in outs] == [2.0, 4.0, 6.0]
        assert b.held_bytes == 0 and b.queued == 0

    try:
        asyncio.run(main())
    finally:
        run.release()
        pool.close()
    assert len(run.calls) == 3


@pytest.mark.parametrize("threaded", [False, True])
def test_a_batch_whose_images_cannot_be_joined_fails_and_gives_everything_back(threaded):
    """Joining a batch's images can fail before the model runs (no memory for the copy; here
    images of two widths): its requests get the error, and the batch's bytes, fixed part and
    worker place are given back, so that the next request runs."""
    pool = WorkerPool(1)
    sizes, run = recording_run()

    async def main():
        kw = {"pool": pool, "inline_rows": 0} if threaded else {}
        # a window no one waits out, ended by the second request, which fills the batch
        b = Batcher(run, max_batch=2, max_delay_s=LONG, max_bytes=1 << 20, fixed_bytes=1000, **kw)
        calls = [b.infer(rows(1, 0.0, width=w), InferOptions()) for w in (4, 5)]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
        assert all(isinstance(r, ValueError) for r in results) and sizes == []
        assert b.held_bytes == 0 and b._inflight == 0
        out, _ = await asyncio.wait_for(b.infer(rows(2, 1.0), InferOptions()), 30)
        np.testing.assert_array_equal(out["x"], rows(2, 1.0))

    try:
        asyncio.run(main())
    finally:
        pool.close()
    assert sizes == [2]


def test_large_batches_run_off_the_event_loop():
    """An inline batcher with a pool runs batches of more than inline_rows images on a worker:
    while one is computing, small requests are answered on the loop (the old inline-only
    batcher ran it on the loop thread, which could then answer nothing until it finished)."""
    pool = WorkerPool(1)
    run = Blocker(block_rows=100)

    async def main():
        loop_thread = threading.get_ident()
        b = Batcher(run, max_batch=64, busy_delay_s=0.001, pool=pool, inline_rows=8)
        large = asyncio.ensure_future(b.infer(rows(100, 0.5), InferOptions()))
        await run.wait_started()
        for _ in range(3):  # the loop is free: small requests run inline, at once
            out, _ = await b.infer(rows(8, 0.25), InferOptions())
            np.testing.assert_array_equal(out["double"], rows(8, 0.5))
        assert not large.done()
        run.release()
        out, version = await large
        np.testing.assert_array_equal(out["double"], rows(100, 1.0))
        return loop_thread

    try:
        loop_thread = asyncio.run(main())
    finally:
        run.release()
        pool.close()
    assert not run.blocked_loop
    assert [n for n, _ in run.calls] == [100, 8, 8, 8]
    assert run.calls[0][1] != loop_thread and all(t == loop_thread for _, t in run.calls[1:])


def test_each_batch_reports_how_long_the_model_ran_on_it(monkeypatch):
    """on_batch gets (requests, images, seconds the run took): inline at once, inline after a
    window, and on a worker, where the time a batch waited for the busy worker does not count.
    The clock is the run's own: each run moves it on by one second per image."""
    from types import SimpleNamespace

    from sjff_server.inference import batching

    clock = [0.0]
    monkeypatch.setattr(batching, "time", SimpleNamespace(perf_counter=lambda: clock[0], monotonic=time.monotonic))
    first_started, release = threading.Event(), threading.Event()

    def run(x, opts):
        if len(x) == 3:  # the first worker batch holds the worker until released
            first_started.set()
            assert release.wait(LONG)
        clock[0] += len(x)
        return {"x": x}, 0

    seen = []
    pool = WorkerPool(1)

    async def main():
        on = Batcher(run, max_batch=8, on_batch=lambda *a: seen.append(a))  # no pool: always inline
        await on.infer(rows(2, 0.5), InferOptions())
        windowed = Batcher(run, max_batch=4, max_delay_s=LONG, on_batch=lambda *a: seen.append(a))
        await asyncio.gather(windowed.infer(rows(2, 0.5), InferOptions()), windowed.infer(rows(2, 0.5), InferOptions()))
        threaded = Batcher(run, max_batch=64, pool=pool, inline_rows=1, on_batch=lambda *a: seen.append(a))
        first = asyncio.ensure_future(threaded.infer(rows(3, 0.5), InferOptions()))
        await asyncio.get_running_loop().run_in_executor(None, first_started.wait, LONG)
        second = asyncio.ensure_future(threaded.infer(rows(5, 0.5), InferOptions()))
        for _ in range(5):  # the second batch is handed to the pool, behind the first
            await asyncio.sleep(0)
        release.set()
        await asyncio.gather(first, second)

    try:
        asyncio.run(main())
    finally:
        release.set()
        pool.close()
    assert seen == [(1, 2, 2.0), (2, 4, 4.0), (1, 3, 3.0), (1, 5, 5.0)]


@pytest.mark.parametrize("kind", ["analog", "spike"])
def test_a_budget_that_cannot_hold_one_image_is_warned_of_at_load(sjff_models, tmp_path, kind):
    """A served model's batcher counts the model's fixed working memory once per batch; a
    --max-inflight-mb below what one image needs is said at load (every request would be
    refused), and a request then is refused with the MiB it needs."""
    import serving_utils as su
    from sjff_server.learning.options import LearnOptions
    from sjff_server.serving.models import load_served_model

    from spikingjelly_ff.runtime import load_exported

    root = su.make_repository(tmp_path / "repo", {"m": sjff_models[kind]})
    (spec,), _ = scan_repository(root)
    fixed = load_exported(sjff_models[kind]).working_memory().fixed
    pool = WorkerPool(1)
    try:
        for mib, refused in ((4, True), (256, False)):
            served, _ = load_served_model(
                spec,
                state_dir=None,
                ort_threads=1,
                learn_options=LearnOptions(),
                pool=pool,
                max_inflight_bytes=mib << 20,
            )
            assert served.batcher.fixed_bytes == fixed >= 4 << 20
            note = served.budget_note()
            assert (note is not None) == refused
            if refused:
                assert note.startswith("the inference memory limit (4 MiB) is below what one image needs")
                with pytest.raises(RequestError, match="exceeds the inference memory limit"):
                    served.batcher.submit(np.zeros((1, served.in_features), np.float32), InferOptions())
    finally:
        pool.close()


def test_served_analog_model_runs_large_requests_off_the_loop(sjff_models, mnist_samples, tmp_path):
    """The server's wiring: load_served_model gives an analog model the worker pool and an
    inline limit from its per-image cost, so a 4,096-image request runs on a worker while the
    loop answers a one-image request. The engine's run is wrapped to block until released."""
    import serving_utils as su
    from sjff_server.learning.options import LearnOptions
    from sjff_server.serving.models import load_served_model

    from spikingjelly_ff.runtime import load_exported

    root = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    (spec,), _ = scan_repository(root)
    pool = WorkerPool(1)
    served, _ = load_served_model(spec, state_dir=None, ort_threads=1, learn_options=LearnOptions(), pool=pool)
    engine_run = served.engine.run
    gate = Blocker(block_rows=4096)

    def run(pub, x, opts):
        gate(x, opts)  # blocks the 4,096-image call only
        return engine_run(pub, x, opts)

    served.engine.run = run
    images, _ = mnist_samples
    x = su.as_float(np.resize(images, (4096, images.shape[1])))
    ref = load_exported(sjff_models["analog"], threads=1).run(x)["scores"]

    async def main():
        large = asyncio.ensure_future(served.batcher.infer(x, InferOptions()))
        await gate.wait_started()
        out, _ = await served.batcher.infer(x[:1], InferOptions())
        np.testing.assert_allclose(out["scores"], ref[:1], rtol=1e-5, atol=1e-5)
        assert not large.done()
        gate.release()
        out, _ = await large
        np.testing.assert_allclose(out["scores"], ref, rtol=1e-5, atol=1e-5)
        return threading.get_ident()

    try:
        loop_thread = asyncio.run(main())
    finally:
        gate.release()
        pool.close()
    assert not gate.blocked_loop, "the 4,096-image request ran on the event loop"
    assert served.batcher.inline_rows == 16_000_000 // served.engine.row_macs
    assert gate.calls[0] == (4096, gate.calls[0][1]) and gate.calls[0][1] != loop_thread
    assert gate.calls[1] == (1, loop_thread)


def test_window_policy_waits_only_under_load():
    from sjff_server.inference.window import WindowPolicy

    w = WindowPolicy(0.002, probe_every=10)
    delays = [w.delay(busy=False) for _ in range(30)]
    assert delays.count(0.0) == 27 and delays.count(0.0005) == 3  # a lone client: rare short probes only
    assert w.delay(busy=True) == 0.002
    w.record(1)
    assert not w.productive()
    w.record(6)  # a window caught company: keep waiting, end early once 6 are queued
    assert w.productive() and w.delay(busy=False) == 0.002
    ends, exploring = [], []
    for _ in range(16):
        ends.append(w.early_flush_at())
        exploring.append(w.exploring)
    assert ends == [6] * 16 and exploring == ([False] * 7 + [True]) * 2  # every 8th window explores
    # an exploring window waits twice the mean spacing of its calls for the next, at least 100 µs
    assert w.quiet_gap(1.0, 1.0009, 4) == pytest.approx(0.0006)
    assert w.quiet_gap(1.0, 1.00001, 6) == 100e-6 and w.quiet_gap(1.0, 1.0, 1) == 100e-6
    for _ in range(32):
        w.record(1)  # load has gone
    assert not w.productive()
    assert w.delay(busy=True) == 0.0  # windows keep catching nobody: a busy signal alone is not load
    w.record(9)
    w.short(2)  # a window ran out with 2, below the count it expected: larger sizes are forgotten
    w.record(2)
    assert w.early_flush_at() == 2 and len(w.sizes) == 32


def _wave(b: Batcher, n: int):
    """``n`` calls queued in one event-loop turn (so none can miss a window: timers only fire
    between turns), answered within 30 s (a window of LONG seconds is never waited out)."""
    calls = [b.infer(rows(1, 0), InferOptions(), busy=True) for _ in range(n)]
    return asyncio.wait_for(asyncio.gather(*calls), 30)


def test_an_exploring_window_grows_the_batch_and_ends_on_a_quiet_gap(monkeypatch):
    """Windows end as soon as the count of recent windows is queued; every 8th explores for more:
    it stays open past that count (across event-loop turns) and ends once no call has come for a
    quiet gap (here at least 1 s, so no pause of the machine splits the batch), not after its
    window."""
    from sjff_server.inference import window

    monkeypatch.setattr(window, "MIN_QUIET_S", 1.0)
    sizes, run = recording_run()

    async def main():
        b = Batcher(run, max_batch=64, busy_delay_s=LONG)
        b.window.record(3)  # recent windows held 3 requests
        for _ in range(7):
            await _wave(b, 3)
        first = asyncio.ensure_future(_wave(b, 3))  # the 8th window reaches the count of 3 ...
        for _ in range(5):
            await asyncio.sleep(0)
        assert b.queued == 3  # ... and stays open for more
        await _wave(b, 2)  # they join it: one batch of 5, ended by the quiet gap
        await first
        await _wave(b, 5)  # and the next window expects 5

    asyncio.run(main())
    assert sizes == [3] * 7 + [5, 5]


def test_a_window_ended_at_its_count_keeps_its_sizes_when_its_batch_is_split():
    """A window that ended early at the count it expected remembers that count even when its
    requests run as several batches (different options): only a window that ran out forgets."""
    sizes, run = recording_run()

    async def main():
        b = Batcher(run, max_batch=64, busy_delay_s=LONG)
        b.window.record(4)
        calls = [b.infer(rows(1, 0), InferOptions(latent=i % 2 == 1), busy=True) for i in range(4)]
        await asyncio.wait_for(asyncio.gather(*calls), 30)
        return list(b.window.sizes)

    assert asyncio.run(main()) == [4, 2]  # the window's first batch is recorded; 4 is kept
    assert sizes == [2, 2]


def test_a_lone_client_that_looks_busy_stops_waiting_for_company():
    """A lone client whose next call comes right after its answer looks busy to the server; once
    a few windows in a row caught nobody, its calls run at once instead of waiting out a window."""
    sizes, run = recording_run()

    async def main():
        b = Batcher(run, max_batch=64, busy_delay_s=0.05)
        for _ in range(12):
            await asyncio.wait_for(b.infer(rows(1, 0), InferOptions(), busy=True), 30)
        return len(b.window.sizes)

    windows = asyncio.run(main())
    assert sizes == [1] * 12
    assert windows == 4  # only the first 4 calls waited out a window


def test_a_window_that_runs_out_forgets_the_sizes_it_expected():
    """Clients gone: a window that runs out below the count it waited for resets the memory, so
    the next window ends at the new count instead of waiting its window out again."""
    sizes, run = recording_run()

    async def main():
        b = Batcher(run, max_batch=64, busy_delay_s=LONG)
        b.window.record(6)
        b.window.window_s = 0.05  # this window runs out (with 2 of the 6 it expects)
        await _wave(b, 2)
        b.window.window_s = LONG
        await _wave(b, 2)  # ends at 2 queued, not after LONG

    asyncio.run(main())
    assert sizes == [2, 2]
