"""The paper's notebook code and ours, timed in one run on this machine (issue 17's table).

    python benchmarks/notebook_speed.py PATH/TO/training.ipynb [--threads 2] [--json out.json]

The notebook (github.com/erikberter/Hebbian_FFA, not ours, not copied here) is assembled by
``scripts/notebook_rerun.py``: its own cells, its own ``train_network`` and ``test`` loops,
timed around the calls, in a subprocess with ``--threads`` torch threads. Ours runs the same
rows through the library (``benchmarks/spiking_speed.py``'s drivers: ``sjff train``'s epoch
loop) in this process with the same thread count, our numba kernels on (``SJFF_COMPILED=1``)
and off (``SJFF_COMPILED=0``: the per-step torch and numpy path, which also draws each batch
when it comes and presents batch-1 rows one call at a time). Rows: batched Hebbian training (batch 50), online
Hebbian training (batch 1), all-label testing, and the torch-free runtime's on-line updates
(``SpikeModel.learn``, one image per call, what the server's Learn runs). Batched training is
also given as a fraction of the matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scripts"))
from common import machine, matmul_peak, print_table, save_json  # noqa: E402
from notebook_rerun import program  # noqa: E402
from spiking_speed import bench_testing, bench_training, dense_flops_train  # noqa: E402

from spikingjelly_ff.runs.data import load_split  # noqa: E402


def notebook(path: Path, row: str, train_batches: int, test_batches: int, threads: int) -> dict:
    """One timed run of the notebook's train and test loops (a subprocess)."""
    src = program(path, row, 0, 1, None, threads=threads, timing=(train_batches, test_batches))
    with tempfile.TemporaryDirectory() as tmp:
        prog = Path(tmp) / "notebook_timing.py"
        prog.write_text(src)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        res = subprocess.run([sys.executable, str(prog)], env=env, capture_output=True, text=True, check=False)
    for line in res.stdout.splitlines():
        if line.startswith("SJFF_TIMING "):
            return json.loads(line.split(" ", 1)[1])
    raise SystemExit(f"the notebook program failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")


def ours(fn, compiled: bool):
    os.environ["SJFF_COMPILED"] = "1" if compiled else "0"
    try:
        return fn()
    finally:
        os.environ.pop("SJFF_COMPILED", None)


def runtime_updates(samples: int) -> float:
    """On-line updates/s of the torch-free runtime: the paper's online row exported, then one
    ``SpikeModel.learn`` call per training image (alternately positive and negative)."""
    from spikingjelly_ff.export.spike import export_spike
    from spikingjelly_ff.runs.build import build_model
    from spikingjelly_ff.runs.config import load_config
    from spikingjelly_ff.runtime import load_exported

    cfg = load_config("paper/hebbian-online-symmetric")
    net = build_model(cfg.model, 784, 10, cfg.seed)
    data = load_split("mnist", "train").take(samples)
    x = data.images.reshape(samples, -1).astype(np.float32) / 255.0
    with tempfile.TemporaryDirectory() as tmp:
        model = load_exported(export_spike(net, Path(tmp) / "m", (1, 28, 28), hebbian=cfg.train.hebbian))
    model.learn(x[:1], data.labels[:1], np.ones(1))  # compile / warm up
    t = time.perf_counter()
    for i in range(samples):
        label = data.labels[i] if i % 2 == 0 else (data.labels[i] + 1) % 10
        model.learn(x[i : i + 1], np.array([label]), np.array([i % 2 == 0], dtype=np.float32), seed=i)
    return samples / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebook", type=Path, help="the paper's training.ipynb")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the notebook and for ours")
    ap.add_argument("--samples", type=int, default=6000, help="our training samples per row")
    ap.add_argument("--test-images", type=int, default=5000, help="our test images")
    ap.add_argument("--nb-batched", type=int, default=40, help="notebook batches of 50 to train on")
    ap.add_argument("--nb-online", type=int, default=1500, help="notebook samples to train on online")
    ap.add_argument("--nb-test", type=int, default=10, help="notebook test batches of 50")
    ap.add_argument("--runtime-samples", type=int, default=3000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak()
    nb_batched = notebook(args.notebook, "batched-symmetric", args.nb_batched, args.nb_test, args.threads)
    nb_online = notebook(args.notebook, "online-symmetric", args.nb_online, 1, args.threads)
    nb_train_b = nb_batched["train_samples"] / nb_batched["train_seconds"]
    nb_train_o = nb_online["train_samples"] / nb_online["train_seconds"]
    nb_test = nb_batched["test_images"] / nb_batched["test_seconds"]

    out = {"machine": machine(), "threads": args.threads, "matmul_peak_gflops": peak, "notebook": {}}
    out["notebook"] = {"batched": nb_batched, "online": nb_online}
    rows = []

    def training(label, row, target, nb_rate):
        res = {}
        ours(lambda: bench_training(row, 200, reference=False), True)  # warm-up: numba's cache, allocator
        for compiled in (False, True):
            cfg, sec = ours(lambda: bench_training(row, args.samples, reference=False), compiled)
            res[compiled] = (args.samples / sec, dense_flops_train(cfg, args.samples) / sec / 1e9)
        (before, _), (after, gflops) = res[False], res[True]
        rows.append(
            [label, f"{nb_rate:,.0f}/s", f"{before:,.0f}/s ({before / nb_rate:.1f}x)", f"{after:,.0f}/s",
             f"**{after / nb_rate:.1f}x**", f"{100 * gflops / peak:.1f}%", target]
        )  # fmt: skip
        out[row] = {"notebook": nb_rate, "numpy_path": before, "compiled": after, "of_peak": gflops / peak}

    training("batched Hebbian training (batch 50)", "hebbian-batched-symmetric", ">= 30x, >= 50% of peak", nb_train_b)
    training("online Hebbian training (batch 1)", "hebbian-online-symmetric", ">= 30x", nb_train_o)
    bench_testing(500, reference=False)  # warm-up
    _, sec = bench_testing(args.test_images, reference=False)
    test_rate = args.test_images / sec
    rows.append(
        ["testing, all 10 labels", f"{nb_test:,.0f}/s", "", f"{test_rate:,.0f}/s", f"**{test_rate / nb_test:.1f}x**",
         "", ">= 50x"]
    )  # fmt: skip
    out["testing"] = {"notebook": nb_test, "ours": test_rate}
    before = ours(lambda: runtime_updates(args.runtime_samples), False)
    after = ours(lambda: runtime_updates(args.runtime_samples), True)
    rows.append(["runtime on-line updates (SpikeModel.learn)", "", f"{before:,.0f}/s", f"{after:,.0f}/s",
                 f"{after / before:.1f}x numpy path", "", ""])  # fmt: skip
    out["runtime_updates"] = {"numpy_path": before, "compiled": after}
    print_table(
        f"Paper's notebook code vs spikingjelly-ff, one run, {args.threads} threads each, on {machine()}",
        ["workload", "notebook", "ours, numpy path", "ours, compiled", "vs notebook", "of matmul peak", "target"],
        rows,
        f"matmul peak in this run: {peak:.0f} GFLOP/s. Notebook: {nb_batched['train_samples']} batched and "
        f"{nb_online['train_samples']} online training samples, {nb_batched['test_images']} test images; ours: "
        f"{args.samples} per training row, {args.test_images} test images, {args.runtime_samples} runtime updates.",
    )
    save_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
