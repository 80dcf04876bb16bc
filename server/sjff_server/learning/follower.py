"""The apply side of a replicated model: follow the stream, apply, publish, check.

:class:`Follower` keeps this replica's state of one model equal to the stream's: it starts
from the newest shared snapshot whose digest agrees (or the artefact), reads the stream in
order and applies every entry (replay.py), takes shared snapshots and checks digests at
multiples of their intervals (groups are cut so those versions are met exactly), and keeps
the heartbeat, the lag, the serving gate and the trim. A digest that differs from the one
the other replicas published stops serving the model here and starts it again from a
snapshot; so does a rollback this replica cannot rebuild (replay.Unrestorable: it then waits
for a snapshot taken after that rollback, asking the serving replicas for one) and a gap in
the stream (trimmed past this replica while it was away). A stream whose recorded artefact
sha256 differs from this replica's model file is refused for good (ArtifactMismatch).
Redis down: it retries with backoff and goes on from the last applied entry.
:class:`~.replicated.ReplicatedLearner` adds the callers' side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from spikingjelly_ff.runtime.protocol import RuntimeModel

from ..errors import Unavailable
from ..inference.engine import Engine, Published
from ..replication.shared import SharedState
from ..replication.stream import ReplicationLog, entry_position
from ..storage.snapshots import state_digest
from .replay import Replayer, Unrestorable, id_le
from .replica_options import ReplicationOptions

__all__ = ["REDIS_ERRORS", "ArtifactMismatch", "Follower"]

log = logging.getLogger("sjff_server.replication")
#: what a Redis outage looks like here (the replication modules turn Redis errors into Unavailable)
REDIS_ERRORS: tuple[type[BaseException], ...] = (Unavailable, OSError, ConnectionError, TimeoutError)


class ArtifactMismatch(Exception):
    """This replica's model file is not the one the model's stream started from."""


class Follower:
    """Follows the stream of model ``name``/``version`` in ``redis``. Subclasses get
    ``_applied(entries, results)`` after each applied chunk and ``_skipped(after_id)`` when a
    bootstrap jumps over entries."""

    def __init__(
        self,
        name: str,
        version: str,
        engine: Engine,
        model: RuntimeModel,
        redis: Any,
        options: ReplicationOptions,
        metrics: Any = None,
        artifact_sha256: str | None = None,
    ) -> None:
        self.name = name
        self.artifact_sha256 = artifact_sha256
        self.repo_version = version
        self.engine = engine
        self.options = options
        self.metrics = metrics
        self.key = f"{name}/{version}"
        self.stream = ReplicationLog(
            redis,
            options.prefix,
            self.key,
            idempotency_window_s=max(1, int(options.idempotency_window_s)),
            wait_replicas=options.wait_replicas,
            wait_timeout_ms=options.wait_timeout_ms,
        )
        self.shared = SharedState(redis, options.prefix, self.key, window_s=max(1, int(options.idempotency_window_s)))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"replica-{name}-{version}")
        self.replayer = Replayer(model, engine.publish, float(model.eta), self.stream, self.shared, self._pool)
        self.published: Published = engine.publish(0, model)
        self.last_id = "0-0"  # the last entry applied here
        self.lag = (0, 0.0)  # (entries, seconds) behind the stream's end
        self.diverged: str | None = None
        self.serving = False  # caught up (lag <= max_lag) and not diverged
        self.connected = False
        self.shared_snapshots: list[Any] = []  # SnapshotRefs, oldest first, as last listed
        #: told (learner, serving) when the model starts or stops serving on this replica
        self.on_serving: Callable[[Any, bool], None] | None = None
        self._bootstrapped = False
        self._needs_after: str | None = None  # recovery: bootstrap from a snapshot after this entry
        self._check_at: int | None = None  # recovery: NOT_SERVING until the digest here agrees
        self._tasks: list[asyncio.Task] = []
        self._snapshot_task: asyncio.Task | None = None
        self._on_task_done: Callable[[asyncio.Task], None] | None = None
        self._version_waiters: list[tuple[int, asyncio.Future]] = []

    def _labels(self) -> tuple[str, str]:
        return self.name, self.repo_version

    # -- hooks ------------------------------------------------------------------------------------

    async def _applied(self, entries: Sequence[Any], results: Sequence[Any]) -> None:
        """After ``entries`` were applied (``published`` and ``last_id`` already moved)."""

    def _skipped(self, after_id: str) -> None:
        """A bootstrap started after ``after_id``: entries up to it were not applied here."""

    # -- lifecycle --------------------------------------------------------------------------------

    def _start_tasks(self, on_task_done: Callable[[asyncio.Task], None]) -> None:
        """Start the apply and housekeeping tasks; ``on_task_done`` supervises them and every
        snapshot task (one dying of a bug would otherwise stop silently: no heartbeat, so the
        trim would pass this replica by)."""
        self._on_task_done = on_task_done
        self._tasks = [
            asyncio.create_task(self._apply_loop(), name=f"replica-apply-{self.key}"),
            asyncio.create_task(self._housekeeping(), name=f"replica-house-{self.key}"),
        ]
        for t in self._tasks:
            t.add_done_callback(on_task_done)

    async def _stop_tasks(self) -> None:
        tasks = [*self._tasks, *([self._snapshot_task] if self._snapshot_task else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pool.shutdown(wait=True)

    async def wait_version(self, version: int, deadline: float | None) -> None:
        """Return once ``published.version >= version``; ``TimeoutError`` at ``deadline``."""
        if self.published.version >= version:
            return
        fut = asyncio.get_running_loop().create_future()
        self._version_waiters.append((version, fut))
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        finally:
            if not fut.done():
                fut.cancel()
            self._version_waiters = [(v, f) for v, f in self._version_waiters if not f.done()]

    def _notify(self, version: int) -> None:
        for v, f in self._version_waiters:
            if v <= version and not f.done():
                f.set_result(None)

    # -- the apply task ---------------------------------------------------------------------------

    async def _apply_loop(self) -> None:
        delay = 0.05
        while True:
            try:
                if not self._bootstrapped and self.diverged is not None:
                    await asyncio.sleep(self.options.heartbeat_s)  # no hot loop if it diverges again
                if not self._bootstrapped and not await self._bootstrap():
                    await asyncio.sleep(0.2)  # waiting for a snapshot to recover from
                    continue
                count = self._chunk()
                entries = await self.stream.read(self.last_id, count, 500)
                if entries and entries[0].position != entry_position(self.last_id) + 1:
                    log.warning(
                        "stream trimmed past this replica: re-bootstrapping",
                        extra={"model": self.key, "after": self.last_id, "next": entries[0].id},
                    )
                    self._bootstrapped = False
                    continue
                if entries:
                    await self._apply(entries)
                if len(entries) < count:  # read up to the stream's end
                    self._set_lag(0, 0.0)
                if not self.connected:
                    self.connected = True
                    log.info("replication stream connected", extra={"model": self.key, "after": self.last_id})
                delay = 0.05
            except Unrestorable as exc:
                self._recover(str(exc), exc.entry_id, divergence=False)
            except REDIS_ERRORS as exc:
                if self.connected:
                    log.warning("replication unavailable; retrying", extra={"model": self.key, "error": str(exc)})
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _chunk(self) -> int:
        """Entries to apply next: at most max_group, and never past the next snapshot or digest
        version (every entry moves at most one version), so those versions are met exactly."""
        v, o = self.published.version, self.options
        n = min(o.max_group, o.snapshot_every - v % o.snapshot_every)
        if o.digest_every:
            n = min(n, o.digest_every - v % o.digest_every)
        return n

    async def _bootstrap(self) -> bool:
        """Start from the newest shared snapshot whose digest agrees (or the artefact); False
        while recovering and no snapshot is after the entry this replica could not apply."""
        self._set_serving(False)
        if self.artifact_sha256 is not None:
            other = await self.shared.claim_artifact(self.artifact_sha256)
            if other is not None:
                self.diverged = (
                    f"this replica's model file (sha256 {self.artifact_sha256[:16]}) differs from the one the "
                    f"stream of {self.key} started from ({other[:16]}): serve the same file, or give a new "
                    "version directory (or --replication-prefix) to a changed model"
                )
                raise ArtifactMismatch(self.diverged)
        snap = None
        for ref in reversed(await self.shared.snapshots()):
            try:
                snap = await self.shared.get_snapshot(ref.version)
            except ValueError as exc:  # damaged: an older one will do
                log.error("shared snapshot skipped", extra={"model": self.key, "at": ref.version, "error": str(exc)})
                continue
            if snap is not None and await self.shared.publish_and_check(snap.version, snap.digest) is None:
                break
            if snap is not None:
                log.error("shared snapshot disagrees with the digests", extra={"model": self.key, "at": ref.version})
            snap = None
        need = self._needs_after
        if need is not None and (snap is None or not id_le(need, snap.entry_id)):
            await self.shared.want_snapshot(need)  # the serving replicas past it write one
            return False
        pub, after = await self.replayer.start_of(snap)
        # report at once: until then the trim floor ignores this replica, and a prune + trim
        # could remove entries after ``after`` (the gap check in the apply loop catches that)
        await self.shared.beat(self.options.replica_id, after, pub.version)
        self.published, self.last_id = pub, after
        self._bootstrapped, self._needs_after = True, None
        self._notify(pub.version)
        self._skipped(after)
        if self.diverged is not None:
            log.warning("re-bootstrapped after divergence", extra={"model": self.key, "learning_version": pub.version})
            if self._check_at is None or pub.version >= self._check_at:
                self.diverged, self._check_at = None, None  # the metric stays 1 until it serves again
        log.info("replica state loaded", extra={"model": self.key, "learning_version": pub.version, "after": after})
        return True

    async def _apply(self, entries: list) -> None:
        before = self.published
        pub, results = await self.replayer.apply(before, entries)
        self.published, self.last_id = pub, entries[-1].id
        await self._applied(entries, results)
        self._notify(pub.version)
        if self.metrics is not None:
            self.metrics.replication_applied.labels(*self._labels()).inc(len(entries))
            self.metrics.version(self.name, self.repo_version, pub.version)
        if pub.version > before.version:
            o = self.options
            if pub.version % o.snapshot_every == 0 and (self._snapshot_task is None or self._snapshot_task.done()):
                self._snapshot_task = asyncio.create_task(
                    self._shared_snapshot(pub, self.last_id), name=f"replica-snapshot-{self.key}"
                )
                if self._on_task_done is not None:
                    self._snapshot_task.add_done_callback(self._on_task_done)
            if o.digest_every and pub.version % o.digest_every == 0:
                await self._check_digest(pub)

    # -- snapshots, digests -----------------------------------------------------------------------

    async def _digest_of(self, pub: Published) -> str:
        m = pub.model  # never mutated once published: safe to read from a thread
        return await asyncio.get_running_loop().run_in_executor(None, state_digest, m.weights, m.eligibility)

    async def put_snapshot(self, pub: Published, entry_id: str) -> int:
        """Write ``pub`` (applied up to ``entry_id``) as a shared snapshot unless one exists; its bytes."""
        digest = await self._digest_of(pub)
        m = pub.model
        await self.shared.put_snapshot(pub.version, entry_id, m.weights, m.eligibility, digest)
        await self.shared.snapshot_given(entry_id)
        await self.shared.prune(self.options.snapshots_keep, self.options.replica_timeout_s)
        if self.metrics is not None:
            self.metrics.snapshot(self.name, self.repo_version, pub.version)
        return sum(a.nbytes for a in (*m.weights, *m.eligibility))

    async def _shared_snapshot(self, pub: Published, entry_id: str) -> None:
        try:
            await self.put_snapshot(pub, entry_id)
        except REDIS_ERRORS as exc:  # the next multiple tries again; the stream still holds everything
            log.warning("shared snapshot not written", extra={"model": self.key, "error": str(exc)})

    async def _check_digest(self, pub: Published) -> None:
        digest = await self._digest_of(pub)
        other = await self.shared.publish_and_check(pub.version, digest)
        if self.metrics is not None:
            result = "ok" if other is None else "mismatch"
            self.metrics.replication_digest_checks.labels(*self._labels(), result).inc()
        if other is None:
            if self._check_at is not None and pub.version >= self._check_at:
                self.diverged, self._check_at = None, None  # agrees again where it diverged
            return
        self._check_at = pub.version
        self._recover(f"weights digest {digest[:16]} differs from {other[:16]} at version {pub.version}", None)

    def _recover(self, reason: str, needs_after: str | None, divergence: bool = True) -> None:
        """Stop serving the model here and start again from a shared snapshot (after
        ``needs_after`` if given); ``divergence``: the weights differ from the others'."""
        self.diverged = reason
        log.error("replica diverged: re-bootstrapping", extra={"model": self.key, "error": reason})
        if divergence and self.metrics is not None:
            self.metrics.replication_divergence.labels(*self._labels()).set(1)
        self._bootstrapped, self._needs_after = False, needs_after
        self._set_serving(False)

    # -- housekeeping -----------------------------------------------------------------------------

    def _set_lag(self, entries: int, seconds: float) -> None:
        self.lag = (entries, seconds)
        if self.metrics is not None:
            self.metrics.replication_lag_entries.labels(*self._labels()).set(entries)
            self.metrics.replication_lag_seconds.labels(*self._labels()).set(seconds)
        self._set_serving(self._bootstrapped and self.diverged is None and entries <= self.options.max_lag)

    def _set_serving(self, ok: bool) -> None:
        if ok != self.serving:
            self.serving = ok
            if ok and self.metrics is not None:
                self.metrics.replication_divergence.labels(*self._labels()).set(0)
            log.info("serving" if ok else "not serving", extra={"model": self.key, "lag": self.lag[0]})
            if self.on_serving is not None:
                self.on_serving(self, ok)

    async def _housekeeping(self) -> None:
        o = self.options
        last_trim = time.monotonic()
        while True:
            await asyncio.sleep(o.heartbeat_s if self.serving else min(o.heartbeat_s, 0.2))
            if not self._bootstrapped:
                continue
            try:
                await self.shared.beat(o.replica_id, self.last_id, self.published.version)
                self._set_lag(*await self.stream.lag(self.last_id))
                self.shared_snapshots = await self.shared.snapshots()
                wanted = await self.shared.wanted_snapshot()
                if wanted is not None and self.serving and id_le(wanted, self.last_id):
                    await self.put_snapshot(self.published, self.last_id)  # a replica recovers from it
                if time.monotonic() - last_trim >= o.trim_every_s:
                    last_trim = time.monotonic()
                    await self._trim()
            except REDIS_ERRORS as exc:
                log.debug("housekeeping skipped", extra={"model": self.key, "error": str(exc)})

    async def _trim(self) -> None:
        """Below the live replicas and the oldest kept snapshot (one replica at a time)."""
        ttl = max(1, int(self.options.trim_every_s))
        if not await self.shared.try_trim_lock(self.options.replica_id, ttl):
            return
        floor = await self.shared.trim_floor(self.options.replica_timeout_s)
        if floor is not None and not id_le(floor, "0-0"):
            await self.stream.trim(floor)
        if self.shared_snapshots:
            await self.shared.prune_digests(self.shared_snapshots[0].version)
