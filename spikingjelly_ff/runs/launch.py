"""Starting data-parallel training: ``N`` local workers through torch.distributed's elastic
launcher (``sjff train --nproc N``), or joining the group torchrun set up (``WORLD_SIZE`` in
the environment). Rank 0 writes the model and metrics; a rank that fails stops every rank.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from spikingjelly_ff.runs.config import RunConfig
from spikingjelly_ff.runs.distributed import INIT_TIMEOUT_S, close_world, env_world_size, init_world
from spikingjelly_ff.runs.train import check_parallel, resolve_device, train

__all__ = ["DistributedError", "launch", "train_parallel", "train_worker"]


class DistributedError(RuntimeError):
    """A rank of a data-parallel run failed (its error is in the message)."""


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
    try:
        return elastic_launch(config, entry)(*args)
    except ChildFailedError as exc:
        # Every failed rank, earliest first: the root cause and the ranks it took down (a rank
        # waiting on a dead peer may report "connection closed" before the peer's own error).
        lines = []
        for rank, failure in sorted(exc.failures.items(), key=lambda item: item[1].timestamp):
            message = failure.message
            if isinstance(message, dict):  # the error file the worker's @record wrote
                message = message.get("message", message)
            lines.append(f"rank {rank} of {nproc} failed: {message}")
        raise DistributedError("; ".join(lines)) from exc


@record
def train_worker(cfg: RunConfig, out_dir: str, progress: bool, backend: str, timeout_s: float) -> dict | None:
    """One rank of a data-parallel run (in a process torchrun or :func:`launch` started):
    join the group, train, leave. Returns rank 0's final metrics (``None`` elsewhere)."""
    world = init_world(resolve_device(cfg.device), backend, timeout_s)
    try:
        metrics = train(cfg, out_dir, progress=progress, world=world)
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
) -> dict | None:
    """Train with ``nproc`` local processes, or as one rank of the torchrun group in the
    environment; ``train.draws`` becomes ``per-sample`` (logged). ``timeout_s``: how long a
    collective waits for the other ranks (start-up has its own, ``INIT_TIMEOUT_S``). Returns
    the final metrics on rank 0 (``None`` on other torchrun ranks)."""
    under_torchrun = env_world_size() > 1
    if under_torchrun and nproc > 1:
        raise ValueError("--nproc starts local workers itself; under torchrun leave it out")
    size = env_world_size() if under_torchrun else nproc
    if size > 1 and cfg.train.draws != "per-sample" and cfg.train.batch_size > 1:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, draws="per-sample"))
        log(f"{size} processes: train.draws=per-sample (random draws tied to the global sample index)")
    check_parallel(cfg.validate(), size)
    if under_torchrun:
        return train_worker(cfg, str(out_dir), progress, backend, timeout_s)
    return launch(nproc, train_worker, cfg, str(out_dir), progress, backend, timeout_s)[0]
