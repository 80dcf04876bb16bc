"""Starting data-parallel training: ``N`` local workers through torch.distributed's elastic
launcher (``sjff train --nproc N``), or joining the group torchrun set up (``WORLD_SIZE`` in
the environment). Rank 0 writes the model and metrics; a rank that fails stops every rank.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from spikingjelly_ff.runs.config import RunConfig
from spikingjelly_ff.runs.distributed import INIT_TIMEOUT_S, close_world, env_world_size, init_world
from spikingjelly_ff.runs.outputs import check_not_finished
from spikingjelly_ff.runs.train import check_parallel, resolve_device, train

__all__ = ["DistributedError", "launch", "train_parallel", "train_worker"]


class DistributedError(RuntimeError):
    """A rank of a data-parallel run failed (its error is in the message)."""


def _reporting(entry: Callable[..., Any], folder: str, *args: Any) -> Any:
    """Run ``entry(*args)`` as a worker; its error goes to ``<folder>/rank-<r>.err`` before it
    propagates. The elastic agent stops the other ranks as soon as it sees one fail, and the rank
    that failed first (the root cause) may be killed while the agent still records the ranks it
    took down ("connection closed by peer"): these files, written before the process exits,
    keep every rank's error and its order."""
    try:
        return entry(*args)
    except BaseException as exc:
        path = Path(folder) / f"rank-{os.environ.get('RANK', '?')}.err"
        with open(path, "w") as fh:
            fh.write("".join(traceback.format_exception_only(type(exc), exc)).strip())
            fh.flush()
            os.fsync(fh.fileno())
        raise


def _rank_errors(folder: str) -> list[tuple[int, str, str]]:
    """``(mtime_ns, rank, error)`` of every rank that wrote one, earliest first."""
    found = []
    for path in Path(folder).glob("rank-*.err"):
        found.append((path.stat().st_mtime_ns, path.stem.split("-", 1)[1], path.read_text()))
    return sorted(found)


def launch(nproc: int, entry: Callable[..., Any], *args: Any, timeout_s: float = INIT_TIMEOUT_S) -> dict[int, Any]:
    """Run ``entry(*args)`` in ``nproc`` local processes (ranks 0..nproc-1, spawned) and return
    ``{rank: result}``; ``timeout_s`` bounds the rendezvous (start-up), not the collectives.
    When one fails, the others are stopped and :class:`DistributedError` names every failed
    rank and its error."""
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"sjff-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone
        rdzv_timeout=int(timeout_s),
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    with tempfile.TemporaryDirectory(prefix="sjff-ranks-") as folder:
        try:
            return elastic_launch(config, _reporting)(entry, folder, *args)
        except ChildFailedError as exc:
            # Every failed rank, earliest first: the root cause, then the ranks it took down (a
            # rank waiting on a dead peer reports "connection closed" after the peer's own error).
            lines = [f"rank {rank} of {nproc} failed: {error}" for _, rank, error in _rank_errors(folder)]
            if not lines:  # a rank died without raising (killed, crashed): what the agent saw
                for rank, failure in sorted(exc.failures.items(), key=lambda item: item[1].timestamp):
                    message = failure.message
                    if isinstance(message, dict):  # the error file the worker's @record wrote
                        message = message.get("message", message)
                    lines.append(f"rank {rank} of {nproc} failed: {message}")
            raise DistributedError("; ".join(lines)) from exc


@record
def train_worker(
    cfg: RunConfig,
    out_dir: str,
    progress: bool,
    backend: str,
    timeout_s: float,
    resume: bool | None = False,
    overwrite: bool = False,
) -> dict | None:
    """One rank of a data-parallel run (in a process torchrun or :func:`launch` started):
    join the group, train, leave. Returns rank 0's final metrics (``None`` elsewhere)."""
    world = init_world(resolve_device(cfg.device), backend, timeout_s)
    try:
        metrics = train(cfg, out_dir, progress=progress, world=world, resume=resume, overwrite=overwrite)
    finally:
        close_world()
    return metrics["final"] if world.main else None


def train_parallel(
    cfg: RunConfig,
    out_dir: str | Path,
    nproc: int = 1,
    backend: str = "auto",
    timeout_s: float = 300.0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    resume: bool | None = False,
    overwrite: bool = False,
) -> dict | None:
    """Train with ``nproc`` local processes, or as one rank of the torchrun group in the
    environment; ``train.draws`` becomes ``per-sample`` (logged). ``timeout_s``: how long a
    collective waits for the other ranks (start-up has its own, ``INIT_TIMEOUT_S``). Returns
    the final metrics on rank 0 (``None`` on other torchrun ranks). ``resume``, ``overwrite``: as
    :func:`train`'s."""
    under_torchrun = env_world_size() > 1
    if under_torchrun and nproc > 1:
        raise ValueError("--nproc starts local workers itself; under torchrun leave it out")
    size = env_world_size() if under_torchrun else nproc
    if size > 1 and cfg.train.draws != "per-sample" and cfg.train.batch_size > 1:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, draws="per-sample"))
        log(f"{size} processes: train.draws=per-sample (random draws tied to the global sample index)")
    check_parallel(cfg.validate(), size)
    if resume is False and not overwrite:  # before any worker starts
        check_not_finished(Path(out_dir))
    if under_torchrun:
        return train_worker(cfg, str(out_dir), progress, backend, timeout_s, resume, overwrite)
    return launch(nproc, train_worker, cfg, str(out_dir), progress, backend, timeout_s, resume, overwrite)[0]
