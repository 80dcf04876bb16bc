"""Data parallelism over ``torch.distributed``: the process group, the shards and the
collectives the learners are handed.

Layer-local learning has no backward pass across layers, so DDP's autograd hooks do not
apply: the Hebbian deltas (at every learning step) and the local-loss gradients (once per
batch) are all-reduced explicitly, through the ``reduce`` callables of :class:`Reducer`. The
learners and the simulation take those callables and never import this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["INIT_TIMEOUT_S", "Reducer", "World", "close_world", "env_world_size", "init_world", "pick_backend"]

#: Seconds the ranks wait for each other to join (process start-up, imports, rendezvous): kept
#: apart from the collectives' timeout, so a slow start never passes for a hung collective.
INIT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` ranks (the default: one process, no collectives).

    ``device`` is where the backend's collectives take tensors (cuda for NCCL); ``group`` the
    process group they run in (``None``: the default group)."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    group: dist.ProcessGroup | None = None

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files, logs and progress bars."""
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """Rows ``[lo, hi)`` of ``n`` this rank handles: contiguous, sizes differing by at most 1."""
        base, extra = divmod(n, self.size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (self.rank < extra)

    def all_sum(self, t: Tensor) -> Tensor:
        """Sum ``t`` over the ranks, in place (a no-op for one process); returns ``t``."""
        if self.size == 1:
            return t
        if t.device == self.device and t.is_contiguous():
            dist.all_reduce(t, group=self.group)
            return t
        buf = t.to(self.device).contiguous()
        dist.all_reduce(buf, group=self.group)
        t.copy_(buf)
        return t


class Reducer:
    """The learners' ``reduce`` callables for one global batch of ``rows`` rows (set by the
    training loop before each step; every rank holds a shard of them)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.rows = 0

    def delta(self, total: Tensor, n: int) -> Tensor:
        """Hebbian delta: this rank's float64 sum ``[D, H]`` over its ``n`` rows -> the mean over
        all rows (float64). Summing float64 partials keeps the result independent of the split."""
        return self.world.all_sum(total.contiguous()) / self.rows

    def grads(self, grads: list[Tensor], n: int) -> None:
        """Local-loss gradients: means over this rank's ``n`` rows -> means over all rows, in
        place, in one all-reduce of the concatenated gradients. A rank with no rows (the last
        batch of an epoch may have fewer rows than there are ranks) adds exact zeros: its
        "mean" over nothing may be NaN, and NaN * 0 would spread to every rank."""
        if self.world.size == 1:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        flat = flat * (n / self.rows) if n else torch.zeros_like(flat)
        self.world.all_sum(flat)
        start = 0
        for g in grads:
            g.copy_(flat[start : start + g.numel()].view_as(g))
            start += g.numel()


def env_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (or the elastic launcher); 1 outside one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def pick_backend(name: str, device: torch.device) -> str:
    """``auto`` -> NCCL for CUDA devices, gloo otherwise."""
    if name == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if name not in ("gloo", "nccl"):
        raise ValueError(f"unknown distributed backend {name!r}; choose auto, gloo or nccl")
    if name == "nccl" and device.type != "cuda":
        raise ValueError("the nccl backend needs device=cuda; use gloo on the CPU")
    return name


def init_world(
    device: torch.device, backend: str = "auto", timeout_s: float = 300.0, init_timeout_s: float = INIT_TIMEOUT_S
) -> World:
    """Join the process group that torchrun (or :func:`launch.launch`) describes in the
    environment, waiting up to ``init_timeout_s`` for every rank to join. A collective of the
    returned world that waits longer than ``timeout_s`` (a rank died or hangs) raises a
    "Timed out" error instead of blocking forever."""
    name = pick_backend(backend, device)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group(name, timeout=timedelta(seconds=init_timeout_s))
    # All ranks, one group: the same members as the default group, with the short timeout.
    group = dist.new_group(timeout=timedelta(seconds=timeout_s))
    return World(dist.get_rank(), dist.get_world_size(), device if name == "nccl" else torch.device("cpu"), group)


def close_world() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
