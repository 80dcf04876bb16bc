"""The learner's queue: one writer applies updates in arrival order, with group commit.

- Concurrent updates form a group (at most ``max_group``) computed on a private copy of the
  published weights (compute.py) and sharing one fsync of the update log; the group's new
  weights are published (one reference swap) only after the sync, and then each update is
  answered with its own version.
- Two stages overlap: while one group's records are being written and fsync'ed (the I/O
  thread), the next group is computed (the compute thread) on top of the first group's
  weights; groups are still made durable, published and answered strictly in order.
- A storage error stops learning (inference goes on): if the log could be cut back, the
  group is answered "not applied" (:class:`Unavailable`); if not, :class:`UnknownOutcome`.
  Any unexpected error of the writer also stops learning and fails every waiting call.
- Snapshots and rollbacks are queued like updates and run once every earlier group is
  durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import DeadlineExceeded, InternalError, RequestError, ResourceExhausted, Unavailable, UnknownOutcome
from ..inference.engine import Published
from ..storage.durability import OutcomeUnknown, StorageError
from ..storage.records import Update
from .compute import Result, Staged
from .versions import VersionStore

__all__ = ["GroupWriter", "Pending"]

log = logging.getLogger("sjff_server.learning")


@dataclass(slots=True)
class Pending:
    """A queued update and its caller: ``deadline`` is a ``time.monotonic()`` instant or None;
    ``started``: taken into a group (from then on it is applied unless its group fails, even
    if the caller goes away); ``waiters``: calls awaiting it (a retry joins the first call)."""

    update: Update
    deadline: float | None
    future: asyncio.Future
    started: bool = False
    waiters: int = 0


@dataclass(slots=True)
class _Control:
    kind: str  # "snapshot" | "rollback" | "barrier" | "stop"
    arg: Any = None
    future: asyncio.Future | None = None


def _retrieved(fut: asyncio.Future) -> None:
    """A done callback for a future whose failure is expected: no "never retrieved" warning."""
    if not fut.cancelled():
        fut.exception()


def internal(exc: BaseException) -> InternalError:
    return InternalError(f"learning stopped by an internal error ({type(exc).__name__})")


class GroupWriter:
    """The queue and writer task of one model's learning. Its inputs, all narrow:

    - ``compute(base, updates)``: a group applied on a copy (compute thread), see compute.py;
    - ``store``: the durable versions (append, snapshot, rollback; I/O thread);
    - ``current()``: the published weights; ``publish(pub)``: swap in a durable group's;
    - ``settled(updates, results, sync_s)``: count a durable or refused group (after its
      callers are answered); ``rolled_back(pub, restored)``: publish a durable rollback;
    - ``on_failed(why)``: learning has just stopped (called once).

    It owns the queue, the newest computed weights and whether learning has failed; ``tag``
    (model-version) names its threads and appears in its logs."""

    def __init__(
        self,
        tag: str,
        compute: Callable[[Published, Sequence[Update]], Staged],
        store: VersionStore,
        *,
        current: Callable[[], Published],
        publish: Callable[[Published], None],
        settled: Callable[[Sequence[Update], Sequence[Result], float], None],
        rolled_back: Callable[[Published, int], None],
        on_failed: Callable[[str], None],
        max_queue: int,
        max_group: int,
    ) -> None:
        self._tag = tag
        self._compute_group = compute
        self._store = store
        self._current = current
        self._publish = publish
        self._settled = settled
        self._rolled_back = rolled_back
        self._on_failed = on_failed
        self._max_queue = max_queue
        self._max_group = max_group
        self._queue: deque[Pending | _Control] = deque()
        self._wake: asyncio.Event | None = None  # set: the writer runs (None before start)
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"learn-{tag}")
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"log-{tag}")
        self._head: Published | None = None  # newest computed weights (durable or about to be)
        self._inflight: deque[asyncio.Future] = deque()  # durability stages, oldest first
        self._task: asyncio.Task | None = None
        self._failed: str | None = None

    # -- the learner's side -------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._wake is not None

    @property
    def failed(self) -> str | None:
        """Why learning stopped (None: it has not)."""
        return self._failed

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._write_loop(), name=f"learner-{self._tag}")
        self._task.add_done_callback(self._task_done)

    def submit(self, update: Update, deadline: float | None) -> asyncio.Future:
        """Queue an update; its future gives ``(version, log-odds [n])`` once durable."""
        return self.enqueue(update, deadline).future

    def enqueue(self, update: Update, deadline: float | None) -> Pending:
        """Queue an update; returns its job (:meth:`submit` gives the job's future)."""
        if len(self._queue) >= self._max_queue:
            raise ResourceExhausted(f"learning queue of {self._tag} is full ({self._max_queue})")
        job = Pending(update, deadline, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._wake.set()
        return job

    def control(self, kind: str, arg: Any = None, wait: bool = True) -> asyncio.Future | None:
        """Queue a snapshot, rollback or stop (after every earlier update)."""
        fut = asyncio.get_running_loop().create_future() if wait else None
        self._queue.append(_Control(kind, arg, fut))
        self._wake.set()
        return fut

    async def quiesce(self, timeout: float) -> None:
        """Answer every queued call before returning, so that none is cut off unanswered (a
        call cancelled while its update is being written would be applied though its caller
        was told it failed): what is queued runs for up to ``timeout`` seconds; after it, what
        has not started is refused as not applied, and what has started (one group being
        computed, one being synced, a rollback or snapshot) finishes and is answered."""
        if self._task is None or self._task.done():
            return
        first = self.control("barrier")  # done once everything queued before it is
        try:
            await asyncio.wait_for(asyncio.shield(first), max(0.0, timeout))
            return
        except TimeoutError:
            pass
        except Exception:  # noqa: BLE001 - learning stopped: the queue has been answered
            return
        first.add_done_callback(_retrieved)  # failed below
        self._fail_queue(Unavailable("the server is shutting down: not applied"))
        if self._task.done():
            return
        # after what has started; it fails only where learning stopped meanwhile, which
        # answered every call too
        last = self.control("barrier")
        last.add_done_callback(_retrieved)
        await asyncio.wait([last])

    async def stop(self, final_snapshot: bool) -> None:
        """Finish queued work, snapshot if asked, close the log, end the threads."""
        if self._task is not None and not self._task.done():
            done = self.control("stop", final_snapshot)
            await asyncio.wait([done, self._task], return_when=asyncio.FIRST_COMPLETED)
            await asyncio.wait([self._task])
        self._compute.shutdown(wait=True)
        self._io.shutdown(wait=True)

    def _stop_learning(self, why: str, exc: Exception) -> None:
        """Learning is over: fail everything that waits, tell the learner (once)."""
        if self._failed is None:
            self._failed = why
            self._on_failed(why)
        self._head = None
        self._fail_queue(exc)

    def _fail_queue(self, exc: Exception) -> None:
        """Fail every queued call; a queued "stop" stays, so that close() still finishes."""
        keep = [j for j in self._queue if isinstance(j, _Control) and j.kind == "stop"]
        while self._queue:
            j = self._queue.popleft()
            if j.future is not None and not j.future.done() and j not in keep:
                j.future.set_exception(exc)
        self._queue.extend(keep)

    def _task_done(self, task: asyncio.Task) -> None:
        """Supervision: a writer that dies (error or cancellation) must not leave calls waiting.
        Groups already handed to the I/O thread finish on their own and are answered truly."""
        exc = asyncio.CancelledError() if task.cancelled() else task.exception()
        if exc is None:
            return
        log.error("learning writer failed", exc_info=exc, extra={"model": self._tag})
        err = internal(exc)
        self._stop_learning(f"internal error: {type(exc).__name__}: {exc}", err)
        for j in list(self._queue):  # nothing is left to run a queued stop: answer it too
            if j.future is not None and not j.future.done():
                if isinstance(j, _Control) and j.kind == "stop":
                    j.future.set_result(None)
                else:
                    j.future.set_exception(err)
        self._queue.clear()

    # -- the writer task ----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        inflight = self._inflight
        while True:
            while inflight and inflight[0].done():
                inflight.popleft()
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            head = self._queue[0]
            if isinstance(head, _Control):
                self._queue.popleft()
                await self._drain()
                if head.kind == "stop":
                    await self._stop(head, loop)
                    return
                await self._run_control(head, loop)
                continue
            group = self._take_group()
            if not group:
                continue
            if self._failed is not None:
                self._fail(group, Unavailable(f"learning is stopped: {self._failed}"))
                continue
            if len(inflight) >= 2:  # at most one group syncing while the next one is computed
                await asyncio.wait([inflight[0]])
            base = self._head or self._current()
            updates = [job.update for job in group]
            try:
                staged = await loop.run_in_executor(self._compute, self._compute_group, base, updates)
            except Exception as exc:  # noqa: BLE001 - a bug, not a bad request: fail this group only
                log.exception("learning group failed", extra={"model": self._tag})
                self._fail(group, InternalError(f"update not applied: {type(exc).__name__}"))
                continue
            if staged.published is not None:
                self._head = staged.published
            prev = inflight[-1] if inflight else None
            inflight.append(asyncio.ensure_future(self._make_durable(staged, group, prev)))

    def _take_group(self) -> list[Pending]:
        group: list[Pending] = []
        now = time.monotonic()
        while self._queue and isinstance(self._queue[0], Pending) and len(group) < self._max_group:
            job = self._queue.popleft()
            if job.future.done():  # the caller went away before it started: not applied
                continue
            if job.deadline is not None and now > job.deadline:
                job.future.set_exception(DeadlineExceeded("deadline exceeded before the update was applied"))
                continue
            job.started = True
            group.append(job)
        return group

    async def _stop(self, head: _Control, loop: asyncio.AbstractEventLoop) -> None:
        self._fail_queue(Unavailable("the server is shutting down"))
        try:
            pub = self._current()
            if head.arg and self._failed is None and pub.version > max(self._store.last_snapshot, 0):
                await loop.run_in_executor(self._io, self._store.snapshot, pub, False)
        except Exception as exc:  # noqa: BLE001 - reported, shutdown goes on
            log.error("final snapshot failed", extra={"model": self._tag, "error": repr(exc)})
        finally:
            await loop.run_in_executor(self._io, self._store.close)
            head.future.set_result(None)

    async def _drain(self) -> None:
        """Wait until every computed group is durable (or failed)."""
        if self._inflight:
            await asyncio.wait(list(self._inflight))
            self._inflight.clear()
        self._head = None

    async def _make_durable(self, staged: Staged, group: list[Pending], prev: asyncio.Future | None) -> None:
        """Write + sync the group's records (after the previous group's), then publish and answer."""
        try:
            if prev is not None:
                await asyncio.wait([prev])
            if staged.records:
                await self._persist_group(staged)
            self._settle(group, staged)
        except BaseException as exc:  # supervision: nobody may be left waiting, nobody told a lie
            err = internal(exc)
            for job, res in zip(group, staged.results):
                if job.future.done():
                    continue
                if staged.durable and not isinstance(res, RequestError):
                    job.future.set_result(res)  # logged, synced and published: it is applied
                else:
                    job.future.set_exception(res if isinstance(res, RequestError) else err)
            log.error("learning group failed after its computation", exc_info=exc, extra={"model": self._tag})
            self._stop_learning(f"internal error: {type(exc).__name__}: {exc}", err)
            raise

    async def _persist_group(self, staged: Staged) -> None:
        def refuse(err: RequestError) -> None:
            staged.results = [r if isinstance(r, RequestError) else err for r in staged.results]
            staged.published = None

        if self._failed is not None:  # an earlier group's sync failed: this one built on it
            refuse(Unavailable(f"update not applied: {self._failed}"))
            return
        loop = asyncio.get_running_loop()
        try:
            staged.sync_s = await loop.run_in_executor(self._io, self._store.append, staged.records)
        except OutcomeUnknown as exc:
            msg = (
                f"outcome unknown: {exc}. Once the server is restarted, retry with the same request_id (answered "
                "as applied if the update reached the log), or check ListVersions (current_version) before "
                "retrying, or retry with expected_version"
            )
            self._stop_learning(str(exc), Unavailable(f"learning is stopped: {exc}"))
            refuse(UnknownOutcome(msg))
            return
        except Exception as exc:  # noqa: BLE001 - StorageError and anything else before the sync: not applied
            why = f"{type(exc).__name__}: {exc}"
            self._stop_learning(why, Unavailable(f"learning is stopped: {why}"))
            refuse(Unavailable(f"update not applied: {why}"))
            return
        staged.durable = True
        self._publish(staged.published)  # the swap: inference sees the whole group at once
        # durable and published: what follows must never turn it into "not applied"
        try:
            await loop.run_in_executor(self._io, self._store.after_append, staged.published)
        except Exception as exc:  # noqa: BLE001 - the updates are durable; later appends fail safely
            why = f"{type(exc).__name__}: {exc}"
            self._stop_learning(why, Unavailable(f"learning is stopped: {why}"))

    def _fail(self, jobs: list[Pending], exc: Exception) -> None:
        for j in jobs:
            if not j.future.done():
                j.future.set_exception(exc)

    def _settle(self, group: list[Pending], outcome: Staged) -> None:
        """Answer each update of a group, then have it counted (the group is durable or refused)."""
        for job, res in zip(group, outcome.results):
            if job.future.done():
                continue
            if isinstance(res, RequestError):
                job.future.set_exception(res)
            else:
                job.future.set_result(res)
        self._settled([job.update for job in group], outcome.results, outcome.sync_s)

    async def _run_control(self, c: _Control, loop: asyncio.AbstractEventLoop) -> None:
        try:
            if self._failed is not None:
                raise Unavailable(f"learning is stopped: {self._failed}")
            if c.kind == "snapshot":
                export = bool(c.arg)
                result: Any = await loop.run_in_executor(self._io, self._store.snapshot, self._current(), export)
            elif c.kind == "rollback":
                pub, restored = await loop.run_in_executor(self._io, self._store.rollback, self._current(), c.arg)
                self._rolled_back(pub, restored)  # nothing may turn the durable rollback into an error
                result = (pub.version, restored)
            elif c.kind == "barrier":  # everything before it is answered (the loop drained it)
                result = None
            else:
                raise ValueError(f"unknown control {c.kind}")
        except (StorageError, OutcomeUnknown) as exc:
            why = f"{type(exc).__name__}: {exc}"
            self._stop_learning(why, Unavailable(f"learning is stopped: {why}"))
            kind = UnknownOutcome if isinstance(exc, OutcomeUnknown) else Unavailable
            self._answer_control(c, kind(f"{c.kind} failed: {exc}"))
            return
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            self._answer_control(c, exc)
            return
        if c.future is not None and not c.future.done():
            c.future.set_result(result)

    def _answer_control(self, c: _Control, exc: Exception) -> None:
        if c.future is not None and not c.future.done():
            c.future.set_exception(exc)
        elif c.future is None:
            log.error("background snapshot failed", extra={"model": self._tag, "error": repr(exc)})
