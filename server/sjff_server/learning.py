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
  weights; groups are still made durable, published and acknowledged strictly in order, and
  if a sync fails every later group is failed too (and learning stops).
- Snapshots are taken every ``snapshot_every`` updates, every ``snapshot_interval_s``
  seconds (if anything changed), on demand and at shutdown. Restart loads the newest
  snapshot and replays the log after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from .durability import ROLLBACK, UPDATE, LogCorruption, SnapshotInfo, SnapshotStore, UpdateLog, UpdateRecord
from .engine import Engine, Published
from .errors import RequestError

__all__ = ["LearnJob", "LearnOptions", "Learner", "StateMismatch", "file_sha256"]

log = logging.getLogger("sjff_server.learning")


class StateMismatch(Exception):
    """The state directory belongs to a different artefact than the one in the repository."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class LearnOptions:
    """Learning settings of one model (see ``sjff serve --help``)."""

    max_group: int = 64
    snapshot_every: int = 1000
    snapshot_interval_s: float = 60.0
    keep_snapshots: int = 10
    max_queue: int = 4096
    reset_changed: bool = False


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
    updates, and per job (version, log-odds) or the RequestError that refused it."""

    published: Published | None
    records: list[UpdateRecord]
    results: list
    snapshot: SnapshotInfo | None = None
    sync_s: float = 0.0


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
        self._base = model  # pristine artefact weights (never mutated)
        self.default_eta = float(model.eta if hasattr(model, "eta") else model.learn_spec.eta)
        self.artefact = Path(artefact)
        self.dir = Path(state_dir)
        self.options = options
        self.metrics = metrics
        self.published: Published = engine.publish(0, model)
        self.log = UpdateLog(self.dir / "log")
        self.snapshots = SnapshotStore(self.dir / "snapshots")
        self.sha256 = ""
        self.history: deque[tuple[int, str, float, int, int]] = deque(maxlen=10000)
        self.stats = _Stats()
        self._last_snapshot = -1
        self._last_snapshot_time = time.monotonic()
        self._queue: deque[LearnJob | _Control] = deque()
        self._wake: asyncio.Event | None = None
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"learn-{name}-{version}")
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"log-{name}-{version}")
        self._head: Published | None = None  # newest computed weights (durable or about to be)
        self._writer: asyncio.Task | None = None
        self._timer: asyncio.Task | None = None
        self._closing = False
        self.failed: str | None = None

    # -- recovery (synchronous, at startup) -------------------------------------------------

    def recover(self) -> list[str]:
        """Load the newest snapshot and replay the log after it. Returns notes for the log."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sha256 = file_sha256(self.artefact)
        marker = self.dir / "artefact.json"
        notes: list[str] = []
        if marker.exists():
            old = json.loads(marker.read_text()).get("sha256")
            if old != self.sha256:
                if not self.options.reset_changed:
                    raise StateMismatch(
                        f"{self.dir} holds learning state of another artefact (sha256 {str(old)[:12]}..., "
                        "the repository "
                        f"has {self.sha256[:12]}...); put a changed model in a new version directory, or start with "
                        "--reset-changed-models to archive the old state"
                    )
                archive = self.dir.with_name(f"{self.dir.name}.archived-{time.strftime('%Y%m%dT%H%M%S')}")
                self.dir.rename(archive)
                notes.append(f"artefact changed: old learning state archived to {archive}")
                self.dir.mkdir(parents=True)
                self.log = UpdateLog(self.dir / "log")
                self.snapshots = SnapshotStore(self.dir / "snapshots")
        if not marker.exists():
            tmp = marker.with_name(marker.name + ".part")
            tmp.write_text(
                json.dumps(
                    {
                        "sha256": self.sha256,
                        "artefact": str(self.artefact),
                        "model": self.name,
                        "version": self.repo_version,
                    }
                )
            )
            tmp.replace(marker)
        notes += self.log.repair()
        snaps = self.snapshots.list()
        latest = max([s.version for s in snaps] + [self.log.last_version() or 0])
        model = self._state_at(latest)
        self.log.open(latest)
        if snaps and snaps[-1].version == latest:
            self.log.rotate(latest)
        self._last_snapshot = max((s.version for s in snaps if s.version <= latest), default=-1)
        self.published = self.engine.publish(latest, model)
        for r in self.log.records(max(0, latest - self.history.maxlen), latest):
            self.history.append(
                (r.version, "update" if r.kind == UPDATE else "rollback", r.created, r.samples, r.restored)
            )
        if latest:
            notes.append(f"resumed at version {latest}")
        return notes

    def _load_snapshot(self, info: SnapshotInfo) -> Any:
        meta, weights, elig = SnapshotStore.read(info.path)
        if meta.get("artefact_sha256") != self.sha256:
            raise ValueError(f"{info.path}: snapshot of another artefact")
        if [w.shape for w in weights] != [w.shape for w in self._base.weights] or [e.shape for e in elig] != [
            w.shape for w in self._base.weights
        ]:
            raise ValueError(f"{info.path}: shapes do not match the model")
        if not all(np.isfinite(a).all() for a in (*weights, *elig)):
            raise ValueError(f"{info.path}: non-finite values")
        model = self._base.copy()
        model.weights = weights
        model.eligibility = elig
        return model

    def oldest_restorable(self) -> int:
        segs = self.log.segments()
        candidates = [s.version for s in self.snapshots.list()]
        if segs and segs[0][0] == 0:
            candidates.append(0)
        if not candidates:
            return self.published.version
        return min(candidates)

    def _state_at(self, v: int, depth: int = 0) -> Any:
        """The model (a private copy) as it was at version ``v``: newest usable snapshot <= v
        plus the logged changes after it."""
        if depth > 64:
            raise LogCorruption("rollback chain too deep")
        model, cur = None, 0
        for info in reversed([s for s in self.snapshots.list() if s.version <= v]):
            try:
                model, cur = self._load_snapshot(info), info.version
                break
            except ValueError as exc:
                log.warning("skipping snapshot", extra={"model": self.name, "error": str(exc)})
        if model is None:
            segs = self.log.segments()
            if v > 0 and not (segs and segs[0][0] == 0):
                raise RequestError(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"version {v} is no longer restorable (oldest: {self.oldest_restorable()})",
                )
            model, cur = self._base.copy(), 0
        for r in self.log.records(cur, v):
            if r.version != cur + 1:
                raise LogCorruption(f"{self.dir}: update log misses version {cur + 1} (next record is {r.version})")
            if r.kind == UPDATE:
                with np.errstate(all="ignore"):
                    model.learn(r.images, r.labels, r.positive, seed=r.seed, eta=r.eta)
            elif r.kind == ROLLBACK:
                model = self._state_at(r.restored, depth + 1)
            cur = r.version
        if cur != v:
            raise LogCorruption(f"{self.dir}: cannot rebuild version {v}: the log ends at version {cur}")
        return model

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name=f"learner-{self.name}")
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
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            self._queue.append(_Control("stop", final_snapshot, done))
            self._wake.set()
            await asyncio.shield(done)
            await self._writer
        self._compute.shutdown(wait=True)
        self._io.shutdown(wait=True)

    async def _snapshot_timer(self) -> None:
        while True:
            await asyncio.sleep(self.options.snapshot_interval_s)
            if self.published.version > self._last_snapshot and not self._closing and self.failed is None:
                self._queue.append(_Control("snapshot", False, None))
                self._wake.set()

    # -- requests ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        if self.failed is not None:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"learning is stopped for {self.name}: {self.failed}")

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
        inflight: deque[asyncio.Future] = deque()  # durability stages, oldest first
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
                await self._drain(inflight)
                if head.kind == "stop":
                    self._fail_queue(RequestError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down"))
                    try:
                        if head.arg and self.failed is None and self.published.version > max(self._last_snapshot, 0):
                            await loop.run_in_executor(self._io, self._do_snapshot, self.published, False)
                    except Exception as exc:  # noqa: BLE001 - reported, shutdown goes on
                        log.error("final snapshot failed", extra={"model": self.name, "error": repr(exc)})
                    finally:
                        await loop.run_in_executor(self._io, self.log.close)
                        head.future.set_result(None)
                    return
                await self._run_control(head, loop)
                continue
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
            if not group:
                continue
            if self.failed is not None:
                self._fail(group, RequestError(grpc.StatusCode.UNAVAILABLE, f"learning is stopped: {self.failed}"))
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

    async def _drain(self, inflight: deque) -> None:
        """Wait until every computed group is durable (or failed)."""
        if inflight:
            await asyncio.wait(list(inflight))
            inflight.clear()
        self._head = None

    async def _make_durable(self, staged: _Staged, group: list[LearnJob], prev: asyncio.Future | None) -> None:
        """Write + sync the group's records (after the previous group's), then publish and answer."""
        if prev is not None:
            await asyncio.wait([prev])
        if staged.records:
            if self.failed is not None:  # an earlier group's sync failed: this one built on it
                staged.results = [
                    r
                    if isinstance(r, RequestError)
                    else RequestError(grpc.StatusCode.UNAVAILABLE, f"update not applied: {self.failed}")
                    for r in staged.results
                ]
                staged.published = None
            else:
                try:
                    staged.sync_s, staged.snapshot = await asyncio.get_running_loop().run_in_executor(
                        self._io, self._persist, staged
                    )
                except Exception as exc:  # noqa: BLE001 - storage failure: stop learning, keep serving
                    self.failed = f"{type(exc).__name__}: {exc}"
                    log.error(
                        "learning stopped after a storage error", extra={"model": self.name, "error": self.failed}
                    )
                    self._head = None
                    self._fail_queue(RequestError(grpc.StatusCode.UNAVAILABLE, f"learning is stopped: {self.failed}"))
                    staged.results = [
                        r
                        if isinstance(r, RequestError)
                        else RequestError(grpc.StatusCode.UNAVAILABLE, f"update not applied: {self.failed}")
                        for r in staged.results
                    ]
                    staged.published = None
                else:
                    self.published = staged.published  # the swap: inference sees the whole group at once
        self._settle(group, staged)

    def _fail(self, jobs: list, exc: Exception) -> None:
        for j in jobs:
            if j.future is not None and not j.future.done():
                j.future.set_exception(exc)

    def _fail_queue(self, exc: Exception) -> None:
        while self._queue:
            j = self._queue.popleft()
            if j.future is not None and not j.future.done():
                j.future.set_exception(exc)

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
            self._last_snapshot_time = time.monotonic()
        if self.metrics is not None and accepted:
            self.metrics.learn_group(self.name, self.repo_version, accepted, outcome.sync_s, self.published.version)

    async def _run_control(self, c: _Control, loop: asyncio.AbstractEventLoop) -> None:
        try:
            if self.failed is not None:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, f"learning is stopped: {self.failed}")
            if c.kind == "snapshot":
                info, exported = await loop.run_in_executor(self._io, self._do_snapshot, self.published, bool(c.arg))
                self._last_snapshot = info.version
                self._last_snapshot_time = time.monotonic()
                result: Any = (info, exported)
            elif c.kind == "rollback":
                pub, restored = await loop.run_in_executor(self._io, self._do_rollback, self.published, c.arg)
                self.published = pub
                self._last_snapshot = pub.version
                self.history.append((pub.version, "rollback", time.time(), 0, restored))
                if self.metrics is not None:
                    self.metrics.version(self.name, self.repo_version, pub.version)
                result = (pub.version, restored)
            else:
                raise ValueError(f"unknown control {c.kind}")
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            if c.future is not None and not c.future.done():
                c.future.set_exception(exc)
            elif c.future is None:
                log.error("background snapshot failed", extra={"model": self.name, "error": repr(exc)})
            return
        if c.future is not None and not c.future.done():
            c.future.set_result(result)

    # -- work on the learner thread ---------------------------------------------------------

    @staticmethod
    def _finite(model: Any) -> bool:
        return all(np.isfinite(a).all() for a in (*model.weights, *model.eligibility))

    def _compute_group(self, base: Published, group: list[LearnJob]) -> _Staged:
        """Apply a group on a copy of ``base`` (compute thread); nothing is written here."""
        work = base.model.copy()
        version = base.version
        records: list[UpdateRecord] = []
        results: list = []
        now = time.time()
        for job in group:
            if job.expected_version is not None and job.expected_version != version:
                results.append(
                    RequestError(
                        grpc.StatusCode.ABORTED, f"expected version {job.expected_version}, the model is at {version}"
                    )
                )
                continue
            seed = int(job.seed) if job.seed is not None else version + 1
            eta = float(job.eta) if job.eta is not None else self.default_eta
            try:
                with np.errstate(all="ignore"):  # overflow is caught below, as non-finite weights
                    log_odds = np.asarray(
                        work.learn(job.images, job.labels, job.positive, seed=seed, eta=eta), dtype=np.float32
                    )
                ok = self._finite(work)
                error = (
                    None
                    if ok
                    else RequestError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"update refused: it would make the weights non-finite (eta={eta:g}); "
                        f"the model stays at version {version}",
                    )
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
        return _Staged(self.engine.publish(version, work), records, results)

    def _persist(self, staged: _Staged) -> tuple[float, SnapshotInfo | None]:
        """Append + fdatasync the records (I/O thread); snapshot if one is due."""
        t0 = time.perf_counter()
        self.log.append(staged.records)  # durable before anything is acknowledged
        sync_s = time.perf_counter() - t0
        snap = None
        every = self.options.snapshot_every
        pub = staged.published
        if every > 0 and pub is not None and pub.version - max(self._last_snapshot, 0) >= every:
            try:
                snap, _ = self._do_snapshot(pub, False)
            except OSError as exc:  # the updates are durable in the log; retry at the next one
                log.error("snapshot failed", extra={"model": self.name, "error": repr(exc)})
        return sync_s, snap

    @staticmethod
    def _rebuild(base: Published, records: list[UpdateRecord]) -> Any:
        """The published weights plus ``records`` (deterministic replay)."""
        work = base.model.copy()
        with np.errstate(all="ignore"):
            for r in records:
                work.learn(r.images, r.labels, r.positive, seed=r.seed, eta=r.eta)
        return work

    def _do_snapshot(self, pub: Published, export: bool) -> tuple[SnapshotInfo, Path | None]:
        meta = {
            "artefact_sha256": self.sha256,
            "model": self.name,
            "model_version": self.repo_version,
            "kind": self.engine.kind,
        }
        info = self.snapshots.write(pub.version, pub.model.weights, pub.model.eligibility, meta)
        self.log.rotate(pub.version)
        oldest = self.snapshots.prune(self.options.keep_snapshots)
        if oldest is not None:
            self.log.prune(oldest)
        exported = None
        if export:
            exported = self.dir / "exports" / f"v{pub.version:08d}" / self.artefact.name
            pub.model.save(exported)
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
        model = self._state_at(target)
        new = base.version + 1
        self.log.append([UpdateRecord(ROLLBACK, new, time.time(), restored=target)])
        pub = self.engine.publish(new, model)
        self._do_snapshot(pub, False)
        return pub, target

    # -- reporting ----------------------------------------------------------------------------

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
