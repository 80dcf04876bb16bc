"""Learning of one model version shared by N replicas through a Redis stream: the callers' side.

The stream is the one order of updates. A Learn is validated, appended (idempotent by request
id), applied by this replica's apply task like every other entry (follower.py, replay.py),
and answered with the result of that application, which is also stored in Redis so that a
retry on any replica gets the same answer. :class:`ReplicatedLearner` has the surface of
:class:`~.learner.Learner` that the services use. Redis down: learn raises
:class:`Unavailable` (nothing acknowledged that is not durable); inference goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    DeadlineExceeded,
    InternalError,
    PreconditionFailed,
    RequestError,
    Unavailable,
    UnknownOutcome,
    check_retry,
)
from ..storage.records import Update
from ..storage.snapshots import SnapshotInfo, state_digest
from ..storage.state import HISTORY
from .follower import REDIS_ERRORS, ArtifactMismatch, Follower
from .replay import decode_result, encode_result, id_le
from .stats import LearnStats

__all__ = ["ReplicatedLearner"]

log = logging.getLogger("sjff_server.replication")
_RECENT = 65536  # answers kept by entry id (an entry may be applied here before its XADD's reply arrives)


class _NoLocalLog:
    """``learner.log`` for GetStats: no learning state is kept on local disk."""

    def size_bytes(self) -> int:
        return 0


class _SharedSnapshots:
    """``learner.snapshots`` for ListVersions: the shared snapshots as last listed."""

    def __init__(self, follower: Follower) -> None:
        self._f = follower

    def list(self) -> list[SnapshotInfo]:
        f = self._f
        return [SnapshotInfo(r.version, Path(f"redis:{f.key}@{r.entry_id}"), 0.0, 0) for r in f.shared_snapshots]


_SHUTTING_DOWN = "the server is shutting down; retry with the same request_id"


class ReplicatedLearner(Follower):
    """Learning state of one model version (``name``/``version``), replicated over Redis."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.history: deque[tuple[int, str, float, int, int]] = deque(maxlen=HISTORY)
        self.stats = LearnStats()
        self.log = _NoLocalLog()
        self.snapshots = _SharedSnapshots(self)
        #: told (with this learner) when learning stops for good
        self.on_failed: Callable[[ReplicatedLearner], None] | None = None
        self._failed: str | None = None
        self._closing = False
        self._quiesced = False  # shutting down and the waiting calls answered: no new waits
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._rids: dict[str, str] = {}  # entry id -> request id, of the entries waited for
        self._recent: OrderedDict[str, Any] = OrderedDict()
        self._digest: tuple[int, str] | None = None

    # -- the surface of Learner -------------------------------------------------------------------

    @property
    def failed(self) -> str | None:
        return self._failed

    def recover(self) -> list[str]:
        """Nothing local: the state is loaded from Redis by the apply task (see :meth:`start`)."""
        return []

    def oldest_restorable(self) -> int:
        snaps = self.shared_snapshots
        return snaps[0].version if snaps else 0

    @property
    def last_snapshot(self) -> int:
        snaps = self.shared_snapshots
        return snaps[-1].version if snaps else 0

    def weights_digest(self) -> tuple[int, str]:
        pub = self.published
        if self._digest is None or self._digest[0] != pub.version:
            self._digest = (pub.version, state_digest(pub.model.weights, pub.model.eligibility))
        return self._digest

    async def start(self) -> None:
        """Start following the stream (bootstrap, catch-up): NOT_SERVING until caught up."""
        self._start_tasks(self._apply_done)

    async def quiesce(self, timeout: float) -> None:
        """The start of a shutdown, while calls are still open: refuse new calls, and give those
        whose entries are in the stream up to ``timeout`` seconds to be answered here; what is
        still waiting then is answered UNAVAILABLE now, while its call is open (its entry is
        applied, and a retry with its request_id is answered by that application)."""
        self._closing = True
        waiting = [f for futs in self._waiters.values() for f in futs if not f.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=max(0.0, timeout))
        self._quiesced = True
        self._fail_waiters(Unavailable(_SHUTTING_DOWN))

    async def close(self, final_snapshot: bool = True) -> None:
        """Stop following; calls still waiting are answered UNAVAILABLE (a retry with their
        request id is safe). No final snapshot: the shared ones and the stream hold the state."""
        self._closing = True
        await self._stop_tasks()
        self._fail_waiters(Unavailable(_SHUTTING_DOWN))
        try:
            await self.shared.leave(self.options.replica_id)  # no longer holds the trim floor
        except REDIS_ERRORS:
            pass

    def _check_open(self) -> None:
        if self._closing:
            raise Unavailable("the server is shutting down")
        if self._failed is not None:
            raise Unavailable(f"learning is stopped for {self.name}: {self._failed}")
        if self.diverged is not None:
            raise Unavailable(f"{self.key} is recovering from a divergence on this replica: use another one")
        if not self._bootstrapped:
            raise Unavailable(f"{self.key} is still loading its state from the replication stream; retry")

    async def learn(self, update: Update, deadline: float | None = None, request_id: str = "") -> tuple[int, Any]:
        """Append ``update`` and answer ``(version, log-odds before [n])`` once it is applied
        here. A ``request_id`` appended before (within the window) is not appended again: the
        answer is that of its first application; the same id with other samples is refused
        (:class:`InvalidInput`) while its entry is in the stream."""
        self._check_open()
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceeded("deadline exceeded before the update was appended")
        entry_id, appended = await self.stream.append(update, request_id)  # Unavailable if Redis is down
        if not appended:
            try:
                first = await self.stream.entry(entry_id)
            except ValueError:  # an entry this release cannot read (its apply loop says so): not compared
                first = None
            if first is not None and first.update is not None:
                check_retry(request_id, update.samples_sha256(), first.update.samples_sha256(), f"entry {entry_id}")
        result = await self._outcome(entry_id, request_id)
        if not appended and self.metrics is not None:
            self.metrics.learn_repeated(self.name, self.repo_version)
        return result

    async def rollback(self, version: int) -> tuple[int, int]:
        """Append a rollback to ``version``; ``(new version, restored)`` once applied here.
        Whether ``version`` is restorable is decided here, once: the entry names the snapshot to
        rebuild from, pinned until every replica applied it, so all apply it alike."""
        self._check_open()
        base, pins = await self.replayer.plan_rollback(int(version), self.published.version)  # OutOfRange
        entry_id, _ = await self.stream.append_rollback(int(version), "", base, tuple(pins))
        return await self._outcome(entry_id, "")

    async def snapshot(self, export: bool = False) -> tuple[SnapshotInfo, Path | None]:
        """Share a snapshot of the current version now (no artefact export: replicas keep no files)."""
        self._check_open()
        if export:
            raise PreconditionFailed("export_artifact needs local learning state (--state-dir); replicas keep none")
        pub, entry_id = self.published, self.last_id
        size = await self.put_snapshot(pub, entry_id)
        return SnapshotInfo(pub.version, Path(f"redis:{self.key}@{entry_id}"), time.time(), size), None

    async def wait_version(self, version: int, deadline: float | None) -> None:
        """Return once ``published.version >= version``; :class:`DeadlineExceeded` at ``deadline``."""
        try:
            await super().wait_version(version, deadline)
        except TimeoutError:
            raise DeadlineExceeded(
                f"min_version {version} not reached before the deadline: {self.key} is at version "
                f"{self.published.version} on this replica"
            ) from None

    # -- answers ----------------------------------------------------------------------------------

    async def _outcome(self, entry_id: str, request_id: str) -> Any:
        """The answer of an appended entry: applied here already, or once it is."""
        if entry_id in self._recent:
            return _answer(self._recent[entry_id])
        if id_le(entry_id, self.last_id):  # applied before this replica's state was loaded
            return _answer(await self._stored_result(entry_id, request_id))
        if self._quiesced:  # appended as the shutdown began: applied, but not waited for here
            raise Unavailable(_SHUTTING_DOWN)
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(entry_id, []).append(fut)
        if request_id:
            self._rids[entry_id] = request_id
        return _answer(await fut)

    async def _stored_result(self, entry_id: str, request_id: str) -> Any:
        stored = await self.shared.get_result(request_id) if request_id else None
        if stored is None:
            return UnknownOutcome(
                f"entry {entry_id} was applied before this replica loaded its state and its answer is no longer "
                "stored: check ListVersions"
            )
        return decode_result(stored)

    def _fail_waiters(self, exc: Exception) -> None:
        for futs in self._waiters.values():
            for f in futs:
                if not f.done():
                    f.set_exception(exc)
        self._waiters.clear()
        self._rids.clear()

    def _skipped(self, after_id: str) -> None:
        for entry_id in [e for e in self._waiters if id_le(e, after_id)]:
            futs, rid = self._waiters.pop(entry_id), self._rids.pop(entry_id, "")
            task = asyncio.ensure_future(self._stored_answers(entry_id, rid, futs))
            task.add_done_callback(lambda t: t.exception())  # failures are set on the futures

    async def _stored_answers(self, entry_id: str, request_id: str, futs: list[asyncio.Future]) -> None:
        try:
            res: Any = await self._stored_result(entry_id, request_id)
        except REDIS_ERRORS as exc:
            res = Unavailable(str(exc))
        for f in futs:
            if not f.done():
                f.set_result(res)

    async def _applied(self, entries: Sequence[Any], results: Sequence[Any]) -> None:
        """Count, store the answers of requests with an id (before answering: an acknowledged
        answer can then be repeated by any replica), answer the callers waiting here."""
        now = time.time()
        for e, res in zip(entries, results):
            self._recent[e.id] = res
            self._count(e, res, now)
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)
        put = self.shared.put_result
        stores = [put(e.request_id, encode_result(r)) for e, r in zip(entries, results) if e.request_id]
        for got in await asyncio.gather(*stores, return_exceptions=True):
            if isinstance(got, BaseException):  # applied all the same: the other replicas store it too
                log.warning("answer not stored", extra={"model": self.key, "error": repr(got)})
        for e, res in zip(entries, results):
            self._rids.pop(e.id, None)
            for f in self._waiters.pop(e.id, ()):
                if not f.done():
                    f.set_result(res)

    def _count(self, e: Any, res: Any, now: float) -> None:
        st = self.stats
        if isinstance(res, RequestError):
            st.refused += 1
            if self.metrics is not None:
                self.metrics.learn_refused(self.name, self.repo_version, res.reason)
        elif e.kind == "rollback":
            self.history.append((res[0], "rollback", now, 0, res[1]))
        else:
            st.learned(res[1], e.update.positive)
            st.group(1, now)
            self.history.append((res[0], "update", now, e.update.samples, 0))

    def _apply_done(self, task: asyncio.Task) -> None:
        """Supervision: a replication task (apply, housekeeping, snapshot) that dies of a bug
        stops learning (inference goes on)."""
        if task.cancelled() or task.exception() is None or self._failed is not None:
            return
        exc = task.exception()
        for t in (*self._tasks, self._snapshot_task):  # the others would serve again / beat on
            if t is not None and t is not task:
                t.cancel()
        if isinstance(exc, ArtifactMismatch):  # an operator's mistake, not a bug: no traceback
            log.error("model refused: its artefact is not the stream's", extra={"model": self.key, "error": str(exc)})
            self._failed = str(exc)
            self._fail_waiters(Unavailable(str(exc)))
        else:
            log.error("replication task failed", exc_info=exc, extra={"model": self.key, "task": task.get_name()})
            self._failed = f"internal error: {type(exc).__name__}: {exc}"
            self._fail_waiters(InternalError(f"learning stopped by an internal error ({type(exc).__name__})"))
        self._set_serving(False)
        if self.metrics is not None:
            self.metrics.learning_stopped(self.name, self.repo_version)
        if self.on_failed is not None:
            self.on_failed(self)


def _answer(res: Any) -> Any:
    if isinstance(res, RequestError):
        raise res
    return res[0], (np.asarray(res[1]) if isinstance(res[1], np.ndarray) else res[1])
