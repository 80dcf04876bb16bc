"""Analog FF training throughput and the share of the machine's matmul peak it reaches.

    python benchmarks/train_speed.py [--samples 12000] [--configs paper/analog-sigmoid ...]

FLOPs per training sample: a forward pass (2 * D * H per layer) plus the backward pass of
the local losses (about twice the forward), counted for every sample shown (negatives
included); "of peak" divides the achieved rate by a plain torch matmul measured in the same
run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, matmul_peak, print_table, save_json, timed  # noqa: E402

from spikingjelly_ff.runs.build import build_model  # noqa: E402
from spikingjelly_ff.runs.config import load_config  # noqa: E402
from spikingjelly_ff.runs.data import load_split  # noqa: E402
from spikingjelly_ff.runs.samples import make_samples  # noqa: E402
from spikingjelly_ff.runs.steps import AnalogStep  # noqa: E402

DEFAULT = ["paper/analog-sigmoid", "paper/analog-symmetric", "analog-deep"]


def flops_per_shown_sample(net) -> float:
    dims = [net.input_width, *net.widths]
    return 3 * sum(2.0 * a * b for a, b in zip(dims, dims[1:]))


def bench(name: str, samples: int) -> dict:
    cfg = load_config(name)
    data = load_split("mnist", "train").take(samples)
    x, labels = data.to_tensors()
    net = build_model(cfg.model, 784, 10, cfg.seed)
    step = AnalogStep(net, cfg, samples // cfg.train.batch_size)
    gen = torch.Generator().manual_seed(0)
    shown_total = 0

    def run():
        nonlocal shown_total
        for i in range(0, samples, cfg.train.batch_size):
            rows, shown, y = make_samples(
                labels[i : i + cfg.train.batch_size], cfg.train.negatives.replace("hard", "paired"), 10, gen
            )
            step(net.embedding(x[i : i + cfg.train.batch_size][rows], shown), y)
            shown_total += len(y)

    run_seconds, _ = timed(run)
    flops = flops_per_shown_sample(net) * shown_total
    return {
        "config": name,
        "samples_per_second": samples / run_seconds,
        "epoch_seconds": 60000 * run_seconds / samples,
        "gflops": flops / run_seconds / 1e9,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=12000)
    ap.add_argument("--configs", nargs="*", default=DEFAULT)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    peak = matmul_peak()
    results = [bench(c, args.samples) for c in args.configs]
    rows = [
        [
            r["config"],
            f"{r['samples_per_second']:,.0f}",
            f"{r['epoch_seconds']:.1f} s",
            f"{r['gflops']:.1f}",
            f"{100 * r['gflops'] / peak:.1f}%",
        ]
        for r in results
    ]
    print_table(
        f"Analog FF training on {machine()}",
        ["config", "samples/s", "epoch (60k)", "GFLOP/s", "of matmul peak"],
        rows,
        f"matmul peak measured in this run: {peak:.0f} GFLOP/s (2048^3 float32).",
    )
    save_json(args.json, {"machine": machine(), "matmul_peak_gflops": peak, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
