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
    # both through onnxruntime, whatever the compiled scoring would take (analog_compiled.py)
    full = AnalogModel(replace(g, small=g.session, compiled=None), model.weights)
    lit = AnalogModel(replace(g, session=g.small, compiled=None), model.weights)
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


def parse_timing_args(doc: str, argv: list[str] | None) -> argparse.Namespace:
    """The options this file and ``analog_compiled.py`` share: model, batch sizes, timing."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--model", help="analog ONNX export (default: serve.py's cached model)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--idle-us", type=float, default=400.0, help="sleep before each call of the idle columns")
    p.add_argument("--calls", type=int, default=1000, help="timed calls per path, batch size and round")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    if min(args.batches) < 1 or args.calls < 1 or args.rounds < 1 or args.idle_us < 0:
        p.error("--batches, --calls and --rounds must be positive, --idle-us not negative")
    from spikingjelly_ff.runs.data import load_split

    args.path = serve.prepare_model(args.model)
    data, args.label = serve.dataset()
    split = load_split(data, "test")
    args.images = split.images.reshape(len(split.images), -1).astype(np.float32) / np.float32(255.0)
    if max(args.batches) >= len(args.images):
        p.error(f"--batches must stay below the {len(args.images)} test images")
    return args


def round_columns(args: argparse.Namespace, a: str, b: str) -> str:
    """The table's timing headers: per round ``a / b`` warm and asleep, then ``b / a``."""
    rounds = " | ".join(f"round {r + 1}: {a} / {b} µs, warm | {args.idle_us:g} µs asleep" for r in range(args.rounds))
    return f"{rounds} | {b} / {a}, warm | asleep |"


def time_rounds(fns: dict, images: np.ndarray, batch: int, args: argparse.Namespace) -> str:
    """The timing cells of one table row: both of ``fns`` (two: a, then b) per round, warm and
    asleep, then the ranges of b / a."""
    a, b = fns
    cells, ratios = [], {"warm": [], "idle": []}
    for _ in range(args.rounds):
        for kind, idle in (("warm", 0.0), ("idle", args.idle_us * 1e-6)):
            t = timed(fns, images, batch, idle, args.calls if batch <= 8 else max(1, args.calls // 4))
            cells.append(f"{t[a]:.0f} / {t[b]:.0f}")
            ratios[kind].append(t[b] / t[a])
    ratio = " | ".join(f"{min(v):.2f}-{max(v):.2f}" for v in ratios.values())
    return " | ".join(cells) + f" | {ratio} |"


def main(argv: list[str] | None = None) -> int:
    args = parse_timing_args(__doc__, argv)
    x = args.images
    full, lit = load_pair(args.path)
    print(f"model {args.path}, {args.label} test set: {len(x)} images, {np.mean(x > 0):.1%} of the inputs lit\n")
    print("| batch | outputs unequal (over the test set) | " + round_columns(args, "full", "lit"))
    print("| ---: | ---: |" + " ---: | ---: |" * args.rounds + " ---: | ---: |")
    fns = {"full": full.run, "lit": lit.run}
    for batch in args.batches:
        print(f"| {batch} | {unequal(full, lit, x, batch)} | " + time_rounds(fns, x, batch, args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
