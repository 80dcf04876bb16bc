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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .compute import Staged
from .durability import OutcomeUnknown, StorageError
from .engine import Published
from .errors import DeadlineExceeded, InternalError, RequestError, ResourceExhausted, Unavailable, UnknownOutcome
from .records import Update

if TYPE_CHECKING:
    from .learning import Learner

__all__ = ["GroupWriter", "Pending"]

log = logging.getLogger("sjff_server.learning")


@dataclass(slots=True)
class Pending:
    """A queued update and its caller: ``deadline`` is a ``time.monotonic()`` instant or None."""

    update: Update
    deadline: float | None
    future: asyncio.Future


@dataclass(slots=True)
class _Control:
    kind: str  # "snapshot" | "rollback" | "stop"
    arg: Any = None
    future: asyncio.Future | None = None


def internal(exc: BaseException) -> InternalError:
    return InternalError(f"learning stopped by an internal error ({type(exc).__name__})")


class GroupWriter:
    """The queue and writer task of one :class:`~sjff_server.learning.Learner`, which owns
    the published weights, the learning state and the stats this updates."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        self.queue: deque[Pending | _Control] = deque()
        self.wake: asyncio.Event | None = None  # set: the writer runs (None before start)
        tag = f"{learner.name}-{learner.repo_version}"
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"learn-{tag}")
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"log-{tag}")
        self.head: Published | None = None  # newest computed weights (durable or about to be)
        self._inflight: deque[asyncio.Future] = deque()  # durability stages, oldest first
        self._task: asyncio.Task | None = None

    # -- the learner's side -------------------------------------------------------------------

    def start(self) -> None:
        self.wake = asyncio.Event()
        self._task = asyncio.create_task(self._write_loop(), name=f"learner-{self.learner.name}")
        self._task.add_done_callback(self._task_done)

    def submit(self, update: Update, deadline: float | None) -> asyncio.Future:
        """Queue an update; its future gives ``(version, log-odds [n])`` once durable."""
        limit = self.learner.options.max_queue
        if len(self.queue) >= limit:
            raise ResourceExhausted(f"learning queue of {self.learner.name} is full ({limit})")
        job = Pending(update, deadline, asyncio.get_running_loop().create_future())
        self.queue.append(job)
        self.wake.set()
        return job.future

    def control(self, kind: str, arg: Any = None, wait: bool = True) -> asyncio.Future | None:
        """Queue a snapshot, rollback or stop (after every earlier update)."""
        fut = asyncio.get_running_loop().create_future() if wait else None
        self.queue.append(_Control(kind, arg, fut))
        self.wake.set()
        return fut

    async def stop(self, final_snapshot: bool) -> None:
        """Finish queued work, snapshot if asked, close the log, end the threads."""
        if self._task is not None and not self._task.done():
            done = self.control("stop", final_snapshot)
            await asyncio.wait([done, self._task], return_when=asyncio.FIRST_COMPLETED)
            await asyncio.wait([self._task])
        self._compute.shutdown(wait=True)
        self._io.shutdown(wait=True)

    def fail_queue(self, exc: Exception) -> None:
        """Fail every queued call; a queued "stop" stays, so that close() still finishes."""
        keep = [j for j in self.queue if isinstance(j, _Control) and j.kind == "stop"]
        while self.queue:
            j = self.queue.popleft()
            if j.future is not None and not j.future.done() and j not in keep:
                j.future.set_exception(exc)
        self.queue.extend(keep)

    def _task_done(self, task: asyncio.Task) -> None:
        """Supervision: a writer that dies (error or cancellation) must not leave calls waiting.
        Groups already handed to the I/O thread finish on their own and are answered truly."""
        exc = asyncio.CancelledError() if task.cancelled() else task.exception()
        if exc is None:
            return
        log.error("learning writer failed", exc_info=exc, extra={"model": self.learner.name})
        err = internal(exc)
        self.learner.stop_learning(f"internal error: {type(exc).__name__}: {exc}", err)
        for j in list(self.queue):  # nothing is left to run a queued stop: answer it too
            if j.future is not None and not j.future.done():
                if isinstance(j, _Control) and j.kind == "stop":
                    j.future.set_result(None)
                else:
                    j.future.set_exception(err)
        self.queue.clear()

    # -- the writer task ----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        learner = self.learner
        inflight = self._inflight
        while True:
            while inflight and inflight[0].done():
                inflight.popleft()
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
                continue
            head = self.queue[0]
            if isinstance(head, _Control):
                self.queue.popleft()
                await self._drain()
                if head.kind == "stop":
                    await self._stop(head, loop)
                    return
                await self._run_control(head, loop)
                continue
            group = self._take_group()
            if not group:
                continue
            if learner.failed is not None:
                self._fail(group, Unavailable(f"learning is stopped: {learner.failed}"))
                continue
            if len(inflight) >= 2:  # at most one group syncing while the next one is computed
                await asyncio.wait([inflight[0]])
            base = self.head or learner.published
            updates = [job.update for job in group]
            try:
                staged = await loop.run_in_executor(self._compute, learner.compute, base, updates)
            except Exception as exc:  # noqa: BLE001 - a bug, not a bad request: fail this group only
                log.exception("learning group failed", extra={"model": learner.name})
                self._fail(group, InternalError(f"update not applied: {type(exc).__name__}"))
                continue
            if staged.published is not None:
                self.head = staged.published
            prev = inflight[-1] if inflight else None
            inflight.append(asyncio.ensure_future(self._make_durable(staged, group, prev)))

    def _take_group(self) -> list[Pending]:
        group: list[Pending] = []
        now = time.monotonic()
        limit = self.learner.options.max_group
        while self.queue and isinstance(self.queue[0], Pending) and len(group) < limit:
            job = self.queue.popleft()
            if job.future.done():  # the caller went away before it started: not applied
                continue
            if job.deadline is not None and now > job.deadline:
                job.future.set_exception(DeadlineExceeded("deadline exceeded before the update was applied"))
                continue
            group.append(job)
        return group

    async def _stop(self, head: _Control, loop: asyncio.AbstractEventLoop) -> None:
        learner = self.learner
        self.fail_queue(Unavailable("the server is shutting down"))
        try:
            pub = learner.published
            if head.arg and learner.failed is None and pub.version > max(learner.store.last_snapshot, 0):
                await loop.run_in_executor(self._io, learner.store.snapshot, pub, False)
        except Exception as exc:  # noqa: BLE001 - reported, shutdown goes on
            log.error("final snapshot failed", extra={"model": learner.name, "error": repr(exc)})
        finally:
            await loop.run_in_executor(self._io, learner.state.log.close)
            head.future.set_result(None)

    async def _drain(self) -> None:
        """Wait until every computed group is durable (or failed)."""
        if self._inflight:
            await asyncio.wait(list(self._inflight))
            self._inflight.clear()
        self.head = None

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
            log.error("learning group failed after its computation", exc_info=exc, extra={"model": self.learner.name})
            self.learner.stop_learning(f"internal error: {type(exc).__name__}: {exc}", err)
            raise

    async def _persist_group(self, staged: Staged) -> None:
        learner = self.learner

        def refuse(err: RequestError) -> None:
            staged.results = [r if isinstance(r, RequestError) else err for r in staged.results]
            staged.published = None

        if learner.failed is not None:  # an earlier group's sync failed: this one built on it
            refuse(Unavailable(f"update not applied: {learner.failed}"))
            return
        loop = asyncio.get_running_loop()
        try:
            staged.sync_s = await loop.run_in_executor(self._io, learner.store.append, staged.records)
        except OutcomeUnknown as exc:
            msg = (
                f"outcome unknown: {exc}. Check ListVersions (current_version) before retrying, or retry "
                "with expected_version"
            )
            learner.stop_learning(str(exc), Unavailable(f"learning is stopped: {exc}"))
            refuse(UnknownOutcome(msg))
            return
        except Exception as exc:  # noqa: BLE001 - StorageError and anything else before the sync: not applied
            why = f"{type(exc).__name__}: {exc}"
            learner.stop_learning(why, Unavailable(f"learning is stopped: {why}"))
            refuse(Unavailable(f"update not applied: {why}"))
            return
        staged.durable = True
        learner.published = staged.published  # the swap: inference sees the whole group at once
        # durable and published: what follows must never turn it into "not applied"
        try:
            staged.snapshot = await loop.run_in_executor(self._io, learner.store.after_append, staged.published)
        except Exception as exc:  # noqa: BLE001 - the updates are durable; later appends fail safely
            why = f"{type(exc).__name__}: {exc}"
            learner.stop_learning(why, Unavailable(f"learning is stopped: {why}"))

    def _fail(self, jobs: list[Pending], exc: Exception) -> None:
        for j in jobs:
            if not j.future.done():
                j.future.set_exception(exc)

    def _settle(self, group: list[Pending], outcome: Staged) -> None:
        """Answer each update of a group and count it (the group is durable or refused)."""
        learner = self.learner
        st, metrics = learner.stats, learner.metrics
        accepted = 0
        now = time.time()
        for job, res in zip(group, outcome.results):
            if isinstance(res, RequestError):
                st.refused += 1
                if metrics is not None:
                    metrics.learn_refused(learner.name, learner.repo_version, res.reason)
                if not job.future.done():
                    job.future.set_exception(res)
                continue
            version, log_odds = res
            accepted += 1
            st.learned(log_odds, job.update.positive)
            learner.history.append((version, "update", now, job.update.samples, 0))
            if not job.future.done():
                job.future.set_result(res)
        st.group(accepted, now)
        if metrics is not None and accepted:
            metrics.learn_group(learner.name, learner.repo_version, accepted, outcome.sync_s, learner.published.version)

    async def _run_control(self, c: _Control, loop: asyncio.AbstractEventLoop) -> None:
        learner = self.learner
        try:
            if learner.failed is not None:
                raise Unavailable(f"learning is stopped: {learner.failed}")
            if c.kind == "snapshot":
                export = bool(c.arg)
                result: Any = await loop.run_in_executor(self._io, learner.store.snapshot, learner.published, export)
            elif c.kind == "rollback":
                pub, restored = await loop.run_in_executor(self._io, learner.store.rollback, learner.published, c.arg)
                learner.rolled_back(pub, restored)  # nothing may turn the durable rollback into an error
                result = (pub.version, restored)
            else:
                raise ValueError(f"unknown control {c.kind}")
        except (StorageError, OutcomeUnknown) as exc:
            why = f"{type(exc).__name__}: {exc}"
            learner.stop_learning(why, Unavailable(f"learning is stopped: {why}"))
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
            log.error("background snapshot failed", extra={"model": self.learner.name, "error": repr(exc)})
