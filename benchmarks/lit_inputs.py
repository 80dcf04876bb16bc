"""The first layer over lit inputs only (``runtime.lit_inputs``) against the full product.

    python benchmarks/lit_inputs.py [--model M] [--batches 1 2 4 8 16 32 64] [--idle-us 400]
                                    [--calls 1000] [--rounds 2]

Loads the model twice (the per-call graph with and without the rewrite, both in onnxruntime,
one thread), checks that both give equal outputs over the MNIST test set (or the shipped
subset) at each batch size, then times ``AnalogModel.run`` of both, interleaved call by call:
back to back (warm caches) and each call after ``--idle-us`` asleep (what a lone client's
call finds: the server's CPU halts between calls). Prints one table: medians per round and
the ratio lit / full; ``runtime.analog.LIT_MAX_ROWS`` is where the warm ratio stops being
below 1. Default model: serve.py's (the paper's analog net, 784 -> 200, float64 first layer).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve  # noqa: E402 - the benchmark's model and data


def load_pair(path: Path):
    """(full, lit): the model with the plain first-layer product and with the lit-input one at
    any batch size, sharing the loaded graph's sessions and weights."""
    from dataclasses import replace

    from spikingjelly_ff.runtime import load_exported
    from spikingjelly_ff.runtime.analog import AnalogModel

    model = load_exported(path, threads=1)
    g = model.graph
    if g.small is g.session:
        raise SystemExit(f"{path}: no first-layer product to rewrite (runtime.lit_inputs)")
    full = AnalogModel(replace(g, small=g.session), model.weights)
    lit = AnalogModel(replace(g, session=g.small), model.weights)
    return full, lit


def unequal(full, lit, x: np.ndarray, batch: int) -> int:
    """Outputs that differ in any bit between the two models, over ``x`` in batches."""
    bad = 0
    for j in range(0, len(x), batch):
        a, b = full.run(x[j : j + batch]), lit.run(x[j : j + batch])
        bad += sum(not np.array_equal(a[k], b[k]) for k in a)
    return bad


def timed(fns: dict, x: np.ndarray, batch: int, idle_s: float, calls: int) -> dict[str, float]:
    """Median µs per call of each of ``fns``, called in turn on the same batches."""
    lat: dict[str, list[float]] = {k: [] for k in fns}
    warm = 50
    for r in range(calls + warm):
        j = (r * batch) % (len(x) - batch)
        xb = x[j : j + batch]
        for name, fn in fns.items():
            if idle_s:
                time.sleep(idle_s)
            t = time.perf_counter()
            fn(xb)
            if r >= warm:
                lat[name].append(time.perf_counter() - t)
    return {k: float(np.median(v)) * 1e6 for k, v in lat.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="analog ONNX export (default: serve.py's cached model)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--idle-us", type=float, default=400.0, help="sleep before each call of the idle rows")
    p.add_argument("--calls", type=int, default=1000, help="timed calls per model, batch size and round")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    if min(args.batches) < 1 or args.calls < 1 or args.rounds < 1 or args.idle_us < 0:
        p.error("--batches, --calls and --rounds must be positive, --idle-us not negative")
    from spikingjelly_ff.runs.data import load_split

    path = serve.prepare_model(args.model)
    data, label = serve.dataset()
    split = load_split(data, "test")
    x = split.images.reshape(len(split.images), -1).astype(np.float32) / np.float32(255.0)
    if max(args.batches) >= len(x):
        p.error(f"--batches must stay below the {len(x)} test images")
    full, lit = load_pair(path)
    print(f"model {path}, {label} test set: {len(x)} images, {np.mean(x > 0):.1%} of the inputs lit\n")
    print(
        "| batch | outputs unequal (over the test set) | "
        + " | ".join(
            f"round {r + 1}: full / lit µs, warm | after {args.idle_us:g} µs asleep" for r in range(args.rounds)
        )
        + " | lit / full, warm | asleep |"
    )
    print("| ---: | ---: |" + " ---: | ---: |" * args.rounds + " ---: | ---: |")
    fns = {"full": full.run, "lit": lit.run}
    for batch in args.batches:
        cells, ratios = [], {"warm": [], "idle": []}
        for _ in range(args.rounds):
            for kind, idle in (("warm", 0.0), ("idle", args.idle_us * 1e-6)):
                t = timed(fns, x, batch, idle, args.calls if batch <= 8 else max(1, args.calls // 4))
                cells.append(f"{t['full']:.0f} / {t['lit']:.0f}")
                ratios[kind].append(t["lit"] / t["full"])
        ratio = " | ".join(f"{min(v):.2f}-{max(v):.2f}" for v in ratios.values())
        print(f"| {batch} | {unequal(full, lit, x, batch)} | " + " | ".join(cells) + f" | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
