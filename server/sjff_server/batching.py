"""Dynamic batching of concurrent inference requests for one model version.

Requests that arrive while the model is busy (or within ``max_delay_s`` of the first one)
are concatenated into one batch of at most ``max_batch`` images, run once, and the outputs
are split back per request. Only requests with equal :class:`InferOptions` share a batch.

The queue window adapts to load (:class:`WindowPolicy`). grpc.aio accepts one call per
event-loop turn and a turn costs a few hundred microseconds, so concurrent requests reach
the batcher one after another and would rarely meet; under load the first request of a batch
therefore waits up to ``busy_delay_s`` for company, and the model's weights are read once per
batch instead of once per request. A lone client never waits (except on a rare, short probe
that detects load).

Two execution modes:

- inline (analog models): the batch runs on the event loop itself. onnxruntime takes tens of
  microseconds for an MNIST batch, less than a thread hand-off costs; requests that arrive
  meanwhile simply queue for the next batch.
- threaded (spiking models, milliseconds per batch): batches run on a :class:`WorkerPool`,
  at most one per worker at a time; a batch whose requests have all gone (deadline or
  cancellation) is interrupted inside its time-step loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from .engine import InferOptions
from .interrupt import Interrupted, WorkerPool

__all__ = ["Batcher", "BatchResult"]

#: (outputs for this request's rows, learning version that produced them)
BatchResult = tuple[dict[str, np.ndarray], int]
RunFn = Callable[[np.ndarray, InferOptions], BatchResult]
log = logging.getLogger("sjff_server.batching")


class _Item:
    __slots__ = ("x", "opts", "future", "deadline")

    def __init__(self, x: np.ndarray, opts: InferOptions, future: asyncio.Future, deadline: float | None) -> None:
        self.x = x
        self.opts = opts
        self.future = future
        self.deadline = deadline


class WindowPolicy:
    """How long the first request of an inline batch waits for others (seconds).

    - Wait the full window when the caller reports other requests in flight (``busy``) or
      when any of the last ``memory`` windows caught company (load is present).
    - Otherwise do not wait, but every ``probe_every``-th time wait a quarter window: a probe
      that detects load when requests only ever arrive one at a time.
    - Flush early once as many requests are queued as the largest recent window held (no more
      are likely to come), except on every 8th window, which explores for more.
    """

    def __init__(self, window_s: float, probe_every: int = 200, memory: int = 32) -> None:
        self.window_s = max(0.0, window_s)
        self.probe_every = probe_every
        self.sizes: deque[int] = deque(maxlen=memory)
        self._lone = 0
        self._windows = 0

    def productive(self) -> bool:
        return any(s > 1 for s in self.sizes)

    def delay(self, busy: bool) -> float:
        if self.window_s <= 0:
            return 0.0
        if busy or self.productive():
            return self.window_s
        self._lone += 1
        if self._lone >= self.probe_every:
            self._lone = 0
            return self.window_s / 4
        return 0.0

    def early_flush_at(self) -> int | None:
        """Requests queued at which a running window may end early (None: wait it out)."""
        self._windows += 1
        if not self.sizes or self._windows % 8 == 0:
            return None
        return max(2, max(self.sizes))

    def record(self, requests: int) -> None:
        self.sizes.append(requests)


class Batcher:
    """Queue requests for ``run`` (which sees ``[sum N, D]`` images and returns per-row outputs)."""

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch: int = 64,
        max_delay_s: float = 0.0,
        busy_delay_s: float = 0.0,
        pool: WorkerPool | None = None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self._run = run
        self.max_batch = max(1, int(max_batch))
        self.max_delay_s = max(0.0, float(max_delay_s))
        self.busy_delay_s = max(0.0, float(busy_delay_s))
        self._pool = pool
        self._on_batch = on_batch
        self._pending: deque[_Item] = deque()
        self._scheduled: asyncio.Handle | asyncio.TimerHandle | None = None
        self._inflight = 0
        self._rows = 0  # images pending
        self._timed = False  # the scheduled flush is a window (call_later)
        self._flush_at: int | None = None  # requests at which the window ends early
        self.window = WindowPolicy(self.busy_delay_s if pool is None else 0.0)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def infer(
        self, x: np.ndarray, opts: InferOptions, deadline: float | None = None, busy: bool = False
    ) -> BatchResult:
        """Outputs for images ``x`` ``[N, D]``. An inline model with nothing queued and no reason
        to wait runs the request at once (no future, no extra event-loop turns); otherwise it
        joins a batch (see :meth:`submit`)."""
        delay = None
        if self._scheduled is None:
            delay = self.max_delay_s or self.window.delay(busy)
            if delay == 0 and self._pool is None and not self._pending:
                result = self._run(x, opts)
                if self._on_batch is not None:
                    self._on_batch(1, len(x))
                return result
        return await self._enqueue(x, opts, deadline, delay)

    def submit(
        self, x: np.ndarray, opts: InferOptions, deadline: float | None = None, busy: bool = False
    ) -> asyncio.Future:
        """Queue images ``x`` ``[N, D]``; the future resolves to a :data:`BatchResult`.
        ``deadline`` is a ``time.monotonic()`` instant after which the request is dropped;
        ``busy`` says that other requests are in flight (so waiting for them pays)."""
        delay = (self.max_delay_s or self.window.delay(busy)) if self._scheduled is None else None
        return self._enqueue(x, opts, deadline, delay)

    def _enqueue(
        self, x: np.ndarray, opts: InferOptions, deadline: float | None, delay: float | None
    ) -> asyncio.Future:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append(_Item(x, opts, fut, deadline))
        rows = self._rows = self._rows + len(x)
        if delay is not None:  # nothing scheduled yet: this request opens a batch
            if delay > 0 and rows < self.max_batch:
                self._scheduled = loop.call_later(delay, self._flush)
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
            self._scheduled = loop.call_soon(self._flush)
        return fut

    @property
    def queued(self) -> int:
        return len(self._pending)

    def _take(self) -> list[_Item]:
        """The next batch: the oldest live request plus following ones with equal options."""
        now = time.monotonic()
        first: _Item | None = None
        while self._pending:
            it = self._pending.popleft()
            if it.future.done():  # cancelled by the client meanwhile
                continue
            if it.deadline is not None and now > it.deadline:
                it.future.set_exception(TimeoutError())
                continue
            first = it
            break
        if first is None:
            self._rows = 0
            return []
        batch, rows = [first], len(first.x)
        if first.opts.seed is not None or first.opts.steps is not None:
            self._rows = sum(len(it.x) for it in self._pending)
            return batch  # an explicit seed means a reproducible, unbatched run
        keep: deque[_Item] = deque()
        while self._pending and rows < self.max_batch:
            it = self._pending.popleft()
            if it.future.done():
                continue
            if it.deadline is not None and now > it.deadline:
                it.future.set_exception(TimeoutError())
                continue
            if it.opts != first.opts or rows + len(it.x) > self.max_batch:
                keep.append(it)
                if len(keep) > 64:  # do not scan the whole queue for matches
                    break
                continue
            batch.append(it)
            rows += len(it.x)
        keep.extend(self._pending)
        self._pending = keep
        self._rows = sum(len(it.x) for it in keep)
        return batch

    def _flush(self) -> None:
        self._scheduled = None
        windowed, self._timed = self._timed, False
        if self._pool is None:
            first = True
            while self._pending:
                batch = self._take()
                if batch:
                    if first and windowed and not self.max_delay_s:
                        self.window.record(len(batch))
                    first = False
                    self._run_inline(batch)
            return
        while self._pending and self._inflight < self._pool.size:
            batch = self._take()
            if not batch:
                break
            self._inflight += 1
            asyncio.ensure_future(self._run_threaded(batch))

    def _split(self, batch: list[_Item], result: BatchResult) -> None:
        outs, version = result
        if len(batch) == 1:
            it = batch[0]
            if not it.future.done():
                it.future.set_result(result)
            return
        start = 0
        for it in batch:
            stop = start + len(it.x)
            if not it.future.done():
                it.future.set_result(({k: v[start:stop] for k, v in outs.items()}, version))
            start = stop

    def _fail(self, batch: list[_Item], exc: BaseException) -> None:
        for it in batch:
            if not it.future.done():
                it.future.set_exception(exc)

    def _inputs(self, batch: list[_Item]) -> np.ndarray:
        return batch[0].x if len(batch) == 1 else np.concatenate([it.x for it in batch])

    def _run_inline(self, batch: list[_Item]) -> None:
        x = self._inputs(batch)
        try:
            result = self._run(x, batch[0].opts)
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
            self._fail(batch, exc)
            return
        if self._on_batch is not None:
            self._on_batch(len(batch), len(x))
        self._split(batch, result)

    async def _run_threaded(self, batch: list[_Item]) -> None:
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        x = self._inputs(batch)
        opts = batch[0].opts
        job = self._pool.submit(lambda: self._run(x, opts), loop)
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
            result = await job.future
        except Interrupted:
            log.info(
                "batch interrupted: every request gone",
                extra={"requests": len(batch), "images": len(x), "ran_s": round(time.perf_counter() - t0, 4)},
            )
            self._fail(batch, TimeoutError())
        except Exception as exc:  # noqa: BLE001
            self._fail(batch, exc)
        else:
            if self._on_batch is not None:
                self._on_batch(len(batch), len(x))
            self._split(batch, result)
        finally:
            if timer is not None:
                timer.cancel()
            for it in batch:
                it.future.remove_done_callback(gone)
            self._inflight -= 1
            if self._pending and self._scheduled is None:
                self._scheduled = loop.call_soon(self._flush)
