"""Data-parallel training throughput: 1 process against 2 processes (gloo, one torch thread each).

    python benchmarks/distributed_speed.py [--repeats 2] [--limit N] [--cases NAME ...] [--json out.json]

Every case trains one epoch with ``train.draws: per-sample`` on both sides, so 1 and 2
processes do the same work and train the same model. samples/s = training samples / the
epoch's training seconds on rank 0 (``metrics.json``'s ``train_seconds``: process start-up,
data loading and evaluation excluded), the median over the repeats. Bytes all-reduced per
batch are measured: every floating-point tensor handed to ``World.all_sum`` during training
(the learners' Hebbian deltas and local-loss gradients, not the int64 counts or the gathered
eval predictions), summed over the epoch and divided by its number of batches. "in
all-reduce" is the share of rank 0's epoch spent inside those all-reduces: the transfer plus
the wait for the other rank; "all-reduces alone" times one batch's all-reduces between 2
idle ranks (median of 50), the collectives' own cost on this machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, save_json  # noqa: E402

from spikingjelly_ff.runs.config import RunConfig, load_config  # noqa: E402
from spikingjelly_ff.runs.distributed import World, close_world, init_world  # noqa: E402
from spikingjelly_ff.runs.launch import launch  # noqa: E402
from spikingjelly_ff.runs.train import train  # noqa: E402

COMMON = ["train.epochs=1", "train.draws=per-sample", "threads=1", "eval.limit=100"]

# name -> (config, overrides, default training samples). The analog cases run the whole of
# MNIST: 6,000 samples take them well under a second, too short to time on a shared machine.
CASES: dict[str, tuple[str, list[str], int]] = {
    "paper batched Hebbian 884-200": ("paper/hebbian-batched-symmetric", [], 6000),
    "spiking Hebbian 884-200-100": (
        "paper/hebbian-batched-sigmoid",
        ["model.layers=[200, 100]", "train.negatives=paired"],
        6000,
    ),
    "analog local loss 884-128-64": ("paper/analog-symmetric", ["model.layers=[128, 64]"], 60000),
    "analog Hebbian 884-128-64": (
        "paper/analog-symmetric",
        ["model.layers=[128, 64]", "train.learner=hebbian", "train.hebbian.eta=0.05", "train.negatives=paired"],
        60000,
    ),
}


@dataclass(frozen=True)
class CountingWorld(World):
    """A :class:`World` that records the bytes of every floating-point tensor it all-reduces
    and the seconds spent in those all-reduces (the transfer plus the wait for the other rank)."""

    reduced: list[int] = field(default_factory=list, compare=False)
    seconds: list[float] = field(default_factory=list, compare=False)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return super().all_sum(t)
        t0 = time.perf_counter()
        out = super().all_sum(t)
        self.seconds.append(time.perf_counter() - t0)
        self.reduced.append(t.numel() * t.element_size())
        return out


def run_once(cfg: RunConfig, out_dir: str, world: CountingWorld) -> dict:
    """Train ``cfg`` as this rank of ``world``; rank 0's epoch time and the bytes it reduced."""
    metrics = train(cfg, out_dir, log=lambda s: None, progress=False, world=world)
    seconds = metrics["epochs"][0]["train_seconds"]
    return {"train_seconds": seconds, "reduced": list(world.reduced), "reduce_seconds": sum(world.seconds)}


@record
def _rank(cfg: RunConfig, out_dir: str) -> dict:
    """One rank of an N-process run (spawned by :func:`launch`, as ``sjff train --nproc N``)."""
    joined = init_world(torch.device("cpu"), "gloo", 300.0)
    try:
        return run_once(cfg, out_dir, CountingWorld(joined.rank, joined.size, joined.device))
    finally:
        close_world()


@record
def _reduce_only(sizes: list[int], iters: int) -> float:
    """Median seconds of one batch's all-reduces (float64 buffers of ``sizes`` bytes) with no
    training around them: the collectives' own cost between 2 ranks of this machine."""
    joined = init_world(torch.device("cpu"), "gloo", 300.0)
    try:
        buffers = [torch.ones(n // 8, dtype=torch.float64) for n in sizes]
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            for b in buffers:
                joined.all_sum(b)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        close_world()


def bench(name: str, limit: int | None, repeats: int) -> dict:
    base, sets, default_limit = CASES[name]
    samples = limit or default_limit
    cfg = load_config(base, [*COMMON, *sets, f"train.limit={samples}"])
    batches = -(-samples // cfg.train.batch_size)
    one, two, reduced, waits = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):  # interleaved, so a change of load hits both sides alike
            # Both sides in fresh processes through the launcher, as `sjff train --nproc 1|2`.
            one.append(samples / launch(1, _rank, cfg, f"{tmp}/one{r}")[0]["train_seconds"])
            rank0 = launch(2, _rank, cfg, f"{tmp}/two{r}")[0]
            two.append(samples / rank0["train_seconds"])
            reduced = rank0["reduced"]
            waits.append(rank0["reduce_seconds"] / rank0["train_seconds"])
    one_s, two_s = statistics.median(one), statistics.median(two)
    per_batch = reduced[: round(len(reduced) / batches)]  # the same sizes every batch
    alone = launch(2, _reduce_only, per_batch, 50)[0]
    return {
        "case": name,
        "config": base,
        "overrides": sets,
        "samples": samples,
        "batch_size": cfg.train.batch_size,
        "samples_per_second_1": one_s,
        "samples_per_second_2": two_s,
        "runs_1": one,
        "runs_2": two,
        "speedup": two_s / one_s,
        "efficiency": two_s / one_s / 2,
        "all_reduces_per_batch": len(reduced) / batches,
        "bytes_per_batch": sum(reduced) / batches,
        "compute_ms_per_batch_1": 1000 * cfg.train.batch_size / one_s,
        "ms_per_batch_2": 1000 * cfg.train.batch_size / two_s,
        "all_reduce_share_2": statistics.median(waits),
        "reduce_only_ms_per_batch": 1000 * alone,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="training samples for every case (default: per case)")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES), metavar="NAME")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    load_before = os.getloadavg()
    results = [bench(c, args.limit, args.repeats) for c in args.cases]
    load_after = os.getloadavg()
    rows = [
        [
            r["case"],
            f"{r['samples']:,}",
            f"{r['samples_per_second_1']:,.0f}",
            f"{r['samples_per_second_2']:,.0f}",
            f"{r['speedup']:.2f}x",
            f"{100 * r['efficiency']:.0f}%",
            f"{r['all_reduces_per_batch']:g}",
            f"{r['bytes_per_batch'] / 1e6:.3f} MB",
            f"{r['compute_ms_per_batch_1']:.1f} ms",
            f"{r['ms_per_batch_2']:.1f} ms",
            f"{100 * r['all_reduce_share_2']:.0f}%",
            f"{r['reduce_only_ms_per_batch']:.1f} ms",
        ]
        for r in results
    ]
    print_table(
        f"Data-parallel training, gloo, 1 torch thread per process, {os.cpu_count()} cores, torch {torch.__version__}",
        [
            "case",
            "samples",
            "1 proc samples/s",
            "2 procs samples/s",
            "speed-up",
            "efficiency",
            "all-reduces/batch",
            "all-reduced/batch",
            "1 proc ms/batch",
            "2 procs ms/batch",
            "2 procs in all-reduce",
            "all-reduces alone/batch",
        ],
        rows,
        f"Median of {args.repeats} runs each, 1 epoch, train.draws=per-sample, batch 50. "
        f"Load average (1/5/15 min) before: {'/'.join(f'{x:.2f}' for x in load_before)}, "
        f"after: {'/'.join(f'{x:.2f}' for x in load_after)}.",
    )
    save_json(args.json, {"load_before": load_before, "load_after": load_after, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
