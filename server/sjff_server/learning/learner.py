"""On-line learning of one model version: ordered, durable, copy-on-write.

:class:`Learner` ties the parts together and is what the services call:

- ``writer.py``: the queue; updates applied in arrival order by one writer, groups sharing
  one fsync (group commit), published only once durable;
- ``compute.py``: a group computed on a private copy (refused updates leave no trace);
- ``versions.py``: appends, snapshots, rollback and retention (the I/O thread);
- ``state.py``: recovery and the state at any restorable version; ``stats.py``: counters;
- ``requests.py``: the request ids of applied updates, so that a retried Learn (same
  ``request_id``) is answered with its first application instead of applied twice.

Inference reads :attr:`Learner.published`, an immutable :class:`Published`: it sees either
all of a group's updates or none of them, never a half-updated weight array. Every
``digest_every`` versions a digest of the weights is logged with the group, so replay on
restart is checked bit for bit. Snapshots are also taken every ``snapshot_interval_s``
seconds (if anything changed) and at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from spikingjelly_ff.runtime.protocol import RuntimeModel

from ..errors import RequestError, Unavailable, check_retry
from ..inference.engine import Engine, Published
from ..storage.records import Update
from ..storage.requests import RequestWindow
from ..storage.snapshots import SnapshotInfo, state_digest
from ..storage.state import HISTORY, ModelState
from .compute import Result, Staged, compute_group
from .options import LearnOptions
from .stats import LearnStats
from .versions import VersionStore
from .writer import GroupWriter, Pending

__all__ = ["Learner"]

log = logging.getLogger("sjff_server.learning")


class Learner:
    """Learning state of one model version (``name``/``version`` in the repository)."""

    def __init__(
        self,
        name: str,
        version: str,
        engine: Engine,
        model: RuntimeModel,
        artifact: Path,
        state_dir: Path,
        options: LearnOptions,
        metrics: Any = None,
    ) -> None:
        self.name = name
        self.repo_version = version
        self.engine = engine
        self.default_eta = float(model.eta)
        self.options = options
        self.metrics = metrics
        window = RequestWindow(options.request_window_s, options.request_window_bytes, name=name)
        self.state = ModelState(name, version, model, artifact, state_dir, engine.kind, window)
        self._pending: dict[str, Pending] = {}  # request id -> its queued or running update
        self.store = VersionStore(self.state, engine, options, self._snapshotted)
        self.published: Published = engine.publish(0, model)
        #: (version, "update" | "rollback", unix time, samples, restored version), newest last
        self.history: deque[tuple[int, str, float, int, int]] = deque(maxlen=HISTORY)
        self.stats = LearnStats()
        self.writer = GroupWriter(
            f"{name}-{version}",
            self._compute,
            self.store,
            current=lambda: self.published,
            publish=self._publish,
            settled=self._settled,
            rolled_back=self._rolled_back,
            on_failed=self._learning_stopped,
            max_queue=options.max_queue,
            max_group=options.max_group,
        )
        self._timer: asyncio.Task | None = None
        self._closing = False
        self._digest: tuple[int, str] | None = None
        #: told (with this learner) when learning stops for good
        self.on_failed: Callable[[Learner], None] | None = None

    @property
    def failed(self) -> str | None:
        """Why learning stopped (None: it goes on)."""
        return self.writer.failed

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
        self.store.last_snapshot = rec.last_snapshot
        return rec.notes

    def oldest_restorable(self) -> int:
        return self.store.oldest_restorable(self.published.version)

    def weights_digest(self) -> tuple[int, str]:
        """``(version, sha256)`` of the published weights and eligibility traces."""
        pub = self.published
        if self._digest is None or self._digest[0] != pub.version:
            self._digest = (pub.version, state_digest(pub.model.weights, pub.model.eligibility))
        return self._digest

    @property
    def last_snapshot(self) -> int:
        """Version of the newest snapshot (0 if none)."""
        return max(self.store.last_snapshot, 0)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.writer.start()
        if self.options.snapshot_interval_s > 0:
            self._timer = asyncio.create_task(self._snapshot_timer(), name=f"snapshots-{self.name}")
        if self.metrics is not None:
            self.metrics.version(self.name, self.repo_version, self.published.version)
            self._window_metrics()  # as recovery rebuilt it

    async def quiesce(self, timeout: float) -> None:
        """The start of a shutdown, while calls are still open: refuse new Learn, Rollback and
        Snapshot calls and answer the queued ones (``GroupWriter.quiesce``)."""
        self._closing = True
        await self.writer.quiesce(timeout)

    async def close(self, final_snapshot: bool = True) -> None:
        """Finish queued work, write a final snapshot, close the log."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        await self.writer.stop(final_snapshot)
        self.state.release()

    async def _snapshot_timer(self) -> None:
        while True:
            await asyncio.sleep(self.options.snapshot_interval_s)
            if self.published.version > self.store.last_snapshot and not self._closing and self.failed is None:
                self.writer.control("snapshot", False, wait=False)

    def _learning_stopped(self, why: str) -> None:
        """The writer stopped learning for good (once): tell the log, health and metrics."""
        log.error("learning stopped", extra={"model": self.name, "version": self.repo_version, "error": why})
        if self.metrics is not None:
            self.metrics.learning_stopped(self.name, self.repo_version)
        if self.on_failed is not None:
            self.on_failed(self)

    # -- requests ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise Unavailable("the server is shutting down")
        if self.failed is not None:
            raise Unavailable(f"learning is stopped for {self.name}: {self.failed}")
        if not self.writer.started:
            raise Unavailable(f"learning of {self.name} has not started yet; retry")

    async def learn(
        self, update: Update, deadline: float | None = None, request_id: str = ""
    ) -> tuple[int, np.ndarray]:
        """Queue one update; returns ``(new version, log-odds before [n])`` once it is durable.
        ``deadline``: a ``time.monotonic()`` instant after which it is not started. An update
        with a ``request_id`` already applied (within the window) or under way is not queued
        again: the call gets that application's answer; the same id with other samples is
        refused (:class:`InvalidInput`)."""
        self._check_open()
        if not request_id:
            return await self.writer.submit(update, deadline)
        job = self._pending.get(request_id)
        repeat = job is not None and not job.future.done()
        if repeat:  # under way: share its answer
            check_retry(request_id, update.samples_sha256(), job.update.samples_sha256(), "under way")
            # the job starts as long as one of its callers still waits for it
            job.deadline = None if job.deadline is None or deadline is None else max(job.deadline, deadline)
        else:  # a done job's answer is in the window already, if it was applied
            done = self.state.requests.get(request_id)
            if done is not None:
                check_retry(request_id, update.samples_sha256(), done.digest, f"applied as version {done.version}")
                self._repeated()
                return done.version, done.log_odds.copy()
            job = self.writer.enqueue(replace(update, request_id=request_id), deadline)
            self._pending[request_id] = job
            job.future.add_done_callback(lambda f: self._forget(request_id, job, f))
        job.waiters += 1
        try:
            result = await asyncio.shield(job.future)
            if repeat:
                self._repeated()
            return result
        except asyncio.CancelledError:
            job.waiters -= 1
            if job.waiters == 0 and not job.started:
                job.future.cancel()  # every caller went away before it started: not applied
                self._forget(request_id, job, job.future)
            raise

    def _window_metrics(self) -> None:
        window = self.state.requests
        self.metrics.request_window(self.name, self.repo_version, len(window), window.forgotten_early)

    def _repeated(self) -> None:
        if self.metrics is not None:
            self.metrics.learn_repeated(self.name, self.repo_version)

    def _forget(self, request_id: str, job: Pending, fut: asyncio.Future) -> None:
        """The job is answered: a retry from now on is answered by the window (if applied)."""
        if self._pending.get(request_id) is job:
            del self._pending[request_id]
        if not fut.cancelled():
            fut.exception()  # retrieved: its callers may all have gone away

    async def snapshot(self, export: bool = False) -> tuple[SnapshotInfo, Path | None]:
        """Write a snapshot of the current version now (and a full model file if ``export``)."""
        self._check_open()
        return await asyncio.shield(self.writer.control("snapshot", export))

    async def rollback(self, version: int) -> tuple[int, int]:
        """Make a new version holding the weights of ``version``; returns ``(new, restored)``."""
        self._check_open()
        return await asyncio.shield(self.writer.control("rollback", int(version)))

    # -- called by the writer ---------------------------------------------------------------

    def _compute(self, base: Published, updates: Sequence[Update]) -> Staged:
        """A group applied on a copy of ``base`` (compute thread)."""
        eta, every = self.default_eta, self.options.digest_every
        return compute_group(base, updates, default_eta=eta, digest_every=every, publish=self.engine.publish)

    def _publish(self, pub: Published) -> None:
        self.published = pub

    def _settled(self, updates: Sequence[Update], results: Sequence[Result], sync_s: float) -> None:
        """Count a group whose callers were answered: durable updates and refusals."""
        st, metrics = self.stats, self.metrics
        accepted = 0
        now = time.time()
        for update, res in zip(updates, results):
            if isinstance(res, RequestError):
                st.refused += 1
                if metrics is not None:
                    metrics.learn_refused(self.name, self.repo_version, res.reason)
                continue
            version, log_odds = res
            accepted += 1
            st.learned(log_odds, update.positive)
            self.history.append((version, "update", now, update.samples, 0))
        st.group(accepted, now)
        if metrics is not None and accepted:
            metrics.learn_group(self.name, self.repo_version, accepted, sync_s, self.published.version)
            self._window_metrics()

    def _rolled_back(self, pub: Published, restored: int) -> None:
        """A durable rollback to ``restored``: publish it (this must not fail)."""
        self.published = pub
        self.history.append((pub.version, "rollback", time.time(), 0, restored))
        try:
            if self.metrics is not None:
                self.metrics.version(self.name, self.repo_version, pub.version)
        except Exception:  # noqa: BLE001
            log.exception("metrics after rollback failed", extra={"model": self.name})

    def _snapshotted(self, version: int) -> None:
        if self.metrics is not None:
            self.metrics.snapshot(self.name, self.repo_version, version)
