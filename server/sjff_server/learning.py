"""On-line learning of one model version: ordered, durable, copy-on-write.

- Updates are queued and applied by one writer, in arrival order, one at a time, on a private
  copy of the published weights. Concurrent updates form a group that shares one fsync of
  the update log (group commit); the group's new weights are published (one reference swap)
  only after the sync, and then each update is acknowledged with its own version.
- Inference reads :attr:`Learner.published`, an immutable :class:`Published`: it sees
  either all of a group's updates or none of them, never a half-updated weight array.
- An update that raises or leaves any weight or eligibility value non-finite is refused;
  the working copy is rebuilt from the published weights plus the group's accepted updates
  (replay is deterministic), so the model is unchanged by it and nothing is logged.
- Two stages overlap: while one group's records are being written and fsync'ed (the I/O
  thread), the next group is computed (the compute thread) on top of the first group's
  weights; groups are still made durable, published and acknowledged strictly in order.
- A storage error stops learning (inference goes on): if the log could be cut back, the
  group is answered "not applied" (UNAVAILABLE); if not, "outcome unknown" (UNKNOWN), and
  the client checks ListVersions or retries with ``expected_version``. Any unexpected
  error of the writer also stops learning and fails every waiting call at once.
- Every ``digest_every`` versions a digest of the weights is logged with the group, so
  replay on restart is checked bit for bit (state.py). Snapshots are taken every
  ``snapshot_every`` updates, every ``snapshot_interval_s`` seconds (if anything changed),
  on demand and at shutdown; the log starts a new segment at each snapshot and whenever a
  segment passes ``segment_bytes``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from .durability import OutcomeUnknown, StorageError
from .engine import Engine, Published
from .errors import RequestError
from .records import DIGEST, ROLLBACK, UPDATE, UpdateRecord
from .snapshots import SnapshotInfo, state_digest
from .state import HISTORY, ModelState, NotRestorable, ReplayMismatch, StateMismatch

__all__ = ["LearnJob", "LearnOptions", "Learner", "ReplayMismatch", "StateMismatch"]

log = logging.getLogger("sjff_server.learning")


@dataclass(frozen=True)
class LearnOptions:
    """Learning settings of one model (see ``sjff serve --help``)."""

    max_group: int = 64
    snapshot_every: int = 1000
    snapshot_interval_s: float = 60.0
    keep_snapshots: int = 10
    max_queue: int = 4096
    reset_changed: bool = False
    segment_bytes: int = 64 << 20
    digest_every: int = 100

    def __post_init__(self) -> None:
        for name, low in (("max_group", 1), ("max_queue", 1), ("keep_snapshots", 1), ("segment_bytes", 1 << 16)):
            if getattr(self, name) < low:
                raise ValueError(f"LearnOptions.{name} must be at least {low}, got {getattr(self, name)}")
        for name in ("snapshot_every", "digest_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"LearnOptions.{name} must be >= 0 (0: never), got {getattr(self, name)}")
        if not (math.isfinite(self.snapshot_interval_s) and self.snapshot_interval_s >= 0):
            got = self.snapshot_interval_s
            raise ValueError(f"LearnOptions.snapshot_interval_s must be finite and >= 0, got {got}")


@dataclass(slots=True)
class LearnJob:
    """One requested update: images ``[n, d]`` float32 in [0, 1], labels ``[n]`` int64,
    positive ``[n]`` float32 0/1; ``deadline`` is a ``time.monotonic()`` instant or None."""

    images: np.ndarray
    labels: np.ndarray
    positive: np.ndarray
    seed: int | None = None
    eta: float | None = None
    expected_version: int | None = None
    deadline: float | None = None
    future: asyncio.Future | None = None


@dataclass(slots=True)
class _Control:
    kind: str  # "snapshot" | "rollback" | "stop"
    arg: Any = None
    future: asyncio.Future | None = None


@dataclass
class _Stats:
    accepted: int = 0
    refused: int = 0
    samples: int = 0
    groups: int = 0
    grouped_updates: int = 0
    last_update: float = 0.0
    outcomes: deque = field(default_factory=lambda: deque(maxlen=1000))


@dataclass(slots=True)
class _Staged:
    """A computed group: its new weights (not yet durable), the log records of its accepted
    updates (and digest), and per job (version, log-odds) or the RequestError that refused it."""

    published: Published | None
    records: list[UpdateRecord]
    results: list
    snapshot: SnapshotInfo | None = None
    sync_s: float = 0.0
    durable: bool = False  # its records are synced: from then on it is applied, whatever follows


def _unavailable(why: str) -> RequestError:
    return RequestError(grpc.StatusCode.UNAVAILABLE, why)


def _internal(exc: BaseException) -> RequestError:
    return RequestError(grpc.StatusCode.INTERNAL, f"learning stopped by an internal error ({type(exc).__name__})")


class Learner:
    """Learning state of one model version (``name``/``version`` in the repository)."""

    def __init__(
        self,
        name: str,
        version: str,
        engine: Engine,
        model: Any,
        artefact: Path,
        state_dir: Path,
        options: LearnOptions,
        metrics: Any = None,
    ) -> None:
        self.name = name
        self.repo_version = version
        self.engine = engine
        self.default_eta = float(model.eta if hasattr(model, "eta") else model.learn_spec.eta)
        self.options = options
        self.metrics = metrics
        self.state = ModelState(name, version, model, artefact, state_dir, engine.kind)
        self.published: Published = engine.publish(0, model)
        self.history: deque[tuple[int, str, float, int, int]] = deque(maxlen=HISTORY)
        self.stats = _Stats()
        self._last_snapshot = -1
        self._queue: deque[LearnJob | _Control] = deque()
        self._wake: asyncio.Event | None = None
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"learn-{name}-{version}")
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"log-{name}-{version}")
        self._head: Published | None = None  # newest computed weights (durable or about to be)
        self._inflight: deque[asyncio.Future] = deque()  # durability stages, oldest first
        self._writer: asyncio.Task | None = None
        self._timer: asyncio.Task | None = None
        self._closing = False
        self._digest: tuple[int, str] | None = None
        self.failed: str | None = None
        self.on_failed: Callable[[Learner], None] | None = None

    # -- files (see state.py) ---------------------------------------------------------------

    @property
    def log(self):
        return self.state.log

    @property
    def snapshots(self):
        return self.state.snapshots

    def recover(self) -> list[str]:
        """Load the newest snapshot and replay the log after it (synchronous, at startup).
        Returns notes for the log; torn-tail cuts and skipped snapshots are logged as warnings."""
        rec = self.state.recover(self.options.reset_changed)
        for w in rec.warnings:
            log.warning(w, extra={"model": self.name, "version": self.repo_version})
        self.published = self.engine.publish(rec.version, rec.model)
        self.history = rec.history
        self._last_snapshot = rec.last_snapshot
        return rec.notes

    def oldest_restorable(self) -> int:
        return self.state.oldest_restorable(self.published.version)

    def weights_digest(self) -> tuple[int, str]:
        """``(version, sha256)`` of the published weights and eligibility traces."""
        pub = self.published
        if self._digest is None or self._digest[0] != pub.version:
            self._digest = (pub.version, state_digest(pub.model.weights, pub.model.eligibility))
        return self._digest

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name=f"learner-{self.name}")
        self._writer.add_done_callback(self._writer_done)
        if self.options.snapshot_interval_s > 0:
            self._timer = asyncio.create_task(self._snapshot_timer(), name=f"snapshots-{self.name}")
        if self.metrics is not None:
            self.metrics.version(self.name, self.repo_version, self.published.version)

    async def close(self, final_snapshot: bool = True) -> None:
        """Finish queued work, write a final snapshot, close the log."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        if self._writer is not None and not self._writer.done():
            done = asyncio.get_running_loop().create_future()
            self._queue.append(_Control("stop", final_snapshot, done))
            self._wake.set()
            await asyncio.wait([done, self._writer], return_when=asyncio.FIRST_COMPLETED)
            await asyncio.wait([self._writer])
        self._compute.shutdown(wait=True)
        self._io.shutdown(wait=True)
        self.state.release()

    async def _snapshot_timer(self) -> None:
        while True:
            await asyncio.sleep(self.options.snapshot_interval_s)
            if self.published.version > self._last_snapshot and not self._closing and self.failed is None:
                self._queue.append(_Control("snapshot", False, None))
                self._wake.set()

    def _stop_learning(self, why: str, exc: BaseException) -> None:
        """Learning is over for this model: fail everything that waits, tell health/metrics."""
        if self.failed is None:
            self.failed = why
            log.error("learning stopped", extra={"model": self.name, "version": self.repo_version, "error": why})
            if self.metrics is not None:
                self.metrics.learning_stopped(self.name, self.repo_version)
            if self.on_failed is not None:
                self.on_failed(self)
        self._head = None
        self._fail_queue(exc)

    def _writer_done(self, task: asyncio.Task) -> None:
        """Supervision: a writer that dies (error or cancellation) must not leave calls waiting.
        Groups already handed to the I/O thread finish on their own and are answered truly."""
        exc = asyncio.CancelledError() if task.cancelled() else task.exception()
        if exc is None:
            return
        log.error("learning writer failed", exc_info=exc, extra={"model": self.name})
        err = _internal(exc)
        self._stop_learning(f"internal error: {type(exc).__name__}: {exc}", err)
        for j in list(self._queue):  # nothing is left to run a queued stop: answer it too
            if j.future is not None and not j.future.done():
                if isinstance(j, _Control) and j.kind == "stop":
                    j.future.set_result(None)
                else:
                    j.future.set_exception(err)
        self._queue.clear()

    # -- requests ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise _unavailable("the server is shutting down")
        if self.failed is not None:
            raise _unavailable(f"learning is stopped for {self.name}: {self.failed}")
        if self._wake is None:
            raise _unavailable(f"learning of {self.name} has not started yet; retry")

    async def learn(self, job: LearnJob) -> tuple[int, np.ndarray]:
        """Queue one update; returns ``(new version, log-odds before [n])`` once it is durable."""
        self._check_open()
        if len(self._queue) >= self.options.max_queue:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"learning queue of {self.name} is full ({self.options.max_queue})"
            )
        job.future = asyncio.get_running_loop().create_future()
        self._queue.append(job)
        self._wake.set()
        return await job.future

    async def _control(self, kind: str, arg: Any = None) -> Any:
        self._check_open()
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(_Control(kind, arg, fut))
        self._wake.set()
        return await asyncio.shield(fut)

    async def snapshot(self, export: bool = False) -> tuple[SnapshotInfo, Path | None]:
        """Write a snapshot of the current version now (and a full model file if ``export``)."""
        return await self._control("snapshot", export)

    async def rollback(self, version: int) -> tuple[int, int]:
        """Make a new version holding the weights of ``version``; returns ``(new, restored)``."""
        return await self._control("rollback", int(version))

    # -- the writer -------------------------------------------------------------------------

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
            if self.failed is not None:
                self._fail(group, _unavailable(f"learning is stopped: {self.failed}"))
                continue
            if len(inflight) >= 2:  # at most one group syncing while the next one is computed
                await asyncio.wait([inflight[0]])
            base = self._head or self.published
            try:
                staged = await loop.run_in_executor(self._compute, self._compute_group, base, group)
            except Exception as exc:  # noqa: BLE001 - a bug, not a bad request: fail this group only
                log.exception("learning group failed", extra={"model": self.name})
                self._fail(group, RequestError(grpc.StatusCode.INTERNAL, f"update not applied: {type(exc).__name__}"))
                continue
            if staged.published is not None:
                self._head = staged.published
            prev = inflight[-1] if inflight else None
            inflight.append(asyncio.ensure_future(self._make_durable(staged, group, prev)))

    def _take_group(self) -> list[LearnJob]:
        group: list[LearnJob] = []
        now = time.monotonic()
        while self._queue and isinstance(self._queue[0], LearnJob) and len(group) < self.options.max_group:
            job = self._queue.popleft()
            if job.future.done():  # the caller went away before it started: not applied
                continue
            if job.deadline is not None and now > job.deadline:
                msg = "deadline exceeded before the update was applied"
                job.future.set_exception(RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, msg))
                continue
            group.append(job)
        return group

    async def _stop(self, head: _Control, loop: asyncio.AbstractEventLoop) -> None:
        self._fail_queue(_unavailable("the server is shutting down"))
        try:
            if head.arg and self.failed is None and self.published.version > max(self._last_snapshot, 0):
                await loop.run_in_executor(self._io, self._do_snapshot, self.published, False)
        except Exception as exc:  # noqa: BLE001 - reported, shutdown goes on
            log.error("final snapshot failed", extra={"model": self.name, "error": repr(exc)})
        finally:
            await loop.run_in_executor(self._io, self.state.log.close)
            head.future.set_result(None)

    async def _drain(self) -> None:
        """Wait until every computed group is durable (or failed)."""
        if self._inflight:
            await asyncio.wait(list(self._inflight))
            self._inflight.clear()
        self._head = None

    async def _make_durable(self, staged: _Staged, group: list[LearnJob], prev: asyncio.Future | None) -> None:
        """Write + sync the group's records (after the previous group's), then publish and answer."""
        try:
            if prev is not None:
                await asyncio.wait([prev])
            if staged.records:
                await self._persist_group(staged)
            self._settle(group, staged)
        except BaseException as exc:  # supervision: nobody may be left waiting, nobody told a lie
            err = _internal(exc)
            durable = staged.durable
            for job, res in zip(group, staged.results):
                if job.future.done():
                    continue
                if durable and not isinstance(res, RequestError):
                    job.future.set_result(res)  # logged, synced and published: it is applied
                else:
                    job.future.set_exception(res if isinstance(res, RequestError) else err)
            log.error("learning group failed after its computation", exc_info=exc, extra={"model": self.name})
            self._stop_learning(f"internal error: {type(exc).__name__}: {exc}", err)
            raise

    async def _persist_group(self, staged: _Staged) -> None:
        def refuse(err: RequestError) -> None:
            staged.results = [r if isinstance(r, RequestError) else err for r in staged.results]
            staged.published = None

        if self.failed is not None:  # an earlier group's sync failed: this one built on it
            refuse(_unavailable(f"update not applied: {self.failed}"))
            return
        loop = asyncio.get_running_loop()
        try:
            staged.sync_s = await loop.run_in_executor(self._io, self._append, staged)
        except OutcomeUnknown as exc:
            msg = (
                f"outcome unknown: {exc}. Check ListVersions (current_version) before retrying, or retry "
                "with expected_version"
            )
            self._stop_learning(str(exc), _unavailable(f"learning is stopped: {exc}"))
            refuse(RequestError(grpc.StatusCode.UNKNOWN, msg))
            return
        except Exception as exc:  # noqa: BLE001 - StorageError and anything else before the sync: not applied
            why = f"{type(exc).__name__}: {exc}"
            self._stop_learning(why, _unavailable(f"learning is stopped: {why}"))
            refuse(_unavailable(f"update not applied: {why}"))
            return
        staged.durable = True
        self.published = staged.published  # the swap: inference sees the whole group at once
        # durable and published: what follows must never turn it into "not applied"
        try:
            staged.snapshot = await loop.run_in_executor(self._io, self._after_append, staged.published)
        except Exception as exc:  # noqa: BLE001 - the updates are durable; later appends fail safely
            why = f"{type(exc).__name__}: {exc}"
            self._stop_learning(why, _unavailable(f"learning is stopped: {why}"))

    def _fail(self, jobs: list, exc: Exception) -> None:
        for j in jobs:
            if j.future is not None and not j.future.done():
                j.future.set_exception(exc)

    def _fail_queue(self, exc: Exception) -> None:
        """Fail every queued call; a queued "stop" stays, so that close() still finishes."""
        keep = [j for j in self._queue if isinstance(j, _Control) and j.kind == "stop"]
        while self._queue:
            j = self._queue.popleft()
            if j.future is not None and not j.future.done() and j not in keep:
                j.future.set_exception(exc)
        self._queue.extend(keep)

    def _settle(self, group: list[LearnJob], outcome: _Staged) -> None:
        st = self.stats
        accepted = 0
        now = time.time()
        for job, res in zip(group, outcome.results):
            if isinstance(res, RequestError):
                st.refused += 1
                if self.metrics is not None:
                    self.metrics.learn_refused(self.name, self.repo_version, res.code.name)
                if not job.future.done():
                    job.future.set_exception(res)
                continue
            version, log_odds = res
            accepted += 1
            st.samples += len(job.labels)
            st.outcomes.extend(((log_odds > 0) == (job.positive > 0.5)).tolist())
            self.history.append((version, "update", now, len(job.labels), 0))
            if not job.future.done():
                job.future.set_result(res)
        if accepted:
            st.accepted += accepted
            st.groups += 1
            st.grouped_updates += accepted
            st.last_update = now
        if outcome.snapshot is not None:
            self._last_snapshot = outcome.snapshot.version
        if self.metrics is not None and accepted:
            self.metrics.learn_group(self.name, self.repo_version, accepted, outcome.sync_s, self.published.version)

    async def _run_control(self, c: _Control, loop: asyncio.AbstractEventLoop) -> None:
        try:
            if self.failed is not None:
                raise _unavailable(f"learning is stopped: {self.failed}")
            if c.kind == "snapshot":
                info, exported = await loop.run_in_executor(self._io, self._do_snapshot, self.published, bool(c.arg))
                result: Any = (info, exported)
            elif c.kind == "rollback":
                pub, restored = await loop.run_in_executor(self._io, self._do_rollback, self.published, c.arg)
                self.published = pub  # nothing below may turn the durable rollback into an error
                self.history.append((pub.version, "rollback", time.time(), 0, restored))
                result = (pub.version, restored)
                try:
                    if self.metrics is not None:
                        self.metrics.version(self.name, self.repo_version, pub.version)
                except Exception:  # noqa: BLE001
                    log.exception("metrics after rollback failed", extra={"model": self.name})
            else:
                raise ValueError(f"unknown control {c.kind}")
        except (StorageError, OutcomeUnknown) as exc:
            why = f"{type(exc).__name__}: {exc}"
            self._stop_learning(why, _unavailable(f"learning is stopped: {why}"))
            code = grpc.StatusCode.UNKNOWN if isinstance(exc, OutcomeUnknown) else grpc.StatusCode.UNAVAILABLE
            self._answer_control(c, RequestError(code, f"{c.kind} failed: {exc}"))
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
            log.error("background snapshot failed", extra={"model": self.name, "error": repr(exc)})

    # -- work on the compute thread ---------------------------------------------------------

    @staticmethod
    def _finite(model: Any) -> bool:
        return all(np.isfinite(a).all() for a in (*model.weights, *model.eligibility))

    def _compute_group(self, base: Published, group: list[LearnJob]) -> _Staged:
        """Apply a group on a copy of ``base``; nothing is written here."""
        work = base.model.copy()
        version = base.version
        records: list[UpdateRecord] = []
        results: list = []
        now = time.time()
        for job in group:
            if job.expected_version is not None and job.expected_version != version:
                msg = f"expected version {job.expected_version}, the model is at {version}"
                results.append(RequestError(grpc.StatusCode.ABORTED, msg))
                continue
            seed = int(job.seed) if job.seed is not None else version + 1
            eta = float(job.eta) if job.eta is not None else self.default_eta
            error = None
            try:
                with np.errstate(all="ignore"):  # overflow is caught below, as non-finite weights
                    log_odds = np.asarray(
                        work.learn(job.images, job.labels, job.positive, seed=seed, eta=eta), dtype=np.float32
                    )
                if not self._finite(work):
                    error = RequestError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"update refused: it would make the weights non-finite (eta={eta:g}); "
                        f"the model stays at version {version}",
                    )
            except ValueError as exc:
                error = RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except FloatingPointError as exc:
                error = RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"update refused: {exc}")
            if error is not None:
                results.append(error)
                work = self._rebuild(base, records)
                continue
            version += 1
            records.append(UpdateRecord(UPDATE, version, now, seed, eta, job.images, job.labels, job.positive))
            results.append((version, log_odds))
        if not records:
            return _Staged(None, records, results)
        every = self.options.digest_every
        if every and version // every > base.version // every:
            digest = state_digest(work.weights, work.eligibility)
            records.append(UpdateRecord(DIGEST, version, now, digest=digest))
        return _Staged(self.engine.publish(version, work), records, results)

    @staticmethod
    def _rebuild(base: Published, records: list[UpdateRecord]) -> Any:
        """The published weights plus ``records`` (deterministic replay)."""
        work = base.model.copy()
        with np.errstate(all="ignore"):
            for r in records:
                work.learn(r.images, r.labels, r.positive, seed=r.seed, eta=r.eta)
        return work

    # -- work on the I/O thread -------------------------------------------------------------

    def _append(self, staged: _Staged) -> float:
        """Append + fdatasync the records; returns the seconds it took."""
        t0 = time.perf_counter()
        self.state.log.append(staged.records)  # durable before anything is acknowledged
        return time.perf_counter() - t0

    def _after_append(self, pub: Published) -> SnapshotInfo | None:
        """A snapshot if one is due, else a new segment if this one is full."""
        every = self.options.snapshot_every
        if every > 0 and pub.version - max(self._last_snapshot, 0) >= every:
            try:
                return self._do_snapshot(pub, False)[0]
            except OSError as exc:  # the updates are durable in the log; retry at the next one
                log.error("snapshot failed", extra={"model": self.name, "error": repr(exc)})
        if self.state.log.segment_bytes >= self.options.segment_bytes:
            self.state.log.rotate(pub.version)
        return None

    def _do_snapshot(self, pub: Published, export: bool) -> tuple[SnapshotInfo, Path | None]:
        info, exported = self.state.write_snapshot(pub.version, pub.model, self.options.keep_snapshots, export)
        self._last_snapshot = info.version
        if self.metrics is not None:
            self.metrics.snapshot(self.name, self.repo_version, info.version)
        return info, exported

    def _do_rollback(self, base: Published, target: int) -> tuple[Published, int]:
        if target > base.version:
            raise RequestError(
                grpc.StatusCode.OUT_OF_RANGE, f"version {target} does not exist yet (current: {base.version})"
            )
        oldest = self.oldest_restorable()
        if target < oldest:
            raise RequestError(
                grpc.StatusCode.OUT_OF_RANGE, f"version {target} is no longer restorable (oldest: {oldest})"
            )
        try:
            model = self.state.state_at(target)
        except NotRestorable as exc:
            raise RequestError(grpc.StatusCode.OUT_OF_RANGE, str(exc)) from None
        new = base.version + 1
        pub = self.engine.publish(new, model)  # everything that can fail happens before the append
        self.state.log.append([UpdateRecord(ROLLBACK, new, time.time(), restored=target)])
        try:  # durable from here on: a failed snapshot only makes the next restart replay more
            self._do_snapshot(pub, False)
        except Exception as exc:  # noqa: BLE001 - the rollback stands; it must be answered as applied
            log.error("snapshot after rollback failed", extra={"model": self.name, "error": repr(exc)})
        return pub, target

    # -- reporting --------------------------------------------------------------------------

    @property
    def last_snapshot(self) -> int:
        """Version of the newest snapshot (0 if none)."""
        return max(self._last_snapshot, 0)

    def online_accuracy(self) -> tuple[float, int]:
        n = len(self.stats.outcomes)
        return (sum(self.stats.outcomes) / n if n else math.nan), n

    def mean_group_size(self) -> float:
        st = self.stats
        return st.grouped_updates / st.groups if st.groups else 0.0
