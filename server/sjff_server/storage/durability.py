"""The segmented, append-only update log of one model, and what recovery may repair.

Layout of one model's state directory::

    artefact.json                 sha256 of the artefact the state belongs to
    log/<base:020d>.log           log segment: records of versions base+1, base+2, ...
    snapshots/<version:020d>.npz  weights + eligibility of one version (snapshots.py)

A segment is a magic (``SJFFLOG2``; ``SJFFLOG1`` of earlier releases is still read) and
frames (records.py). Appends are written and fdatasync'ed before an update is
acknowledged (a group of updates shares one sync). A new segment starts at every snapshot
and whenever the current one passes a size limit, so no file grows without bound.

What may be repaired, as etcd's WAL does it: a crash can leave the newest segment ending
inside a frame whose header is intact (or inside a header): that torn final write was
never acknowledged, and recovery cuts it. Anything else — a checksum mismatch, a damaged
header, a record out of sequence, damage in an older segment — is corruption: the model
does not load, and the error names the file, the byte offset and the versions affected.
Only an operator's explicit ``sjff state repair --truncate`` cuts it (:func:`repair`).
If writing or syncing an append fails, the segment is cut back to where the append began
before the failure is reported, so a refused update can never reappear on restart; if even
that fails the outcome is unknown and :class:`OutcomeUnknown` says so.

Reading a segment and telling a torn write from corruption is scan.py's job; it streams one
frame at a time: recovering a log of any size needs memory for one record, not a segment.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from .records import MAGIC, UpdateRecord, encode_record
from .scan import Damage, LogCorruption, SegmentScan, find_later
from .snapshots import atomic_write, fsync_dir

__all__ = ["OutcomeUnknown", "StorageError", "UpdateLog"]

_sync = getattr(os, "fdatasync", os.fsync)


class StorageError(OSError):
    """An append failed and was cut back: nothing of it is durable."""


class OutcomeUnknown(OSError):
    """An append failed and could not be cut back: its records may or may not be durable."""


class UpdateLog:
    """The segmented append-only update log of one model."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fh = None
        self._base: int | None = None
        self._size = 0
        self.bytes_written = 0

    # -- files ----------------------------------------------------------------------------

    def segments(self) -> list[tuple[int, Path]]:
        """``(base version, path)`` of every segment, oldest first."""
        out = []
        for p in self.dir.glob("*.log"):
            try:
                out.append((int(p.stem), p))
            except ValueError:
                continue
        return sorted(out)

    def size_bytes(self) -> int:
        total = 0
        for _, p in self.segments():
            try:
                total += p.stat().st_size
            except OSError:  # pruned meanwhile
                continue
        return total

    @property
    def segment_bytes(self) -> int:
        """Size of the segment being appended to."""
        return self._size

    def _path(self, base: int) -> Path:
        return self.dir / f"{base:020d}.log"

    def open(self, last_version: int) -> None:
        """Append to the newest segment, or start one after ``last_version`` (also when the
        newest segment is of the old format, which is only read)."""
        self.close()
        segs = self.segments()
        if segs:
            base, path = segs[-1]
            with open(path, "rb") as fh:
                magic = fh.read(len(MAGIC))
            if magic == MAGIC:
                self._fh = open(path, "ab", buffering=0)  # noqa: SIM115 - kept open for appends
                self._base = base
                self._size = os.fstat(self._fh.fileno()).st_size
                return
        self._start(last_version)

    def _start(self, base: int) -> None:
        path = self._path(base)
        atomic_write(path, MAGIC)
        self._fh = open(path, "ab", buffering=0)  # noqa: SIM115
        self._base = base
        self._size = len(MAGIC)

    def rotate(self, base: int) -> None:
        """Start a new segment for the versions after ``base`` (after a snapshot, or when the
        current segment is full)."""
        if self._base == base:
            return
        self.close()
        self._start(base)

    def append(self, records: list[UpdateRecord]) -> int:
        """Write ``records`` and make them durable (one fdatasync). Returns bytes written.

        On failure the segment is cut back to where this append began and
        :class:`StorageError` is raised (nothing of it is durable); if cutting back fails
        too, :class:`OutcomeUnknown`."""
        if self._fh is None:
            raise StorageError("the update log is not open (an earlier storage error closed it)")
        blob = b"".join(encode_record(r) for r in records)
        fd = self._fh.fileno()
        start = self._size
        try:
            view = memoryview(blob)
            while view:
                n = self._fh.write(view)
                view = view[n:]
            _sync(fd)
        except BaseException as exc:
            try:
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError as cut:
                self.close()
                raise OutcomeUnknown(
                    f"writing the update log failed ({exc}) and cutting it back failed too ({cut}): "
                    "these updates may or may not be durable"
                ) from exc
            raise StorageError(
                f"writing the update log failed ({exc}); it was cut back, nothing of this write is durable"
            ) from exc
        self._size = start + len(blob)
        self.bytes_written += len(blob)
        return len(blob)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._base = None

    # -- reading --------------------------------------------------------------------------

    def replay(self, apply: Callable[[UpdateRecord], None]) -> tuple[int | None, Damage | None]:
        """One pass over every segment, oldest first, calling ``apply`` on each intact record.
        Returns ``(newest intact version or None if the log is empty, first damage or None)``;
        the pass stops at the first damage (with ``after_segments`` filled in)."""
        segs = self.segments()
        last: int | None = None
        for i, (base, path) in enumerate(segs):
            if last is not None and base != last:
                why = f"the segment holds versions after {base} but the previous one ends at version {last}"
                scan = SegmentScan(path, base).check()
                later = (base + 1, scan.last) if scan.last > base else None
                d = Damage(path, 0, why, False, last, scan.size, later=later, gap=True)
                return last, self._with_later_segments(d, segs[i + 1 :])
            scan = SegmentScan(path, base)
            for rec in scan:
                apply(rec)
            last = scan.last
            if scan.damage is not None:
                damage = scan.damage
                if damage.torn and i < len(segs) - 1:
                    damage = replace(damage, torn=False, reason=f"{damage.reason}, in a segment that is not the newest")
                if not damage.torn:
                    later = find_later(path, damage.offset, damage.last_good, scan.magic or MAGIC)
                    damage = replace(damage, later=later)
                return last, self._with_later_segments(damage, segs[i + 1 :])
        return last, None

    @staticmethod
    def _with_later_segments(damage: Damage, later: list[tuple[int, Path]]) -> Damage:
        newest = 0
        for base, path in later:
            newest = max(newest, SegmentScan(path, base).check().last)
        return replace(damage, after_segments=newest)

    def records(self, after: int, upto: int) -> Iterator[UpdateRecord]:
        """Records with ``after < version <= upto``, in order, streamed from the segments that
        hold them (digest records of those versions included)."""
        segs = self.segments()
        start = 0
        for i, (base, _) in enumerate(segs):
            if base <= after:
                start = i
        for base, path in segs[start:]:
            if base >= upto:
                break
            scan = SegmentScan(path, base)
            for r in scan:
                if r.version > upto:
                    return
                if r.version > after:
                    yield r
            if scan.damage is not None and not scan.damage.torn:
                raise LogCorruption(scan.damage.describe(), scan.damage)

    def cut_torn(self, damage: Damage) -> str:
        """Cut a torn final write (the only repair recovery makes on its own); returns a note."""
        if not damage.torn:
            raise LogCorruption(damage.describe(), damage)
        if damage.offset < len(MAGIC):
            damage.path.unlink()  # an interrupted segment start: nothing was ever written to it
            fsync_dir(self.dir)
        else:
            self.cut(damage.path, damage.offset)
        return (
            f"{damage.path.name}: {damage.reason}; cut {damage.size - damage.offset} bytes of a torn final write "
            f"(never acknowledged); the log ends at version {damage.last_good}"
        )

    def cut(self, path: Path, offset: int) -> None:
        """Truncate segment ``path`` to ``offset`` bytes, durably."""
        with open(path, "r+b") as fh:
            fh.truncate(offset)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(self.dir)

    def prune(self, keep_from: int) -> None:
        """Delete segments that only hold versions <= ``keep_from``."""
        segs = self.segments()
        current = self._path(self._base) if self._base is not None else None
        for (_, path), nxt in zip(segs, segs[1:]):
            if nxt[0] <= keep_from and path != current:
                path.unlink(missing_ok=True)
