"""Durable learning state: an append-only update log plus atomic snapshots.

Layout of one model's state directory::

    artefact.json                 sha256 of the artefact the state belongs to
    log/<base:020d>.log           log segment: records of versions base+1, base+2, ...
    snapshots/<version:020d>.npz  weights + eligibility of one version

A log segment starts with the 8-byte magic ``SJFFLOG1`` and holds frames
``<u32 length><u32 crc32> payload``. A payload is ``<u8 kind><u64 version><f64 unix time>``
followed, for an update (kind 1), by ``<u64 seed><f64 eta><u32 n><u32 d>``, the images
``[n, d]`` float32, the labels ``[n]`` int64 and the positive flags ``[n]`` uint8; for a
rollback (kind 2) by ``<u64 restored version>``. All little-endian.

Appends are written and fdatasync'ed before an update is acknowledged (a group of updates
shares one sync). A crash can leave a torn last frame, which recovery detects by its length
or CRC and truncates: it was never acknowledged. Snapshots are written to a temporary file,
fsync'ed, renamed into place and the directory fsync'ed, so a snapshot file is either
complete or absent. A new segment starts at every snapshot, so replay from a snapshot reads
one or a few segments.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "LogCorruption",
    "SnapshotInfo",
    "SnapshotStore",
    "UpdateLog",
    "UpdateRecord",
    "decode_payload",
    "encode_record",
    "fsync_dir",
]

MAGIC = b"SJFFLOG1"
UPDATE, ROLLBACK = 1, 2
_FRAME = struct.Struct("<II")
_HEAD = struct.Struct("<BQd")
_UPDATE = struct.Struct("<QdII")
_ROLLBACK = struct.Struct("<Q")
MAX_PAYLOAD = 1 << 30


class LogCorruption(Exception):
    """The log holds a bad record that is not a torn tail."""


@dataclass(frozen=True, slots=True)
class UpdateRecord:
    """One logged change: an update (images ``[n, d]`` float32, labels ``[n]`` int64,
    positive ``[n]`` float32 0/1, the seed and eta used) or a rollback to ``restored``."""

    kind: int
    version: int
    created: float
    seed: int = 0
    eta: float = 0.0
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    positive: np.ndarray | None = None
    restored: int = 0

    @property
    def samples(self) -> int:
        return 0 if self.labels is None else len(self.labels)


def encode_record(r: UpdateRecord) -> bytes:
    """The frame (header + payload) of a record."""
    head = _HEAD.pack(r.kind, r.version, r.created)
    if r.kind == UPDATE:
        assert r.images is not None and r.labels is not None and r.positive is not None
        n, d = r.images.shape
        body = b"".join(
            (
                _UPDATE.pack(r.seed, r.eta, n, d),
                np.ascontiguousarray(r.images, dtype="<f4").tobytes(),
                np.ascontiguousarray(r.labels, dtype="<i8").tobytes(),
                (np.asarray(r.positive) > 0.5).astype(np.uint8).tobytes(),
            )
        )
    elif r.kind == ROLLBACK:
        body = _ROLLBACK.pack(r.restored)
    else:
        raise ValueError(f"unknown record kind {r.kind}")
    payload = head + body
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode_payload(payload: bytes) -> UpdateRecord:
    """Inverse of :func:`encode_record` for the payload part (``ValueError`` if malformed)."""
    if len(payload) < _HEAD.size:
        raise ValueError("payload too short")
    kind, version, created = _HEAD.unpack_from(payload)
    off = _HEAD.size
    if kind == UPDATE:
        seed, eta, n, d = _UPDATE.unpack_from(payload, off)
        off += _UPDATE.size
        need = n * d * 4 + n * 8 + n
        if len(payload) - off != need:
            raise ValueError(f"update payload holds {len(payload) - off} bytes, expected {need}")
        images = np.frombuffer(payload, dtype="<f4", count=n * d, offset=off).reshape(n, d)
        off += n * d * 4
        labels = np.frombuffer(payload, dtype="<i8", count=n, offset=off)
        off += n * 8
        positive = np.frombuffer(payload, dtype=np.uint8, count=n, offset=off).astype(np.float32)
        return UpdateRecord(
            UPDATE, version, created, seed, eta, images.astype(np.float32), labels.astype(np.int64), positive
        )
    if kind == ROLLBACK:
        (restored,) = _ROLLBACK.unpack_from(payload, off)
        return UpdateRecord(ROLLBACK, version, created, restored=restored)
    raise ValueError(f"unknown record kind {kind}")


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames and new files in it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_sync = getattr(os, "fdatasync", os.fsync)


@dataclass(frozen=True, slots=True)
class SegmentScan:
    """Result of reading one segment: records, where the valid data ends, and why it ended."""

    records: list[UpdateRecord]
    valid_end: int
    size: int
    error: str | None


class UpdateLog:
    """The segmented append-only update log of one model."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fh = None
        self._base: int | None = None
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
        return sum(p.stat().st_size for _, p in self.segments())

    def _path(self, base: int) -> Path:
        return self.dir / f"{base:020d}.log"

    @staticmethod
    def scan(path: Path) -> SegmentScan:
        """Read a segment up to its end or its first bad frame."""
        data = path.read_bytes()
        if not data.startswith(MAGIC):
            if len(data) < len(MAGIC) and MAGIC.startswith(data):
                return SegmentScan([], 0, len(data), "torn segment header")
            return SegmentScan([], 0, len(data), "not a log segment (bad magic)")
        off = len(MAGIC)
        records: list[UpdateRecord] = []
        while off < len(data):
            if len(data) - off < _FRAME.size:
                return SegmentScan(records, off, len(data), f"torn frame header at byte {off}")
            length, crc = _FRAME.unpack_from(data, off)
            start = off + _FRAME.size
            if length > MAX_PAYLOAD or start + length > len(data):
                return SegmentScan(records, off, len(data), f"torn or oversized frame at byte {off}")
            payload = data[start : start + length]
            if zlib.crc32(payload) != crc:
                return SegmentScan(records, off, len(data), f"CRC mismatch at byte {off}")
            try:
                records.append(decode_payload(payload))
            except ValueError as exc:
                return SegmentScan(records, off, len(data), f"bad record at byte {off}: {exc}")
            off = start + length
        return SegmentScan(records, off, len(data), None)

    def open(self, base: int) -> None:
        """Append to the newest segment, or start segment ``base`` if there is none."""
        self.close()
        segs = self.segments()
        if segs:
            base, path = segs[-1]
            self._fh = open(path, "ab", buffering=0)  # noqa: SIM115 - kept open for appends
            self._base = base
            return
        self._start(base)

    def _start(self, base: int) -> None:
        path = self._path(base)
        tmp = path.with_name(path.name + ".part")
        with open(tmp, "wb") as fh:
            fh.write(MAGIC)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(self.dir)
        self._fh = open(path, "ab", buffering=0)  # noqa: SIM115
        self._base = base

    def rotate(self, base: int) -> None:
        """Start a new segment for the versions after ``base`` (called after a snapshot)."""
        if self._base == base:
            return
        self.close()
        self._start(base)

    def append(self, records: list[UpdateRecord]) -> int:
        """Write ``records`` and make them durable (one fdatasync). Returns bytes written."""
        if self._fh is None:
            raise RuntimeError("the update log is not open")
        blob = b"".join(encode_record(r) for r in records)
        view = memoryview(blob)
        while view:
            n = self._fh.write(view)
            view = view[n:]
        _sync(self._fh.fileno())
        self.bytes_written += len(blob)
        return len(blob)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._base = None

    # -- reading --------------------------------------------------------------------------

    def repair(self) -> list[str]:
        """Check every segment; truncate a torn tail of the newest one. Returns notes on what
        was found. Raises :class:`LogCorruption` for damage that is not a torn tail."""
        notes = []
        segs = self.segments()
        for i, (_, path) in enumerate(segs):
            scan = self.scan(path)
            if scan.error is None:
                continue
            last = i == len(segs) - 1
            if not last:
                raise LogCorruption(f"{path}: {scan.error} (not the newest segment)")
            if scan.valid_end == 0:
                if scan.error != "torn segment header":
                    raise LogCorruption(f"{path}: {scan.error}")
                # an interrupted segment start: nothing was ever acknowledged in it
                notes.append(f"{path.name}: {scan.error}; segment removed")
                path.unlink()
                continue
            with open(path, "r+b") as fh:
                fh.truncate(scan.valid_end)
                fh.flush()
                os.fsync(fh.fileno())
            notes.append(
                f"{path.name}: {scan.error}; truncated {scan.size - scan.valid_end} bytes of an unacknowledged write"
            )
        return notes

    def last_version(self) -> int | None:
        """Version of the newest record, or None for an empty log."""
        for _, path in reversed(self.segments()):
            recs = self.scan(path).records
            if recs:
                return recs[-1].version
        return None

    def records(self, after: int, upto: int) -> Iterator[UpdateRecord]:
        """Records with ``after < version <= upto``, in order (from the segments that hold them)."""
        segs = self.segments()
        start = 0
        for i, (base, _) in enumerate(segs):
            if base <= after:
                start = i
        for base, path in segs[start:]:
            if base >= upto:
                break
            for r in self.scan(path).records:
                if r.version > upto:
                    return
                if r.version > after:
                    yield r

    def prune(self, keep_from: int) -> None:
        """Delete segments that only hold versions <= ``keep_from``."""
        segs = self.segments()
        for (_, path), nxt in zip(segs, segs[1:]):
            if nxt[0] <= keep_from and path != (self._path(self._base) if self._base is not None else None):
                path.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    version: int
    path: Path
    created: float
    bytes: int


class SnapshotStore:
    """Atomic ``.npz`` snapshots of a model's weights and eligibility traces."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob("*.part"):
            stale.unlink(missing_ok=True)

    def list(self) -> list[SnapshotInfo]:
        """Every snapshot, oldest first."""
        out = []
        for p in self.dir.glob("*.npz"):
            try:
                version = int(p.stem)
                st = p.stat()
            except (ValueError, OSError):
                continue
            out.append(SnapshotInfo(version, p, st.st_mtime, st.st_size))
        return sorted(out, key=lambda s: s.version)

    def write(self, version: int, weights: list[np.ndarray], eligibility: list[np.ndarray], meta: dict) -> SnapshotInfo:
        """Write a snapshot atomically: temp file, fsync, rename, fsync directory."""
        path = self.dir / f"{version:020d}.npz"
        tmp = path.with_name(path.name + ".part")
        arrays = {f"w{i}": w for i, w in enumerate(weights)}
        arrays.update({f"e{i}": e for i, e in enumerate(eligibility)})
        info = {**meta, "version": version, "created": time.time(), "layers": len(weights)}
        arrays["meta"] = np.array(json.dumps(info, sort_keys=True))
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(self.dir)
        st = path.stat()
        return SnapshotInfo(version, path, st.st_mtime, st.st_size)

    @staticmethod
    def read(path: Path) -> tuple[dict, list[np.ndarray], list[np.ndarray]]:
        """``(meta, weights, eligibility)`` of a snapshot (``ValueError`` if unreadable)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                n = int(meta["layers"])
                weights = [np.array(z[f"w{i}"], dtype=np.float32) for i in range(n)]
                elig = [np.array(z[f"e{i}"], dtype=np.float32) for i in range(n)]
        except Exception as exc:  # noqa: BLE001 - zip, JSON, key and OS errors all mean unusable
            raise ValueError(f"{path}: unreadable snapshot ({type(exc).__name__}: {exc})") from exc
        return meta, weights, elig

    def prune(self, keep: int) -> int | None:
        """Keep the newest ``keep`` snapshots. Returns the oldest kept version if any snapshot
        was deleted (the log before it can go too), else None."""
        snaps = self.list()
        if len(snaps) <= keep:
            return None
        for s in snaps[: len(snaps) - keep]:
            s.path.unlink(missing_ok=True)
        return snaps[len(snaps) - keep].version
