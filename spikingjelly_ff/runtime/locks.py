"""One writer per folder: an exclusive ``flock`` on ``DIR/.lock``, held by an open file
descriptor and gone with the process (torch-free: the server takes it on its state folders)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["LOCK_NAME", "try_lock"]

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
