"""Where the commands write: finished work is not replaced unless asked (``--overwrite``), a
command never writes into the model folder it reads, and one process at a time writes a run
folder (an exclusive ``flock`` on ``OUT/.lock``, released when the process ends)."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spikingjelly_ff.runs.checkpoint import CheckpointError
from spikingjelly_ff.runs.config import ConfigError
from spikingjelly_ff.runs.resume import NAME as RESUME_NAME
from spikingjelly_ff.runs.resume import TMP_NAME as RESUME_TMP
from spikingjelly_ff.runtime.files import try_lock

__all__ = [
    "check_not_finished",
    "check_output_file",
    "check_run_dir",
    "clear_run",
    "finished_run",
    "hold_run_dir",
    "stopped_run",
]

# what a run folder holds once a run has written to it (resume.pt: a stopped run; .tmp: a
# write cut short)
_RUN_FILES = ("model", "metrics.json", "metrics.json.tmp", RESUME_NAME, RESUME_TMP)


def check_run_dir(out: str | os.PathLike) -> Path:
    """``out`` as a run folder: refused where it is empty or names something other than a folder."""
    if str(out).strip() == "":
        raise ConfigError("--out is empty: name the folder to write the run to")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is a file, not a folder")
    _check_parents(path)
    return path


def _check_parents(path: Path) -> None:
    """ConfigError where a folder above ``path`` is a file (nothing can be made below it)."""
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--out {path}: {parent} is a file, not a folder")


def finished_run(out: Path) -> bool:
    """Whether ``out`` holds a run that wrote its model."""
    return (out / "model" / "config.json").is_file()


def check_not_finished(out: Path) -> None:
    """CheckpointError where ``out`` holds a finished run (``--overwrite`` replaces it)."""
    if finished_run(out):
        raise CheckpointError(
            f"{out} holds a finished run (its model is in {out / 'model'}): choose another --out, or pass "
            "--overwrite to replace it"
        )


def stopped_run(out: Path) -> bool:
    """Whether ``out`` holds the resume state of a stopped run."""
    return (out / RESUME_NAME).is_file()


def clear_run(out: Path) -> None:
    """Remove the run ``out`` holds (model, metrics, resume state): what ``--overwrite`` does,
    once the new run has been checked and just before it first writes."""
    for name in _RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


@contextmanager
def hold_run_dir(out: Path, *, refuse_finished: bool = True) -> Iterator[None]:
    """Make ``out`` and hold its lock while the body writes it; a folder that holds a finished
    run is refused where ``refuse_finished``. Where the file system has no locks, the body
    runs without one (as before there were locks), with a warning."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        fd = try_lock(out)
    except OSError as exc:
        warnings.warn(f"{out}: cannot lock the run folder ({exc}); one process at a time must write it", stacklevel=3)
        fd = -1
    if fd is None:
        raise CheckpointError(f"{out} is being written by another process (sjff train or readout); wait for it or "
                              "choose another --out")  # fmt: skip
    try:
        if refuse_finished:
            check_not_finished(out)
        yield
    finally:
        if fd >= 0:
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
    _check_parents(Path(path))
    if target.exists() and not overwrite:
        raise ConfigError(f"--out {path} exists: choose another path, or pass --overwrite to replace it")
    return Path(path)
