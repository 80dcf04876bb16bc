"""Working memory of inference: what scoring a batch holds beyond its images, measured, next to
the estimate (``RuntimeModel.working_memory``) the server counts against ``--max-inflight-mb``
(docs/server.md, Inference memory).

    python benchmarks/work_memory.py [MODEL ...] [--config NAME ...] [--rows 64 256] [--steps 23 92]
                                      [--analog-rows 1024]

``--config``: a shipped config's model (e.g. ``paper/hebbian-batched-symmetric``, the paper's
884 -> 200 layer; ``analog-deep``) with its initial weights, exported for the run: only its
shape matters here. Spiking models (``.nir``): the peak of numpy's allocations (tracemalloc,
deterministic) during one ``scores`` call on uniform random images (every input lit), per
image, and the estimate. Analog models (``.onnx``, run by onnxruntime, whose allocations
numpy's tracing cannot see): the growth of the resident set of a fresh process over one call
of ``--analog-rows`` images (after a call of two), run in parts of ``rows_cap`` images as
shipped and, for comparison, in one call (onnxruntime's arena keeps what it grew to).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
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
    """An export of config ``name``'s model (MNIST's 784 inputs and 10 classes): a spike
    artefact for a spiking model, an ONNX file for an analog one."""
    from spikingjelly_ff.export.spike import export_spike
    from spikingjelly_ff.runs.build import build_model
    from spikingjelly_ff.runs.config import load_config

    cfg = load_config(name)
    net = build_model(cfg.model, 784, 10, cfg.seed)
    stem = out / name.replace("/", "-")
    if cfg.model.kind == "spiking":
        return export_spike(net, stem.with_suffix(".nir"), (28, 28))
    net.image_shape = (28, 28)
    if cfg.model.conv:
        from spikingjelly_ff.export.onnx.conv import conv_to_onnx as export
    else:
        from spikingjelly_ff.export.onnx.analog import analog_to_onnx as export
    return export(net, stem.with_suffix(".onnx"))


def rss_growth(path: Path, rows: int, parts: bool) -> dict:
    """In this process (run by :func:`_analog_row` in a fresh one): resident-set growth (MiB)
    over one call of ``rows`` images, and the estimate of what it holds."""

    def rss_mib() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    model = load_exported(path, threads=2)
    work = model.working_memory()
    if not parts:
        object.__setattr__(model.graph, "work", dataclasses.replace(work, rows_cap=None))
    x = np.random.default_rng(0).uniform(size=(rows, model.in_features)).astype(np.float32)
    model.run(x[:2])
    before = rss_mib()
    model.run(x)
    return {"growth": rss_mib() - before, "estimate": work.bytes(rows) / 2**20, "rows_cap": work.rows_cap}


def _analog_row(path: Path, rows: int, parts: bool) -> list[str]:
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import work_memory as w; "
    code += f"from pathlib import Path; print(json.dumps(w.rss_growth(Path({str(path)!r}), {rows}, {parts})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    how = f"parts of {r['rows_cap']}" if parts else "one call"
    return [path.name, str(rows), how, f"{r['growth']:,.0f}", f"{r['estimate']:,.0f}" if parts else "-"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", type=_model_file)
    ap.add_argument("--config", nargs="+", default=[], help="shipped configs whose models to build")
    ap.add_argument("--rows", type=count, nargs="+", default=[64, 256])
    ap.add_argument("--steps", type=count, nargs="+", default=None, help="default: each model's own")
    ap.add_argument("--analog-rows", type=count, default=1024, help="images of the analog models' call")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp())
    try:
        paths = [*args.models, *(_from_config(name, tmp) for name in args.config)]
    except ValueError as exc:  # ConfigError: an unknown config
        ap.error(str(exc))
    if not paths:
        ap.error("name a model file or a --config")
    spiking, analog = [], []
    for path in paths:
        if path.suffix == ".onnx":
            analog += [_analog_row(path, args.analog_rows, parts) for parts in (True, False)]
            continue
        base = load_exported(path)
        for steps in args.steps or [base.steps]:
            model = base if steps == base.steps else base.with_steps(steps)
            peak_bytes(model, 8)  # warm-up: compiled kernels, caches
            for rows in args.rows:
                peak = peak_bytes(model, rows)
                est = model.working_memory().bytes(rows)
                full = model.working_memory().bytes(MAX_REQUEST_ROWS)
                spiking.append([path.name, str(steps), str(rows), f"{peak / rows / 1024:.1f}",
                                f"{est / rows / 1024:.1f}", f"{est / peak:.2f}", f"{full / 2**20:,.0f}"])  # fmt: skip
    if spiking:
        header = ["model", "steps", "rows", "KiB per image", "estimate", "estimate / peak",
                  f"estimate, {MAX_REQUEST_ROWS:,} images (MiB)"]  # fmt: skip
        print_table("Spiking scoring: working memory (numpy's traced peak) per image", header, spiking)
    if analog:
        header = ["model", "rows", "run", "RSS growth (MiB)", "estimate (MiB)"]
        print_table("Analog scoring: resident-set growth over one call", header, analog)


if __name__ == "__main__":
    main()
