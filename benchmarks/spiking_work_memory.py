"""Working memory of a spiking model's all-label scoring, per image: what a running spiking
batch holds beyond the images that ``--max-inflight-mb`` counts (docs/server.md).

    python benchmarks/spiking_work_memory.py [MODEL.nir ...] [--config NAME ...] [--rows 64 256] [--steps 23 92]

``--config``: a shipped config's model (e.g. ``paper/hebbian-batched-symmetric``, the paper's
884 -> 200 layer) with its initial weights, exported for the run: only its shape matters here.

For each model, rows and steps: the peak of numpy's allocations (tracemalloc) during one
``scores`` call on uniform random images, divided by the rows, and what a request of
``--max-request-rows`` (4,096) images would hold at that rate. The first call of each model is
a warm-up (compiled kernels) and not reported.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402

from spikingjelly_ff.cli import _count as count  # noqa: E402
from spikingjelly_ff.runtime import load_exported  # noqa: E402

MAX_REQUEST_ROWS = 4096


def peak_bytes(model, rows: int, seed: int = 0) -> int:
    x = np.random.default_rng(seed).uniform(size=(rows, model.in_features)).astype(np.float32)
    tracemalloc.start()
    try:
        model.scores(x, seed=seed)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _model_file(text: str) -> Path:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such model file: {text}")
    return Path(text)


def _from_config(name: str, out: Path) -> Path:
    """A spike artefact of config ``name``'s model (MNIST's 784 inputs and 10 classes)."""
    from spikingjelly_ff.export.spike import export_spike
    from spikingjelly_ff.runs.build import build_model
    from spikingjelly_ff.runs.config import load_config

    cfg = load_config(name)
    net = build_model(cfg.model, 784, 10, cfg.seed)
    return export_spike(net, out / (name.replace("/", "-") + ".nir"), (28, 28))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", type=_model_file)
    ap.add_argument("--config", nargs="+", default=[], help="shipped configs whose models to build")
    ap.add_argument("--rows", type=count, nargs="+", default=[64, 256])
    ap.add_argument("--steps", type=count, nargs="+", default=None, help="default: each model's own")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp())
    try:
        paths = [*args.models, *(_from_config(name, tmp) for name in args.config)]
    except ValueError as exc:  # ConfigError: an unknown config
        ap.error(str(exc))
    if not paths:
        ap.error("name a model file or a --config")
    table = []
    for path in paths:
        base = load_exported(path)
        for steps in args.steps or [base.steps]:
            model = base if steps == base.steps else base.with_steps(steps)
            peak_bytes(model, 8)  # warm-up
            for rows in args.rows:
                per_row = peak_bytes(model, rows) / rows
                table.append([path.name, str(steps), str(rows), f"{per_row / 1024:.1f}",
                              f"{per_row * MAX_REQUEST_ROWS / 2**20:,.0f}"])  # fmt: skip
    header = ["model", "steps", "rows", "KiB per image", f"MiB for {MAX_REQUEST_ROWS:,} images"]
    print_table("Spiking scoring: working memory per image", header, table)


if __name__ == "__main__":
    main()
