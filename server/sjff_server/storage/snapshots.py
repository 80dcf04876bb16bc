"""Atomic files: snapshots of a model's learning state, small JSON markers, and the state digest.

A snapshot ``snapshots/<version:020d>.npz`` holds the weights and eligibility traces of one
version and, in its ``meta``, their :func:`state_digest` (and the request ids remembered at
that version: requests.py); it is written to a temporary file,
fsync'ed, renamed into place and the directory fsync'ed, so a snapshot is complete or absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SnapshotInfo", "SnapshotStore", "StateInUse", "atomic_write", "fsync_dir", "lock_state", "state_digest"]


class StateInUse(Exception):
    """Another process (a server, or ``sjff state repair``) holds this state directory."""


def lock_state(directory: Path) -> int:
    """Take the exclusive lock of a model's state directory (``.lock``, flock) and return its
    file descriptor; held until closed. :class:`StateInUse` if another process has it."""
    from spikingjelly_ff.runtime.files import try_lock

    fd = try_lock(directory)
    if fd is None:
        raise StateInUse(
            f"{directory} is in use by another process (a running server or sjff state repair); "
            "one process at a time may own a model's learning state"
        ) from None
    return fd


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames and new files in it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` so that a crash leaves the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def state_digest(weights: list[np.ndarray], eligibility: list[np.ndarray]) -> str:
    """sha256 (hex) of a learning state: every array's dtype, shape and bytes, in order.
    Equal digests mean bit-identical weights and traces."""
    h = hashlib.sha256()
    for a in (*weights, *eligibility):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        if a.size:  # a view with a zero in its shape cannot be cast (a competitive net's empty label weights)
            h.update(memoryview(a).cast("B"))
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    version: int
    path: Path
    created: float
    bytes: int


class SnapshotStore:
    """Atomic ``.npz`` snapshots of a model's weights and eligibility traces."""

    def __init__(self, directory: Path, writable: bool = True) -> None:
        self.dir = Path(directory)
        if writable:  # a reader (sjff state repair's report) changes nothing
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob("*.part"):
                stale.unlink(missing_ok=True)

    def list(self) -> list[SnapshotInfo]:
        """Every snapshot, oldest first."""
        out = []
        for p in self.dir.glob("*.npz") if self.dir.is_dir() else ():
            try:
                version = int(p.stem)
                st = p.stat()
            except (ValueError, OSError):
                continue
            out.append(SnapshotInfo(version, p, st.st_mtime, st.st_size))
        return sorted(out, key=lambda s: s.version)

    def write(
        self,
        version: int,
        weights: list[np.ndarray],
        eligibility: list[np.ndarray],
        meta: dict,
        extra: dict[str, np.ndarray] | None = None,
    ) -> SnapshotInfo:
        """Write a snapshot atomically: temp file, fsync, rename, fsync directory. ``extra``:
        more arrays stored with it (the request ids of requests.py)."""
        path = self.dir / f"{version:020d}.npz"
        tmp = path.with_name(path.name + ".part")
        arrays = dict(extra or {})
        arrays.update({f"w{i}": w for i, w in enumerate(weights)})
        arrays.update({f"e{i}": e for i, e in enumerate(eligibility)})
        info = {
            **meta,
            "version": version,
            "created": time.time(),
            "layers": len(weights),
            "sha256": state_digest(weights, eligibility),
        }
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
        """``(meta, weights, eligibility)`` of a snapshot; ``ValueError`` if unreadable, if the
        arrays do not match the digest stored with them, or if it holds another version than
        its name says (a copy under another name had been served as the wrong weights, and
        trusted by repair). The model it belongs to is its artefact's sha256 (checked by the
        state), not its name: a state moved with its renamed model still loads."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                n = int(meta["layers"])
                weights = [np.array(z[f"w{i}"], dtype=np.float32) for i in range(n)]
                elig = [np.array(z[f"e{i}"], dtype=np.float32) for i in range(n)]
        except Exception as exc:  # noqa: BLE001 - zip, JSON, key and OS errors all mean unusable
            raise ValueError(f"{path}: unreadable snapshot ({type(exc).__name__}: {exc})") from exc
        stored = meta.get("sha256")
        if stored is not None and state_digest(weights, elig) != stored:
            raise ValueError(f"{path}: the arrays do not match the digest stored with them (damaged snapshot)")
        named = int(path.stem) if path.stem.isdigit() else None
        if meta.get("version") != named:
            raise ValueError(f"{path}: holds the state of version {meta.get('version')}, not the one its name says")
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
