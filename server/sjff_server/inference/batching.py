"""Dynamic batching of concurrent inference requests for one model version.

Requests that arrive while the model is busy (or within ``max_delay_s`` of the first one)
are concatenated into one batch of at most ``max_batch`` images, run once, and each request
is answered with the batch's outputs and its row range (:data:`Answer`). Only requests with
equal :class:`InferOptions` share a batch.
With a configured window (``max_delay_s``) a batch of fewer than ``max_batch`` images runs
once its oldest request has waited the window out, also a request left over from a full one.

The queue window adapts to load (:class:`WindowPolicy`). grpc.aio accepts one call per
event-loop turn and a turn costs a few hundred microseconds, so concurrent requests reach
the batcher one after another and would rarely meet; under load the first request of a batch
therefore waits up to ``busy_delay_s`` for company, and the model's weights are read once per
batch instead of once per request. A lone client does not wait (except on a rare, short probe
that detects load); one fast enough to look busy waits out at most four windows first.

Where a batch runs:

- inline, on the event loop itself, when it is small: at most ``inline_rows`` images (the
  server derives it from the model's per-image cost, ``--max-inline-mmacs``). onnxruntime
  takes tens of microseconds for a small MNIST batch, less than a thread hand-off costs;
  requests that arrive meanwhile simply queue for the next batch.
- on a :class:`WorkerPool` thread otherwise (every spiking batch; an analog batch too costly
  to hold the loop, which health checks and learning acknowledgements share). onnxruntime and
  numpy release the GIL while they compute. Spiking batches run at most one per worker at a
  time (later requests queue here and batch together); a batch whose requests have all gone
  (deadline or cancellation) is dropped if still queued, or interrupted inside its time-step
  loop.

Memory: the requests a model holds (queued, or in a running batch) are counted (decoded
images plus the caller's ``wire_bytes``: the request message), and a request that would push
the count past ``max_bytes`` is refused with RESOURCE_EXHAUSTED. A request's bytes count
until it leaves the queue (answered, failed, expired, cancelled) or, once taken into a batch,
until that batch stops running.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from functools import partial

import numpy as np

from ..errors import ResourceExhausted
from ..interrupt import Interrupted, WorkerPool
from .engine import InferOptions
from .window import WindowPolicy

__all__ = ["Answer", "BatchResult", "Batcher", "Queued", "rows_of"]

#: (outputs, learning version that produced them): what a run returns for a batch, and what
#: :meth:`Batcher.infer` returns for one request's rows
BatchResult = tuple[dict[str, np.ndarray], int]
#: what a request is answered with: ``(outputs of its whole batch, version, start, stop)``,
#: its rows being ``start:stop`` (slicing is left to whoever encodes the answer)
Answer = tuple[dict[str, np.ndarray], int, int, int]
RunFn = Callable[[np.ndarray, InferOptions], BatchResult]
log = logging.getLogger("sjff_server.batching")


class Queued:
    """A request waiting in the queue (or in a running batch) for its ``future``."""

    __slots__ = ("x", "rows", "nbytes", "opts", "future", "deadline", "taken", "t")

    def __init__(
        self, x: np.ndarray, opts: InferOptions, future: asyncio.Future, deadline: float | None, t: float
    ) -> None:
        self.x: np.ndarray | None = x
        self.t = t  # loop.time() when it was queued
        self.rows = len(x)
        self.nbytes = 0  # counted against the byte budget until released
        self.opts = opts
        self.future = future
        self.deadline = deadline
        self.taken = False  # part of a batch: its bytes go when the batch stops running


class Batcher:
    """Queue requests for ``run`` (which sees ``[sum N, D]`` images and returns per-row outputs).

    ``pool``: worker threads for batches of more than ``inline_rows`` images (without a pool
    every batch runs inline). ``max_bytes``: budget of the bytes the model's requests hold
    (None: no limit): each request's decoded images, its message and ``work_bytes(rows,
    opts)``, the working memory its rows take when they run (reserved from admission), and
    ``fixed_bytes`` for each batch while it runs (what a batch takes once, whatever its rows):
    a request is admitted only with room for one more batch's fixed part, and a batch starts
    while others run only where its fixed part fits, so what runs never takes the count past
    the budget; ``name`` names the model in refusals.
    ``on_batch(requests, images, seconds)`` is told of every executed batch and how long
    ``run`` took on it."""

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch: int = 64,
        max_delay_s: float = 0.0,
        busy_delay_s: float = 0.0,
        pool: WorkerPool | None = None,
        inline_rows: int = 0,
        max_bytes: int | None = None,
        name: str = "",
        on_batch: Callable[[int, int, float], None] | None = None,
        work_bytes: Callable[[int, InferOptions], int] | None = None,
        fixed_bytes: int = 0,
    ) -> None:
        self._run = run
        self._work_bytes = work_bytes
        self.fixed_bytes = max(0, int(fixed_bytes))
        self.max_batch = max(1, int(max_batch))
        self.max_delay_s = max(0.0, float(max_delay_s))
        self.busy_delay_s = max(0.0, float(busy_delay_s))
        self._pool = pool
        #: batches of at most this many images run on the event loop
        self.inline_rows = sys.maxsize if pool is None else max(0, int(inline_rows))
        self.max_bytes = max_bytes
        self.name = name
        self.held_bytes = 0  # queued and running requests, and each running batch's fixed part
        self._on_batch = on_batch
        self._pending: deque[Queued] = deque()
        self._scheduled: asyncio.Handle | asyncio.TimerHandle | None = None
        self._inflight = 0  # batches on the pool
        self._rows = 0  # images pending
        self._timed = False  # the scheduled flush is a window (a timer)
        self._flush_at: int | None = None  # requests at which the window ends early
        self._window_end = 0.0  # loop time at which the open window ends
        # batches that only ever run on workers wait for a free worker instead of a window
        self.window = WindowPolicy(self.busy_delay_s if self.inline_rows else 0.0)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def infer(
        self,
        x: np.ndarray,
        opts: InferOptions,
        deadline: float | None = None,
        busy: bool = False,
        wire_bytes: int = 0,
    ) -> BatchResult:
        """Outputs for images ``x`` ``[N, D]`` (:meth:`submit`, then the wait for the batch)."""
        answer = self.submit(x, opts, deadline, busy, wire_bytes)
        if type(answer) is Queued:
            try:
                answer = await answer.future
            except BaseException:
                self.withdraw(answer)
                raise
        return rows_of(answer)

    def submit(
        self,
        x: np.ndarray,
        opts: InferOptions,
        deadline: float | None = None,
        busy: bool = False,
        wire_bytes: int = 0,
    ) -> Answer | Queued:
        """Run or queue images ``x`` ``[N, D]``. ``deadline`` is a ``time.monotonic()`` instant
        after which the request is dropped (TimeoutError); ``busy`` says that other requests are
        in flight (so waiting for them pays); ``wire_bytes``: what else the request holds while
        it waits (its message), counted with ``x.nbytes`` and the working memory its rows
        will take. A small request with nothing queued
        and no reason to wait runs at once on the loop and its :data:`Answer` is returned (no
        future, no extra event-loop turns); otherwise a :class:`Queued` request whose ``future``
        gives the answer, and which the caller hands to :meth:`withdraw` if that wait ends in an
        exception (cancelled, expired, failed). ResourceExhausted when the budget is spent.

        Synchronous, so that a handler waits in its own frame (one coroutine resumed per
        answer, not a chain of them)."""
        nbytes = x.nbytes + wire_bytes
        if self._work_bytes is not None:
            nbytes += self._work_bytes(len(x), opts)
        self._admit(nbytes)
        delay = None
        if self._scheduled is None:
            delay = self.max_delay_s or self.window.delay(busy)
            if delay == 0 and not self._pending and len(x) <= self.inline_rows:
                t0 = time.perf_counter()
                outs, version = self._run(x, opts)
                if self._on_batch is not None:
                    self._on_batch(1, len(x), time.perf_counter() - t0)
                return outs, version, 0, len(x)
        return self._enqueue(x, opts, deadline, delay, nbytes)

    def withdraw(self, it: Queued) -> None:
        """The wait for ``it`` ended in an exception (cancelled, expired, or its batch failed):
        a request that left the queue without running drops its images now, even while the
        item still sits in the queue, so dead requests hold no memory. (Called by the waiter,
        not a done callback: that would cost an extra event-loop callback on every answer.)"""
        if not it.future.done():  # the waiter was closed some other way: withdraw it
            it.future.cancel()
        if not it.taken and it.nbytes:
            self._release(it)
            it.x = None

    def _admit(self, nbytes: int) -> None:
        # room for the request and for the fixed part of one more batch: then the batches
        # that hold these requests can always start once the running ones are done
        limit = self.max_bytes
        if limit is None or self.held_bytes + nbytes + self.fixed_bytes <= limit:
            return
        mib = 1 << 20
        nbytes += self.fixed_bytes
        if nbytes > limit:
            raise ResourceExhausted(
                f"request of {nbytes / mib:.1f} MiB (decoded images, message and the working memory of "
                f"scoring them) exceeds the inference memory limit of model {self.name!r} ({limit / mib:g} MiB); "
                "send fewer images per request (or fewer steps) or raise --max-inflight-mb",
            )
        raise ResourceExhausted(
            f"inference of model {self.name!r} holds {self.held_bytes / mib:.1f} MiB "
            f"(limit {limit / mib:g} MiB; this request needs {nbytes / mib:.1f} MiB); "
            "retry later or raise --max-inflight-mb",
        )

    def _release(self, it: Queued) -> None:
        self.held_bytes -= it.nbytes
        it.nbytes = 0

    def _enqueue(
        self, x: np.ndarray, opts: InferOptions, deadline: float | None, delay: float | None, nbytes: int
    ) -> Queued:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut = loop.create_future()
        it = Queued(x, opts, fut, deadline, loop.time())
        it.nbytes = nbytes
        self.held_bytes += it.nbytes
        self._pending.append(it)
        rows = self._rows = self._rows + len(x)
        if delay is not None:  # nothing scheduled yet: this request opens a batch
            if delay > 0 and rows < self.max_batch:
                self._window_end = it.t + delay
                self._scheduled = loop.call_at(self._window_end, self._flush)
                self._timed = True
                self._flush_at = None if self.max_delay_s else self.window.early_flush_at()
            else:
                # call_soon: everything that arrives in this loop iteration joins the batch
                self._scheduled = loop.call_soon(self._flush)
                self._timed = False
        elif self._timed and (
            rows >= self.max_batch or (self._flush_at is not None and len(self._pending) >= self._flush_at)
        ):
            self._scheduled.cancel()
            if rows < self.max_batch and self.window.exploring:
                # an exploring window stays open while calls keep coming (WindowPolicy)
                quiet = self.window.quiet_gap(self._pending[0].t, it.t, len(self._pending))
                self._scheduled = loop.call_at(min(self._window_end, it.t + quiet), self._flush)
            else:
                self._scheduled = loop.call_soon(self._flush)
        return it

    @property
    def queued(self) -> int:
        return len(self._pending)

    def _live(self, it: Queued, now: float) -> bool:
        if it.future.done():  # cancelled by the client meanwhile
            return False
        if it.deadline is not None and now > it.deadline:
            it.future.set_exception(TimeoutError())
            return False
        return True

    def _take(self) -> list[Queued]:
        """The next batch: the oldest live request plus following ones with equal options."""
        now = time.monotonic()
        first: Queued | None = None
        while self._pending:
            it = self._pending.popleft()
            if self._live(it, now):
                first = it
                break
        if first is None:
            self._rows = 0
            return []
        batch, rows = [first], first.rows
        if first.opts.seed is None and first.opts.steps is None:  # an explicit seed: reproducible, unbatched
            keep: deque[Queued] = deque()
            while self._pending and rows < self.max_batch:
                it = self._pending.popleft()
                if not self._live(it, now):
                    continue
                # most requests carry the plan's own options object: identity first
                if (it.opts is not first.opts and it.opts != first.opts) or rows + it.rows > self.max_batch:
                    keep.append(it)
                    if len(keep) > 64:  # do not scan the whole queue for matches
                        break
                    continue
                batch.append(it)
                rows += it.rows
            keep.extend(self._pending)
            self._pending = keep
        self._rows = sum(it.rows for it in self._pending)
        for it in batch:
            it.taken = True
        return batch

    def _flush(self) -> None:
        self._scheduled = None
        windowed, self._timed = self._timed, False
        # a window that ended before the count it expected came (not one ended early at that
        # count, whose first batch may still be smaller: other options, seeds, row limits)
        ran_out = (
            windowed
            and self._flush_at is not None
            and len(self._pending) < self._flush_at
            and self._rows < self.max_batch
        )
        first = True
        while self._pending:
            if not self.inline_rows and self._inflight >= self._pool.size:
                break  # worker-only batches wait here for a free worker (and gather company)
            if self.max_delay_s and self._rows < self.max_batch and self._wait_for_company():
                break
            if self._inflight and self.max_bytes is not None and self.held_bytes + self.fixed_bytes > self.max_bytes:
                break  # no room for another batch's fixed part: the next one starts when one ends
            batch = self._take()
            if not batch:
                break
            self.held_bytes += self.fixed_bytes  # until _done
            rows = sum(it.rows for it in batch)
            if first and windowed and not self.max_delay_s:
                if ran_out:
                    self.window.short(len(batch))
                self.window.record(len(batch))
            first = False
            if rows <= self.inline_rows:
                self._run_inline(batch)
            else:
                # too costly for the loop: a worker thread (queued in the pool if all are busy)
                self._inflight += 1
                asyncio.ensure_future(self._run_threaded(batch))

    def _wait_for_company(self) -> bool:
        """With a configured window (``max_delay_s``) a partial batch runs only once its oldest
        request has waited the window out, also when it was left over from a full batch."""
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()  # gone meanwhile: its window does not count
        if not self._pending:
            return False
        loop = self._loop
        assert loop is not None
        due = self._pending[0].t + self.max_delay_s
        if due <= loop.time():
            return False
        self._scheduled = loop.call_at(due, self._flush)
        self._timed = True
        self._flush_at = None
        return True

    def _split(self, batch: list[Queued], result: BatchResult) -> None:
        outs, version = result
        start = 0
        for it in batch:
            stop = start + it.rows
            if not it.future.done():
                it.future.set_result((outs, version, start, stop))
            start = stop

    def _fail(self, batch: list[Queued], exc: BaseException) -> None:
        for it in batch:
            if not it.future.done():
                it.future.set_exception(exc)

    def _done(self, batch: list[Queued]) -> None:
        """The batch has stopped running: it and its requests hold no more memory here."""
        self.held_bytes -= self.fixed_bytes
        for it in batch:
            self._release(it)
            it.x = None

    def _inputs(self, batch: list[Queued]) -> np.ndarray:
        return batch[0].x if len(batch) == 1 else np.concatenate([it.x for it in batch])

    def _run_inline(self, batch: list[Queued]) -> None:
        t0 = time.perf_counter()
        try:
            x = self._inputs(batch)
            result = self._run(x, batch[0].opts)
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
            self._fail(batch, exc)
            return
        finally:
            self._done(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch), len(x), time.perf_counter() - t0)
        self._split(batch, result)

    def _timed_run(self, x: np.ndarray, opts: InferOptions) -> tuple[BatchResult, float]:
        """``run`` on a worker thread, and how long it took there (not the wait for a worker)."""
        t0 = time.perf_counter()
        result = self._run(x, opts)
        return result, time.perf_counter() - t0

    async def _run_threaded(self, batch: list[Queued]) -> None:
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        try:
            x = self._inputs(batch)  # (no memory for the joined images: the batch fails, and ends)
            rows = len(x)
            opts = batch[0].opts
            job = self._pool.submit(partial(self._timed_run, x, opts), loop)
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
            self._fail(batch, exc)
            self._ended(batch, loop)
            return
        del x  # the job holds the images; once it is dropped or done nothing here does
        pool = self._pool

        def gone(_: asyncio.Future) -> None:
            if all(it.future.done() for it in batch):
                pool.interrupt(job)

        timer = None
        deadlines = [it.deadline for it in batch]
        if None not in deadlines:
            timer = loop.call_at(loop.time() + max(0.0, max(deadlines) - time.monotonic()), pool.interrupt, job)
        for it in batch:
            it.future.add_done_callback(gone)
        t0 = time.perf_counter()
        try:
            result, ran_s = await job.future
        except Interrupted:
            log.info(
                "batch interrupted: every request gone",
                extra={"requests": len(batch), "images": rows, "ran_s": round(time.perf_counter() - t0, 4)},
            )
            self._fail(batch, TimeoutError())
        except Exception as exc:  # noqa: BLE001
            self._fail(batch, exc)
        else:
            if self._on_batch is not None:
                self._on_batch(len(batch), rows, ran_s)
            self._split(batch, result)
        finally:
            if timer is not None:
                timer.cancel()
            for it in batch:
                it.future.remove_done_callback(gone)
            self._ended(batch, loop)

    def _ended(self, batch: list[Queued], loop: asyncio.AbstractEventLoop) -> None:
        """A batch handed to the pool has ended: its memory and its place go, and what waits
        for a worker or for room in the budget gets a flush."""
        self._done(batch)
        self._inflight -= 1
        if self._pending and self._scheduled is None:
            self._scheduled = loop.call_soon(self._flush)


def rows_of(answer: Answer) -> BatchResult:
    """One request's outputs (views of its rows) and version from its :data:`Answer`."""
    outs, version, start, stop = answer
    return {k: v[start:stop] for k, v in outs.items()}, version
