"""All-label testing speed on the GPU by layer width, per step and in one launch per layer.

Three paths of ``SpikingScorer``: one launch per step, one launch per label and layer
(``sjff_present``), and the path the scorer takes as shipped.

    python benchmarks/gpu_scoring.py [--images 10000] [--widths 200 300 ...] [--rounds 2]
                                     [--no-carry] [--json F]

Needs a CUDA device and CuPy. The paper's configuration (``paper/hebbian-batched-symmetric``,
carried membranes: one launch per label and layer; ``--no-carry``: every presentation from
rest, all labels' samples in one launch per layer) with one hidden layer of each width, on
random sparse images (a fifth of the pixels lit), 2,000 images per call. Columns, images/s
(the best of ``--rounds`` rounds, the order of the paths reversed every other round):

* ``per step``: ``SJFF_PRESENT=0``, cuBLAS for the currents and our neuron kernel per step;
* ``one launch``: ``sjff_present`` wherever the launch fits the shared memory, the width rule
  (``cupy_present.INFERENCE_NEURONS_PER_BLOCK``) lifted;
* ``shipped``: the scorer as it is, which leaves layers of more than that many neurons per
  block (more than twice the multiprocessors) to the per-step path.

The ``kernel`` column says, per path, whether the scorer took ``sjff_present`` (``y``) or the
per-step path (``-``): a launch that does not fit the shared memory leaves ``one launch`` per
step, and the row is marked.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, save_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikingjelly_ff.kernels import cupy_present  # noqa: E402
from spikingjelly_ff.learning.engine import SpikingScorer  # noqa: E402
from spikingjelly_ff.runs.build import build_model  # noqa: E402
from spikingjelly_ff.runs.config import load_config  # noqa: E402

SHIPPED_RULE = cupy_present.INFERENCE_NEURONS_PER_BLOCK
# column: (SJFF_PRESENT, neurons per block an inference launch may hold)
PATHS = {"per step": ("0", SHIPPED_RULE), "one launch": ("1", 10**6), "shipped": ("1", SHIPPED_RULE)}


def images_per_second(net, x: torch.Tensor, present: str, rule: int, chunk: int = 2000) -> tuple[float, bool]:
    """(images/s of all-label scoring of ``x``, whether the kernel path was taken)."""
    os.environ["SJFF_PRESENT"] = present
    cupy_present.INFERENCE_NEURONS_PER_BLOCK = rule
    try:
        scorer = SpikingScorer(net, device="cuda")
        weights = [layer.weight.data for layer in net.layers]
        kernel = scorer._present_rows(x[:chunk], weights, net.num_classes, net.encoder.carry_membrane) > 0
        scorer.predict(x[:100])  # compiles the module on first use
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(0, len(x), chunk):
            scorer.predict(x[i : i + chunk])
        torch.cuda.synchronize()
        return len(x) / (time.perf_counter() - t), kernel
    finally:
        cupy_present.INFERENCE_NEURONS_PER_BLOCK = SHIPPED_RULE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--widths", type=int, nargs="+", default=[200, 264, 300, 400, 600, 1000, 2000])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-carry", action="store_true", help="presentations from rest (one launch for all labels)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.images < 1 or args.rounds < 1 or min(args.widths) < 1:
        ap.error("--images, --rounds and every width must be at least 1")
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (args.images, 784)
    x = torch.rand(shape, generator=g, device="cuda") * (torch.rand(shape, generator=g, device="cuda") < 0.2)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    out = {"gpu": torch.cuda.get_device_name(), "multiprocessors": sms, "carry": not args.no_carry, "widths": {}}
    rows = []
    for width in args.widths:
        carry = f"model.encoder.carry_membrane={str(not args.no_carry).lower()}"
        cfg = load_config("paper/hebbian-batched-symmetric", [f"model.layers=[{width}]", carry])
        net = build_model(cfg.model, 784, 10, 0, backend="cupy").cuda()
        rates: dict[str, list[float]] = {name: [] for name in PATHS}
        took: dict[str, bool] = {}
        for r in range(args.rounds):
            for name in PATHS if r % 2 == 0 else reversed(PATHS):
                rate, took[name] = images_per_second(net, x, *PATHS[name])
                rates[name].append(rate)
        best = {name: max(v) for name, v in rates.items()}
        per_block = cupy_present.present_blocks(width, sms)[0]
        out["widths"][width] = {"neurons_per_block": per_block, **rates, "kernel": took}
        ratio = best["one launch"] / best["per step"]
        ran = "/".join("y" if took[n] else "-" for n in PATHS)
        mark = "" if took["one launch"] else " (the launch did not fit: per step)"
        rows.append([f"884->{width}", per_block, *(f"{best[n]:,.0f}" for n in PATHS), ran, f"{ratio:.2f}{mark}"])
    print_table(
        f"All-label testing on {torch.cuda.get_device_name()} ({sms} multiprocessors), images/s"
        + (", presentations from rest" if args.no_carry else ", membranes carried"),
        ["layer", "neurons per block", *PATHS, "kernel", "one launch / per step"],
        rows,
        note=f"the scorer takes one launch up to {SHIPPED_RULE} neurons per block",
    )
    save_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
