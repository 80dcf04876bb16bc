"""CPU cost of applying one on-line update on a replica: a copy of the weights plus one
``learn`` of one image, as every replica does for every stream entry (the tests' exports).

    python benchmarks/apply_cost.py [--updates 300]

Prints one table: median, p90 and the resulting ceiling of updates/s per replica core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
import serving_utils as su  # noqa: E402
from common import machine, print_table  # noqa: E402

from spikingjelly_ff.runtime import load_exported  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=300)
    args = ap.parse_args()
    rows = []
    for kind, path in su.trained_models().items():
        model = load_exported(path, threads=1) if kind == "analog" else load_exported(path)
        x = np.random.default_rng(0).random((1, model.in_features), dtype=np.float32)
        label, positive = np.array([3]), np.array([1.0], dtype=np.float32)
        times = []
        for i in range(args.updates + 20):
            t0 = time.perf_counter()
            model.copy().learn(x, label, positive, seed=i)
            if i >= 20:  # the first calls warm caches and onnxruntime
                times.append(time.perf_counter() - t0)
        ms = np.asarray(times) * 1e3
        shapes = " + ".join(f"{w.shape[0]}x{w.shape[1]}" for w in model.weights)
        med = float(np.median(ms))
        rows.append([kind, shapes, f"{med:.2f} ms", f"{np.percentile(ms, 90):.2f} ms", f"{1e3 / med:,.0f}/s"])
    print_table(
        "Apply cost per stream entry on one replica (copy + learn, 1 image)",
        ["model", "weights", "median", "p90", "ceiling per core"],
        rows,
        note=f"{machine()}; {args.updates} updates each.",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
