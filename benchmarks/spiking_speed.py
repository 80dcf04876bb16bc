"""Speed of spiking FF training and testing in the paper's configuration (884 -> 200 LIF,
23 input + 20 rest steps), against a straightforward per-step PyTorch loop of the same model.

    python benchmarks/spiking_speed.py [--samples 6000] [--json out.json]

Rows: batched Hebbian training (batch 50), online Hebbian training (batch 1), all-label
testing (10 labels per image). "dense GFLOP/s" counts the multiply-adds a dense
implementation performs (input currents, Hebbian products) per second; "of peak" divides
by a plain torch matmul measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, matmul_peak, print_table, save_json, timed  # noqa: E402

from spikingjelly_ff.learning.engine import SpikingScorer, SpikingTrainer  # noqa: E402
from spikingjelly_ff.learning.reference import ReferenceLoop  # noqa: E402
from spikingjelly_ff.runs.build import build_model  # noqa: E402
from spikingjelly_ff.runs.config import load_config  # noqa: E402
from spikingjelly_ff.runs.data import load_split  # noqa: E402
from spikingjelly_ff.runs.samples import stream_epoch  # noqa: E402


def dense_flops_train(cfg, samples: int) -> float:
    """Multiply-adds x 2 of a dense per-step implementation: currents at every input step,
    plus dW = (M l)^T x at every learning step."""
    d, h = 884, cfg.model.layers[0]
    t = cfg.model.encoder.steps
    learn = t - (cfg.train.hebbian.learn_after + 1)
    return samples * 2.0 * d * h * (t + learn)


def dense_flops_test(cfg, images: int) -> float:
    return images * 10 * 2.0 * 884 * cfg.model.layers[0] * cfg.model.encoder.steps


def bench_training(row: str, samples: int, reference: bool):
    """Seconds to train ``row`` on ``samples`` MNIST images in one epoch of ``sjff train``'s
    loop (``stream_epoch``: mixed negatives, every row once, in order; ours with its input
    drawn a batch ahead, and batch-1 rows learnt in runs), or of the per-step reference loop."""
    cfg = load_config(f"paper/{row}")
    data = load_split("mnist", "train").take(samples)
    x, labels = data.to_tensors()
    bs = cfg.train.batch_size
    net = build_model(cfg.model, 784, 10, cfg.seed)
    gen = torch.Generator().manual_seed(0)
    ahead = rows = None
    if reference:
        loop = ReferenceLoop(net, cfg.train.hebbian)

        def step(xb, shown, y):
            return loop.train_presentation(net.encode(net.rates(xb, shown), gen), y)

    else:
        trainer = SpikingTrainer(net, cfg.train.hebbian)
        step, ahead, rows = trainer.train_batch, trainer.prefetch, trainer.train_rows
    batches = [(x[i : i + bs], labels[i : i + bs], None) for i in range(0, samples, bs)]
    sample_gen = torch.Generator().manual_seed(1)

    def run():
        bar = tqdm(batches, disable=True)
        stream_epoch(bar, step, cfg, 10, (28, 28), gen, sample_gen, None, ahead=ahead, rows=rows)

    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        seconds, _ = timed(run)
    finally:
        torch.set_num_threads(threads)
    if reference:
        loop.close()
    return cfg, seconds


def bench_testing(images: int, reference: bool):
    cfg = load_config("paper/hebbian-batched-symmetric")
    data = load_split("mnist", "test").take(images)
    x, _ = data.to_tensors()
    net = build_model(cfg.model, 784, 10, cfg.seed)
    if reference:
        gen = torch.Generator().manual_seed(0)
        with ReferenceLoop(net) as loop:

            def run():
                for i in range(0, images, 100):
                    xb = x[i : i + 100]
                    # the notebook's way: a fresh draw of spikes for every label
                    spikes = torch.stack([net.encode(net.rates(xb, torch.full((len(xb),), c)), gen) for c in range(10)])
                    loop.scores(spikes)

            seconds, _ = timed(run)
    else:
        scorer = SpikingScorer(net)
        seconds, _ = timed(lambda: [scorer.predict(x[i : i + 1000]) for i in range(0, images, 1000)])
    return cfg, seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=6000, help="training samples per measurement")
    ap.add_argument("--test-images", type=int, default=5000)
    ap.add_argument("--baseline-samples", type=int, default=600, help="samples for the per-step baseline")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    peak = matmul_peak()
    rows, out = [], {"machine": machine(), "matmul_peak_gflops": peak}
    for label, row, target in (
        ("batched Hebbian training (batch 50)", "hebbian-batched-symmetric", "epoch <= 20 s"),
        ("online Hebbian training (batch 1)", "hebbian-online-symmetric", "epoch <= 60 s"),
    ):
        bench_training(row, 200, reference=False)  # warm-up: numba's disk cache, the allocator
        cfg, sec = bench_training(row, args.samples, reference=False)
        _, base = bench_training(row, args.baseline_samples, reference=True)
        rate, base_rate = args.samples / sec, args.baseline_samples / base
        gflops = dense_flops_train(cfg, args.samples) / sec / 1e9
        rows.append(
            [
                label,
                f"{rate:,.0f} samples/s",
                f"{60000 / rate:.1f} s",
                f"{base_rate:,.0f} samples/s",
                f"{rate / base_rate:.1f}x",
                f"{gflops:.1f}",
                f"{100 * gflops / peak:.1f}%",
                target,
            ]
        )
        out[row] = {
            "samples_per_second": rate,
            "epoch_seconds": 60000 / rate,
            "baseline_samples_per_second": base_rate,
            "dense_gflops": gflops,
        }
    bench_testing(500, reference=False)  # warm-up
    cfg, sec = bench_testing(args.test_images, reference=False)
    _, base = bench_testing(max(100, args.baseline_samples // 6), reference=True)
    rate, base_rate = args.test_images / sec, max(100, args.baseline_samples // 6) / base
    gflops = dense_flops_test(cfg, args.test_images) / sec / 1e9
    rows.append(
        [
            "testing, all 10 labels per image",
            f"{rate:,.0f} images/s",
            f"{10000 / rate:.1f} s (10k)",
            f"{base_rate:,.0f} images/s",
            f"{rate / base_rate:.1f}x",
            f"{gflops:.1f}",
            f"{100 * gflops / peak:.1f}%",
            ">= 2,000 images/s",
        ]
    )
    out["testing"] = {"images_per_second": rate, "baseline_images_per_second": base_rate, "dense_gflops": gflops}
    print_table(
        f"Spiking FF speed, paper configuration (884 -> 200, T = 23 + 20) on {machine()}",
        ["workload", "engine", "per epoch", "per-step loop", "speed-up", "dense GFLOP/s", "of peak", "target"],
        rows,
        f"matmul peak measured in this run: {peak:.0f} GFLOP/s (2048^3 float32). The per-step loop is "
        "spikingjelly_ff.learning.reference.ReferenceLoop: SpikingJelly modules stepped one time step at a time with "
        "a HebbianLearner per layer; testing draws fresh spikes per label as the paper's notebook does.",
    )
    save_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
