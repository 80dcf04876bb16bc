"""Reading one segment of the update log, and telling a torn final write from corruption
(see durability.py for the layout and for what may be repaired).

:class:`SegmentScan` streams a segment's records and stops at the first unreadable frame,
recording a :class:`Damage`: torn (the file ends inside a frame whose header is intact, a
write that was never acknowledged) or not (corruption: an operator decides).
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from .records import (
    FRAME_V1,
    MAGIC,
    MAGIC_V1,
    MAX_PAYLOAD,
    VERSIONED_KINDS,
    UpdateRecord,
    decode_payload,
    header_ok,
    header_size,
)

__all__ = ["Damage", "LogCorruption", "SegmentScan", "find_later"]


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
                for kind in VERSIONED_KINDS:
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
