"""Where the commands write: finished work is not replaced unless asked (``--overwrite``), a
command never writes into the model folder it reads, and one process at a time writes a run
folder (an exclusive ``flock`` on ``OUT/.lock``, released when the process ends)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spikingjelly_ff.runs.checkpoint import CheckpointError
from spikingjelly_ff.runs.config import ConfigError

__all__ = ["LOCK_NAME", "check_output_file", "check_run_dir", "finished_run", "hold_run_dir", "try_lock"]

LOCK_NAME = ".lock"
# what a run folder holds once a run has written to it (resume.pt: a stopped run)
_RUN_FILES = ("model", "metrics.json", "resume.pt")


def try_lock(directory: str | os.PathLike) -> int | None:
    """The exclusive ``flock`` of ``directory/.lock`` as an open file descriptor (held until
    closed), or ``None`` where another process holds it."""
    import fcntl

    fd = os.open(Path(directory) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def check_run_dir(out: str | os.PathLike) -> Path:
    """``out`` as a run folder: refused where it is empty or names something other than a folder."""
    if str(out).strip() == "":
        raise ConfigError("--out is empty: name the folder to write the run to")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is a file, not a folder")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--out {path}: {parent} is a file, not a folder")
    return path


def finished_run(out: Path) -> bool:
    """Whether ``out`` holds a run that wrote its model."""
    return (out / "model" / "config.json").is_file()


@contextmanager
def hold_run_dir(out: Path, *, overwrite: bool = False, refuse_finished: bool = True) -> Iterator[None]:
    """Make ``out`` and hold its lock while the body writes it. A folder that holds a finished
    run is refused (``refuse_finished``), or emptied of it first where ``overwrite``: its model,
    metrics and resume state, so that an interrupted overwrite leaves no mix of two runs."""
    out.mkdir(parents=True, exist_ok=True)
    fd = try_lock(out)
    if fd is None:
        raise CheckpointError(f"{out} is being written by another process (sjff train or readout); wait for it or "
                              "choose another --out")  # fmt: skip
    try:
        if overwrite:
            for name in _RUN_FILES:
                path = out / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        elif refuse_finished and finished_run(out):
            raise CheckpointError(
                f"{out} holds a finished run (its model is in {out / 'model'}): choose another --out, or pass "
                "--overwrite to replace it"
            )
        yield
    finally:
        os.close(fd)


def check_output_file(path: str | os.PathLike, overwrite: bool, source: str | os.PathLike) -> Path:
    """``path`` as a file to write from the model folder ``source``: never inside ``source``,
    never a folder, and an existing file only where ``overwrite``."""
    if str(path).strip() == "":
        raise ConfigError("--out is empty: name the file to write")
    target, src = Path(path).resolve(), Path(source).resolve()
    if target == src or src in target.parents:
        raise ConfigError(f"--out {path} is inside the model folder {source}, which it would change: write elsewhere")
    if target.is_dir():
        raise ConfigError(f"--out {path} is a folder; name the file to write")
    if target.exists() and not overwrite:
        raise ConfigError(f"--out {path} exists: choose another path, or pass --overwrite to replace it")
    return Path(path)
