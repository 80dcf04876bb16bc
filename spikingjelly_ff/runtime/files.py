"""Files written whole or not at all, and one writer per folder (torch-free: the runtime,
the exports, the run folders and the server's state folders use them)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["LOCK_NAME", "try_lock", "write_atomic"]

LOCK_NAME = ".lock"


def try_lock(directory: str | os.PathLike) -> int | None:
    """The exclusive ``flock`` of ``directory/.lock`` as an open file descriptor (held until
    closed), or ``None`` where another process holds it. An ``OSError`` where the file system
    has no locks (some network and FUSE mounts)."""
    import fcntl

    fd = os.open(Path(directory) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None], tmp: Path | None = None) -> Path:
    """Make ``path`` the file ``write(tmp)`` writes (``tmp``: ``path.part`` by default): the
    file is synced, renamed over ``path`` and the rename synced, so a crash leaves the old file
    or the new one; a failed write leaves no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part") if tmp is None else tmp
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:  # the rename itself survives a power loss once the folder is synced
        os.fsync(fd)
    finally:
        os.close(fd)
    return path
