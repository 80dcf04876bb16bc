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

Reading streams one frame at a time: recovering a log of any size needs memory for one
record, not for a segment.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from .records import (
    FRAME_V1,
    MAGIC,
    MAGIC_V1,
    MAX_PAYLOAD,
    ROLLBACK,
    UPDATE,
    UpdateRecord,
    decode_payload,
    encode_record,
    header_ok,
    header_size,
)
from .snapshots import atomic_write, fsync_dir

__all__ = [
    "Damage",
    "LogCorruption",
    "OutcomeUnknown",
    "SegmentScan",
    "StorageError",
    "UpdateLog",
]

_sync = getattr(os, "fdatasync", os.fsync)


class StorageError(OSError):
    """An append failed and was cut back: nothing of it is durable."""


class OutcomeUnknown(OSError):
    """An append failed and could not be cut back: its records may or may not be durable."""


@dataclass(frozen=True, slots=True)
class Damage:
    """Where the readable part of a segment ends and why.

    ``last_good`` is the newest intact version before ``offset``; ``later`` the first and
    last versions of intact records found after the damage (None if none could be read);
    ``after_segments`` the newest version held by later segments (0 if none)."""

    path: Path
    offset: int
    reason: str
    torn: bool
    last_good: int
    size: int
    later: tuple[int, int] | None = None
    after_segments: int = 0
    gap: bool = False  # the segment is intact but does not follow the previous one

    @property
    def newest_affected(self) -> int | None:
        newest = max(self.later[1] if self.later else 0, self.after_segments)
        return newest if newest > self.last_good else None

    def describe(self) -> str:
        tail = self.size - self.offset
        where = f"{self.path}: {self.reason} (byte {self.offset} of {self.size}; {tail} bytes from there on)"
        newest = self.newest_affected
        if newest is not None:
            return f"{where}; versions {self.last_good + 1}..{newest} are affected"
        return f"{where}; the intact log ends at version {self.last_good}, what follows could not be read"


class LogCorruption(Exception):
    """The log holds damage that is not a torn final write; ``damage`` says where."""

    def __init__(self, message: str, damage: Damage | None = None) -> None:
        super().__init__(message)
        self.damage = damage


class SegmentScan:
    """The records of one segment, streamed and checked frame by frame (iterate it). After
    the iteration ``damage`` is None for a clean segment; ``last`` is the newest version
    read and ``valid_end`` the byte offset where the intact part ends."""

    def __init__(self, path: Path, base: int) -> None:
        self.path = Path(path)
        self.base = base
        self.last = base
        self.valid_end = 0
        self.size = 0
        self.magic: bytes | None = None
        self.damage: Damage | None = None

    def _fail(self, offset: int, reason: str, torn: bool) -> None:
        if not torn and offset >= len(MAGIC) and _zeros_from(self.path, offset):
            # never-synced appended blocks read back as zeros after a power loss (XFS, ext4
            # data=writeback): no acknowledged frame is all zeros, so this is a torn write too
            reason, torn = f"{reason}: the rest of the file is zero bytes (unwritten blocks)", True
        self.damage = Damage(self.path, offset, reason, torn, self.last, self.size)

    def check(self) -> SegmentScan:
        """Read the whole segment (records discarded); returns self with ``last`` and ``damage``."""
        for _ in self:
            pass
        return self

    def __iter__(self) -> Iterator[UpdateRecord]:
        with open(self.path, "rb") as fh:
            self.size = size = os.fstat(fh.fileno()).st_size
            magic = fh.read(len(MAGIC))
            if magic not in (MAGIC, MAGIC_V1):
                torn = len(magic) < len(MAGIC) and (MAGIC.startswith(magic) or MAGIC_V1.startswith(magic))
                self._fail(0, "torn segment header" if torn else "not a log segment (bad magic)", torn)
                return
            self.magic = magic
            hsize = header_size(magic)
            off = self.valid_end = len(magic)
            while off < size:
                header = fh.read(hsize)
                if len(header) < hsize:
                    self._fail(off, "the file ends inside a frame header", True)
                    return
                length, crc = FRAME_V1.unpack_from(header)
                if magic == MAGIC and not header_ok(header):
                    self._fail(off, "frame header checksum mismatch", False)
                    return
                if length > MAX_PAYLOAD:
                    self._fail(off, f"frame claims {length} bytes, more than any record", False)
                    return
                start = off + hsize
                if start + length > size:
                    self._fail(off, f"the file ends inside a frame ({size - start} of its {length} bytes)", True)
                    if magic == MAGIC_V1:  # no header checksum: torn only if nothing intact follows
                        later = find_later(self.path, off, self.last, magic)
                        if later is not None:
                            self.damage = replace(
                                self.damage, reason="frame length damaged (intact frames follow)", torn=False
                            )
                    return
                payload = fh.read(length)
                if len(payload) != length or zlib.crc32(payload) != crc:
                    self._fail(off, "CRC mismatch", False)
                    return
                try:
                    rec = decode_payload(payload)
                except ValueError as exc:
                    self._fail(off, f"bad record ({exc})", False)
                    return
                expected = self.last + 1 if rec.changes_state else self.last
                if rec.version != expected:
                    self._fail(off, f"record of version {rec.version} where version {expected} belongs", False)
                    return
                self.last = rec.version
                off = self.valid_end = start + length
                yield rec


def _zeros_from(path: Path, offset: int) -> bool:
    """Whether every byte of ``path`` from ``offset`` to its end is zero."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        while chunk := fh.read(1 << 20):
            if chunk.count(0) != len(chunk):
                return False
    return True


def _frame_at(mm: mmap.mmap, start: int, magic: bytes) -> tuple[UpdateRecord, int] | None:
    """The intact record whose frame starts at ``start``, and its end; None if there is none."""
    hsize = header_size(magic)
    if start < len(magic) or start + hsize > len(mm):
        return None
    header = mm[start : start + hsize]
    length, crc = FRAME_V1.unpack_from(header)
    if (magic == MAGIC and not header_ok(header)) or start + hsize + length > len(mm):
        return None
    payload = mm[start + hsize : start + hsize + length]
    if zlib.crc32(payload) != crc:
        return None
    try:
        return decode_payload(payload), start + hsize + length
    except ValueError:
        return None


def find_later(path: Path, offset: int, last_good: int, magic: bytes, tries: int = 64) -> tuple[int, int] | None:
    """First and last versions of intact records after a damaged frame at ``offset``: looks
    for the frame of each version ``last_good + 1 ... + tries`` (its kind and version bytes),
    then walks the frames that follow. Only used to report damage."""
    hsize = header_size(magic)
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size <= offset + hsize:
            return None
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for v in range(last_good + 1, last_good + 1 + tries):
                for kind in (UPDATE, ROLLBACK):
                    needle = struct.pack("<BQ", kind, v)
                    pos = mm.find(needle, offset + 1)
                    while pos != -1:
                        found = _frame_at(mm, pos - hsize, magic)
                        if found is not None and found[0].version == v:
                            first = last = v
                            end = found[1]
                            while (nxt := _frame_at(mm, end, magic)) is not None:
                                last = max(last, nxt[0].version)
                                end = nxt[1]
                            return first, last
                        pos = mm.find(needle, pos + 1)
    return None


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
