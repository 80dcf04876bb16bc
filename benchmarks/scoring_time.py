"""Time of the numpy runtime's all-label scoring (``SpikeModel.scores``, what the server runs
for a spiking model's ModelInfer), per config, batch size and steps: median of five calls
(seeds 0-4) on uniform random images after a warm-up call. Prints one line per case, so that
two trees can be compared in turn on one machine:

    python benchmarks/scoring_time.py paper/hebbian-batched-symmetric:256:23 spiking-mnist:64:23
    PYTHONPATH=/path/to/other/tree python benchmarks/scoring_time.py ...   # the same cases there

Only the library's public export and runtime calls are used, so an older tree runs it too.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def case_ms(name: str, rows: int, steps: int) -> float:
    from spikingjelly_ff.export.spike import export_spike
    from spikingjelly_ff.runs.build import build_model
    from spikingjelly_ff.runs.config import load_config
    from spikingjelly_ff.runtime import load_exported

    cfg = load_config(name)
    net = build_model(cfg.model, 784, 10, cfg.seed)
    model = load_exported(export_spike(net, Path(tempfile.mkdtemp()) / "m.nir", (28, 28)))
    if steps != model.steps:
        model = model.with_steps(steps)
    x = np.random.default_rng(0).uniform(size=(rows, 784)).astype(np.float32)
    model.scores(x[:4])  # compiled kernels first
    times = []
    for seed in range(5):
        t0 = time.perf_counter()
        model.scores(x, seed=seed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+", help="CONFIG:ROWS:STEPS")
    args = ap.parse_args(argv)
    import spikingjelly_ff

    for case in args.cases:
        try:
            name, rows, steps = case.rsplit(":", 2)
            rows_n, steps_n = int(rows), int(steps)
        except ValueError:
            ap.error(f"a case is CONFIG:ROWS:STEPS, got {case!r}")
        print(f"{case}  {case_ms(name, rows_n, steps_n):.1f} ms  ({Path(spikingjelly_ff.__file__).parent.parent})")


if __name__ == "__main__":
    main()
