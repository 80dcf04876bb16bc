"""The durable versions of one model (the learner's I/O thread): appends, snapshots,
rollback and retention.

A snapshot is taken every ``snapshot_every`` updates (checked after each group's append)
and on demand; the log starts a new segment at each snapshot and whenever a segment passes
``segment_bytes``; ``keep_snapshots`` bounds what is kept (older segments go with them). A
rollback is a new version holding the weights of an older one, logged like an update.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import OutOfRange
from ..inference.engine import Engine, Published
from ..storage.records import ROLLBACK, UpdateRecord
from ..storage.requests import answers_of
from ..storage.snapshots import SnapshotInfo
from ..storage.state import ModelState, NotRestorable
from .options import LearnOptions

__all__ = ["VersionStore"]

log = logging.getLogger("sjff_server.learning")


class VersionStore:
    """Writes of one model's learning state. ``on_snapshot(version)`` is told of every
    snapshot written. Methods run on one thread at a time (the learner's I/O thread)."""

    def __init__(
        self,
        state: ModelState,
        engine: Engine,
        options: LearnOptions,
        on_snapshot: Callable[[int], None] | None = None,
    ) -> None:
        self.state = state
        self.engine = engine
        self.options = options
        self.on_snapshot = on_snapshot
        self.last_snapshot = -1  # version of the newest snapshot (-1: none yet)

    def close(self) -> None:
        """Close the update log (at shutdown)."""
        self.state.log.close()

    def oldest_restorable(self, current: int) -> int:
        return self.state.oldest_restorable(current)

    def append(self, records: list[UpdateRecord]) -> float:
        """Append + fdatasync ``records``; returns the seconds it took."""
        t0 = time.perf_counter()
        self.state.log.append(records)  # durable before anything is acknowledged
        try:  # before the callers are answered; the updates are durable whatever happens here
            self.state.requests.add(answers_of(records))
        except Exception:  # noqa: BLE001 - a retry of these ids would apply again: say so
            log.exception("request ids of durable updates not remembered", extra={"model": self.state.name})
        return time.perf_counter() - t0

    def after_append(self, pub: Published) -> SnapshotInfo | None:
        """A snapshot if one is due, else a new segment if this one is full."""
        every = self.options.snapshot_every
        if every > 0 and pub.version - max(self.last_snapshot, 0) >= every:
            try:
                return self.snapshot(pub, False)[0]
            except OSError as exc:  # the updates are durable in the log; retry at the next one
                log.error("snapshot failed", extra={"model": self.state.name, "error": repr(exc)})
        if self.state.log.segment_bytes >= self.options.segment_bytes:
            self.state.log.rotate(pub.version)
        return None

    def snapshot(self, pub: Published, export: bool) -> tuple[SnapshotInfo, Path | None]:
        """Snapshot ``pub`` (and write a full model file if ``export``); prunes old ones."""
        info, exported = self.state.write_snapshot(pub.version, pub.model, self.options.keep_snapshots, export)
        self.last_snapshot = info.version
        if self.on_snapshot is not None:
            self.on_snapshot(info.version)
        return info, exported

    def rollback(self, base: Published, target: int) -> tuple[Published, int]:
        """Log version ``base.version + 1`` holding the weights of ``target``; returns it
        (published, not yet swapped in) and ``target``. :class:`OutOfRange` if ``target``
        does not exist or cannot be rebuilt."""
        if target > base.version:
            raise OutOfRange(f"version {target} does not exist yet (current: {base.version})")
        oldest = self.oldest_restorable(base.version)
        if target < oldest:
            raise OutOfRange(f"version {target} is no longer restorable (oldest: {oldest})")
        try:
            model = self.state.state_at(target)
        except NotRestorable as exc:
            raise OutOfRange(str(exc)) from None
        new = base.version + 1
        pub = self.engine.publish(new, model)  # everything that can fail happens before the append
        self.state.log.append([UpdateRecord(ROLLBACK, new, time.time(), restored=target)])
        try:  # durable from here on: a failed snapshot only makes the next restart replay more
            self.snapshot(pub, False)
        except Exception as exc:  # noqa: BLE001 - the rollback stands; it must be answered as applied
            log.error("snapshot after rollback failed", extra={"model": self.state.name, "error": repr(exc)})
        return pub, target
