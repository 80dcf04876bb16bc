"""The durable learning state of one model version: recovery, rebuilds, snapshots.

:class:`ModelState` owns the artefact's pristine weights, the update log and the snapshots.
Recovery loads the newest usable snapshot and replays the log after it in one streaming
pass; digest records in the log (and the digest stored with each snapshot) are checked on
the way, so a replay that does not reproduce the acknowledged weights bit for bit (another
CPU, another BLAS or thread count) is an error that says so, never silently other weights.
Nothing here knows gRPC: callers map the exceptions to statuses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikingjelly_ff.runtime.protocol import RuntimeModel

from .durability import UpdateLog
from .records import DIGEST, KINDS, ROLLBACK, UPDATE, UpdateRecord
from .requests import Answer, RequestWindow, answers_of, read_answers
from .scan import LogCorruption
from .snapshots import SnapshotInfo, SnapshotStore, atomic_write, lock_state, state_digest

__all__ = [
    "ModelState",
    "NotRestorable",
    "Recovered",
    "ReplayMismatch",
    "StateMismatch",
    "file_sha256",
]

log = logging.getLogger("sjff_server.state")
HISTORY = 10000

# The on-disk format, spelled as the files already written spell it ("artefact"; identifiers
# say "artifact"): changing these strings would orphan every existing state directory.
#: the marker file tying a state directory to the sha256 of its model file
MARKER_FILE = "artefact.json"
#: the marker's JSON field holding the model file's path
MARKER_PATH_KEY = "artefact"
#: the snapshot meta key holding the model file's sha256
SNAPSHOT_SHA_KEY = "artefact_sha256"


class StateMismatch(Exception):
    """The state directory belongs to a different artefact than the one in the repository."""


def _because(warnings: list[str]) -> str:
    """The snapshots recovery skipped, for an error that their absence caused."""
    return f" ({'; '.join(warnings)})" if warnings else ""


class StateUnreadable(Exception):
    """The state directory, or a file in it, cannot be read or written (permissions, a file
    where a folder belongs): that model waits for an operator, the others are served."""


class ReplayMismatch(Exception):
    """Replaying the log did not reproduce the weights that were acknowledged."""


class NotRestorable(ValueError):
    """A version that no snapshot and no log segment can rebuild any more."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(slots=True)
class Recovered:
    """What recovery found: the model at ``version``, the newest snapshot's version (-1 if
    none), the last changes for ListVersions, and notes for the server log."""

    model: RuntimeModel
    version: int
    last_snapshot: int
    history: deque
    notes: list[str]
    warnings: list[str]


class ModelState:
    """Files of one model version's learning state (see durability.py for the layout)."""

    def __init__(
        self,
        name: str,
        repo_version: str,
        base: RuntimeModel,
        artifact: Path,
        directory: Path,
        kind: str,
        requests: RequestWindow | None = None,
    ) -> None:
        self.name = name
        self.repo_version = repo_version
        self.base = base  # pristine artefact weights (never mutated)
        self.artifact = Path(artifact)
        self.dir = Path(directory)
        self.kind = kind
        self.sha256 = ""
        self.log = UpdateLog(self.dir / "log")
        self.snapshots = SnapshotStore(self.dir / "snapshots")
        #: request ids of applied updates and their answers (rebuilt by recovery)
        self.requests = requests if requests is not None else RequestWindow(86400.0, 64 << 20)
        self._lock: int | None = None

    def release(self) -> None:
        """Close the log and give up the directory's lock."""
        self.log.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # -- recovery ---------------------------------------------------------------------------

    def _check_marker(self, reset_changed: bool) -> list[str]:
        """``artefact.json`` ties the state to the artefact's sha256 (written atomically)."""
        marker = self.dir / MARKER_FILE
        notes: list[str] = []
        old = None
        if marker.exists():
            try:
                old = json.loads(marker.read_text()).get("sha256")
            except (ValueError, AttributeError) as exc:
                raise StateMismatch(f"{marker} is unreadable ({exc}); restore it or move the directory away") from exc
        if old is None and self._holds_state():
            # updates and snapshots of an unknown model file: replayed onto this one they would
            # give weights no caller was answered with
            if not reset_changed:
                raise StateMismatch(
                    f"{self.dir} holds learning state (an update log or snapshots) but no {MARKER_FILE} naming "
                    f"the model file it belongs to; restore {marker.name} or start with --reset-changed-models "
                    "to archive the state"
                )
            old = "unknown"  # archived below
        if old is not None and old != self.sha256:
            if not reset_changed:
                raise StateMismatch(
                    f"{self.dir} holds learning state of another artefact (sha256 {str(old)[:12]}..., the "
                    f"repository has {self.sha256[:12]}...); put a changed model in a new version directory, or "
                    "start with --reset-changed-models to archive the old state"
                )
            archive = self.dir.with_name(f"{self.dir.name}.archived-{time.strftime('%Y%m%dT%H%M%S')}")
            self.dir.rename(archive)
            notes.append(f"artefact changed: old learning state archived to {archive}")
            self.dir.mkdir(parents=True)
            if self._lock is not None:  # the lock went with the archive: take the new directory's
                os.close(self._lock)
                self._lock = lock_state(self.dir)
            self.log = UpdateLog(self.dir / "log")
            self.snapshots = SnapshotStore(self.dir / "snapshots")
            old = None
        if old is None:
            info = {"sha256": self.sha256, MARKER_PATH_KEY: str(self.artifact), "model": self.name}
            atomic_write(marker, json.dumps({**info, "version": self.repo_version}).encode())
        return notes

    def _holds_state(self) -> bool:
        """Whether the directory holds updates or snapshots (an empty log segment is none)."""
        for _, path in self.log.segments():
            try:
                if path.stat().st_size > 0:
                    return True
            except OSError:
                continue
        return bool(self.snapshots.list())

    def recover(self, reset_changed: bool = False) -> Recovered:
        """Newest usable snapshot + one streaming pass over the log. A torn final write is
        cut; any other damage raises :class:`LogCorruption`, a replay that differs from the
        logged digests :class:`ReplayMismatch`. Takes the directory's lock (released on failure,
        so that ``sjff state repair`` can run while the server serves the other models)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            self._lock = lock_state(self.dir)  # held while serving: no second server, no repair meanwhile
        try:
            return self._recover(reset_changed)
        except BaseException:
            self.release()
            raise

    def _recover(self, reset_changed: bool) -> Recovered:
        try:
            # the bytes the served base was parsed from (the file may have been replaced since)
            self.sha256 = self.base.source_sha256 or file_sha256(self.artifact)
        except OSError as exc:  # the model file, not the state: not a StateUnreadable
            raise RuntimeError(f"cannot read the model file {self.artifact}: {exc}") from exc
        notes = self._check_marker(reset_changed)
        warnings: list[str] = []
        snaps = self.snapshots.list()
        model, start = None, 0
        for info in reversed(snaps):
            try:
                model, start = self._load_snapshot(info), info.version
                break
            except ValueError as exc:
                warnings.append(f"snapshot skipped: {exc}")
        stored, covered = self._stored_requests([s for s in snaps if s.version <= start], warnings)
        if model is None:
            model = self.base.copy()
        cur = start
        history: deque = deque(maxlen=HISTORY)
        # a snapshot that stores request ids holds those of its versions (or forgot them)
        answered: list[tuple[str, Answer]] = list(stored or ())
        logged_from = covered + 1 if stored is not None else 0

        def apply(r: UpdateRecord) -> None:
            nonlocal model, cur
            if r.changes_state:
                history.append((r.version, KINDS[r.kind], r.created, r.samples, r.restored))
            if r.version >= logged_from:
                answered.extend(answers_of((r,)))
            if r.version < cur or (r.version == cur and r.changes_state):
                return  # covered by the snapshot (checked by its CRC only)
            if r.kind == DIGEST:
                self._check_digest(model, r)
                return
            if r.version != cur + 1:
                raise LogCorruption(
                    f"{self.log.dir}: cannot rebuild version {r.version}: versions {cur + 1}..{r.version - 1} are in "
                    f"no usable snapshot and no log segment{_because(warnings)}"
                )
            model = self._apply(model, r)
            cur = r.version

        last, damage = self.log.replay(apply)
        if damage is not None:
            if not damage.torn:
                raise LogCorruption(
                    f"{damage.describe()}. The model is not loaded; nothing was changed. See what a cut would lose "
                    f"with `sjff state repair {self.dir.parent.parent} --model {self.name} --version "
                    f"{self.repo_version}`, and cut it with `--truncate`",
                    damage,
                )
            warnings.append(self.log.cut_torn(damage))
        if last is not None and last < start:
            raise LogCorruption(
                f"{self.log.dir}: the log ends at version {last} but the newest usable snapshot is version {start}; "
                f"appending would leave a gap. Drop the log before the snapshot with `sjff state repair "
                f"{self.dir.parent.parent} --model {self.name} --version {self.repo_version} --truncate`"
            )
        latest = max(start, last or 0)
        if cur != latest:
            raise LogCorruption(
                f"{self.log.dir}: cannot rebuild version {latest}: the log ends at version {cur}{_because(warnings)}"
            )
        answered.sort(key=lambda e: e[1].version)
        self.requests.add(answered)
        self.log.open(latest)
        if snaps and start == latest:
            self.log.rotate(latest)
        if latest:
            notes.append(f"resumed at version {latest}")
        return Recovered(model, latest, start if start else -1, history, notes, warnings)

    def _stored_requests(
        self, snaps: list[SnapshotInfo], warnings: list[str]
    ) -> tuple[list[tuple[str, Answer]] | None, int]:
        """The request ids stored by the newest of ``snaps`` whose ids are readable, and its
        version; ``(None, 0)`` if it is one written before snapshots stored them (or none is
        readable): then every logged id counts. The log after the oldest kept snapshot is
        kept, so an older snapshot's ids plus the log after it lose nothing."""
        for info in reversed(snaps):
            try:
                return read_answers(info.path), info.version
            except ValueError as exc:
                warnings.append(f"request ids of snapshot {info.version} skipped: {exc}")
        return None, 0

    def _check_digest(self, model: RuntimeModel, r: UpdateRecord) -> None:
        got = state_digest(model.weights, model.eligibility)
        if got != r.digest:
            raise ReplayMismatch(
                f"{self.log.dir}: replaying the log gives weights with sha256 {got[:16]}... at version {r.version}, "
                f"but {r.digest[:16]}... was acknowledged: this machine's arithmetic differs from the one that "
                "learned them (CPU, BLAS library or thread count), or a file of the state was replaced. Restore on "
                "a machine like that one, or from a snapshot at or after that version"
            )

    def _apply(self, model: RuntimeModel, r: UpdateRecord) -> RuntimeModel:
        if r.kind == UPDATE and r.update is not None:
            r.update.apply(model)
            return model
        if r.kind == ROLLBACK:
            return self.state_at(r.restored)
        raise LogCorruption(f"{self.log.dir}: unknown record kind {r.kind} at version {r.version}")

    def _load_snapshot(self, info: SnapshotInfo) -> RuntimeModel:
        meta, weights, elig = SnapshotStore.read(info.path)
        if meta.get(SNAPSHOT_SHA_KEY) != self.sha256:
            raise ValueError(f"{info.path}: snapshot of another artefact")
        shapes = [w.shape for w in self.base.weights]
        if [w.shape for w in weights] != shapes or [e.shape for e in elig] != shapes:
            raise ValueError(f"{info.path}: shapes do not match the model")
        if not all(np.isfinite(a).all() for a in (*weights, *elig)):
            raise ValueError(f"{info.path}: non-finite values")
        model = self.base.copy()
        model.weights = weights
        model.eligibility = elig
        return model

    # -- rebuilds ---------------------------------------------------------------------------

    def oldest_restorable(self, current: int) -> int:
        segs = self.log.segments()
        candidates = [s.version for s in self.snapshots.list()]
        if segs and segs[0][0] == 0:
            candidates.append(0)
        return min(candidates) if candidates else current

    def state_at(self, v: int, depth: int = 0) -> RuntimeModel:
        """The model (a private copy) as it was at version ``v``: newest usable snapshot <= v
        plus the logged changes after it (digests checked on the way)."""
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
                raise NotRestorable(f"version {v} is no longer restorable (oldest: {self.oldest_restorable(v)})")
            model, cur = self.base.copy(), 0
        for r in self.log.records(cur, v):
            if r.kind == DIGEST:
                if r.version == cur:
                    self._check_digest(model, r)
                continue
            if r.version != cur + 1:
                raise LogCorruption(f"{self.dir}: update log misses version {cur + 1} (next record is {r.version})")
            model = self.state_at(r.restored, depth + 1) if r.kind == ROLLBACK else self._apply(model, r)
            cur = r.version
        if cur != v:
            raise LogCorruption(f"{self.dir}: cannot rebuild version {v}: the log ends at version {cur}")
        return model

    # -- writes (the learner's I/O thread) --------------------------------------------------

    def write_snapshot(
        self, version: int, model: RuntimeModel, keep: int, export: bool
    ) -> tuple[SnapshotInfo, Path | None]:
        """Snapshot ``model`` as ``version``, start a new log segment, prune old ones."""
        meta = {
            SNAPSHOT_SHA_KEY: self.sha256,
            "model": self.name,
            "model_version": self.repo_version,
            "kind": self.kind,
        }
        info = self.snapshots.write(version, model.weights, model.eligibility, meta, self.requests.arrays(version))
        self.log.rotate(version)
        oldest = self.snapshots.prune(keep)
        if oldest is not None:
            self.log.prune(oldest)
        exported = None
        if export:
            exported = self.dir / "exports" / f"v{version:08d}" / self.artifact.name
            model.save(exported)
        return info, exported
