"""GPU throughput of spiking FF training and testing: torch path vs our CuPy kernels.

    python benchmarks/gpu_speed.py [--samples 60000] [--json out.json]

Needs a CUDA device and CuPy. Rows: online (batch 1) and batched Hebbian training (batch 50
and 500) and all-label testing, for the paper's configuration and a 2000-neuron layer (on an
H200 its learning fits one launch at batch 50, not at 500). Three paths: torch,
``cupy/step`` (our neuron kernel, one launch per time step: ``SJFF_PRESENT=0``) and ``cupy``
(the whole presentation in one launch, ``ff_present.cu``, where the layer fits).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, save_json  # noqa: E402

from spikingjelly_ff.learning.engine import SpikingScorer, SpikingTrainer  # noqa: E402
from spikingjelly_ff.runs.build import build_model  # noqa: E402
from spikingjelly_ff.runs.config import load_config  # noqa: E402


def sync_time(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


PATHS = {"torch": ("torch", "1"), "cupy/step": ("cupy", "0"), "cupy": ("cupy", "1")}


def bench(width: int, batch: int, path: str, samples: int, images: int) -> tuple[float, float]:
    backend, present = PATHS[path]
    os.environ["SJFF_PRESENT"] = present
    row = "online" if batch == 1 else "batched"
    cfg = load_config(f"paper/hebbian-{row}-symmetric", [f"model.layers=[{width}]", f"train.batch_size={batch}"])
    net = build_model(cfg.model, 784, 10, 0, backend=backend).cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = max(samples, images)
    x = torch.rand(rows, 784, generator=g, device="cuda") * (torch.rand(rows, 784, generator=g, device="cuda") < 0.2)
    labels = torch.randint(0, 10, (rows,), generator=g, device="cuda")
    trainer = SpikingTrainer(net, cfg.train.hebbian, device="cuda")
    y = (torch.rand(rows, generator=g, device="cuda") < 0.5).float()
    trainer.train_batch(x[:batch], labels[:batch], y[:batch])  # warm-up (kernel compile)
    train = sync_time(
        lambda: [
            trainer.train_batch(x[i : i + batch], labels[i : i + batch], y[i : i + batch])
            for i in range(0, samples, batch)
        ]
    )
    scorer = SpikingScorer(net, device="cuda")
    scorer.predict(x[:100])
    test = sync_time(lambda: [scorer.predict(x[i : i + 2000]) for i in range(0, images, 2000)])
    return samples / train, images / test


def launch_cost(backend: str, calls: int = 2000) -> float:
    """Microseconds per one-step neuron call (batch 50, 200 neurons), as the learning window
    makes them: the per-launch cost that bounds GPU training."""
    from spikingjelly_ff import kernels
    from spikingjelly_ff.functional.params import NeuronParams, TraceParams

    p, tp = NeuronParams(form="beta", beta=0.85, v_threshold=0.001), TraceParams("count", scale=10.0)
    current = torch.rand(1, 50, 200, device="cuda")
    v, tr = torch.zeros(50, 200, device="cuda"), torch.zeros(50, 200, device="cuda")
    kernels.neuron_forward(current, v, tr, p, tp, backend)
    return (
        sync_time(lambda: [kernels.neuron_forward(current, v, tr, p, tp, backend) for _ in range(calls)]) / calls * 1e6
    )


def present_cost(batch: int, calls: int = 500) -> float:
    """Microseconds per ``kernels.present`` call of the paper's layer learning a batch: the
    kernel's own pace, without the training loop around it."""
    from spikingjelly_ff import kernels
    from spikingjelly_ff.simulation.layer import input_major

    cfg = load_config("paper/hebbian-batched-symmetric", [])
    net = build_model(cfg.model, 784, 10, 0, backend="cupy").cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.rand(23, batch, 884, generator=g, device="cuda") < 0.15).float()
    y = (torch.rand(batch, generator=g, device="cuda") < 0.5).float()
    w = input_major(net.layers[0].weight.data)
    e = torch.zeros_like(w)
    v = torch.zeros(batch, 200, device="cuda")
    spec = cfg.train.hebbian
    learn = (y, e, net.dynamics.probability, net.dynamics.goodness, spec.learn_after + 1, spec.eligibility_tau, 0.5)
    p, tp = net.dynamics.neuron, net.dynamics.trace
    kernels.present(x, w, v, p, tp, learn, 20)
    return sync_time(lambda: [kernels.present(x, w, v, p, tp, learn, 20) for _ in range(calls)]) / calls * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=60000)
    ap.add_argument("--online-samples", type=int, default=2000)
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    rows, out = [], {"gpu": torch.cuda.get_device_name()}
    failed = 0
    # batch 1 is the online mode: per-sample launches dominate, so fewer samples suffice
    for width, batch in ((200, 1), (200, 50), (200, 500), (2000, 50), (2000, 500)):
        for backend in PATHS:
            n = min(args.samples, args.online_samples) if batch == 1 else args.samples
            try:
                tr, te = bench(width, batch, backend, n, args.images)
            except Exception:  # noqa: BLE001 (one broken row must not hide the others)
                traceback.print_exc()
                failed += 1
                rows.append([f"884->{width}", batch, backend, "failed", "", ""])
                continue
            rows.append([f"884->{width}", batch, backend, f"{tr:,.0f}", f"{60000 / tr:.1f} s", f"{te:,.0f}"])
            out[f"{width}_{batch}_{backend}"] = {"train_samples_per_second": tr, "test_images_per_second": te}
    print_table(
        f"Spiking FF on {torch.cuda.get_device_name()}",
        ["layer", "batch", "backend", "train samples/s", "epoch (60k)", "test images/s"],
        rows,
    )
    costs = {b: launch_cost(b) for b in ("torch", "cupy")}
    out["one_step_call_us"] = costs
    print_table(
        "One-step neuron call (batch 50 x 200 neurons)",
        ["backend", "us per call"],
        [[b, f"{c:.1f}"] for b, c in costs.items()],
    )
    present = {batch: present_cost(batch) for batch in (1, 50, 500)}
    out["present_call_us"] = present
    print_table(
        "One learning presentation in one launch (884->200, 23 steps + 20 rest), back to back",
        ["batch", "us per presentation", "samples/s"],
        [[b, f"{c:.1f}", f"{b / c * 1e6:,.0f}"] for b, c in present.items()],
    )
    save_json(args.json, out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
