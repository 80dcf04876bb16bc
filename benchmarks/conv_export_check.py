"""Exported conv models on a test set: the torch-free runtime's accuracy beside torch's.

    python benchmarks/conv_export_check.py --spiking RUN/model [--analog RUN/model] [--limit N]

Spiking conv: exported to the NIR spike artefact, scored by ``SpikeConvModel`` (numpy) and by
``SpikingConvScorer`` (torch) with their own spike draws, so accuracies may differ by the
rate-code noise of one presentation; the table gives both and how often they agree. Analog
conv: exported to ONNX, scored by onnxruntime and by torch (deterministic). Every figure is
computed in this run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, save_json, timed  # noqa: E402

from spikingjelly_ff.runs.checkpoint import load_model  # noqa: E402
from spikingjelly_ff.runs.data import load_split  # noqa: E402
from spikingjelly_ff.runtime import load_exported  # noqa: E402


def spiking_row(model_dir: str, limit: int | None, tmp: Path) -> dict:
    from spikingjelly_ff.export.spike import export_spike
    from spikingjelly_ff.learning.conv_engine import SpikingConvScorer

    net, cfg, meta = load_model(model_dir)
    data = load_split(cfg.data.dataset, "test", cfg.data.root).take(limit)
    x = data.images.astype(np.float32) / 255.0
    path = export_spike(net, tmp / "conv.nir", meta.get("image_shape"), hebbian=cfg.train.hebbian, name=cfg.name)
    model = load_exported(path)
    scorer = SpikingConvScorer(net, seed=cfg.seed + 4, readout=net.readout is not None)  # the class sjff eval gives
    t_torch, pred_t = timed(lambda: scorer.predict(torch.from_numpy(x)).numpy())
    t_rt, pred_r = timed(model.predict, x)
    return {
        "model": f"spiking conv ({cfg.name})",
        "images": len(x),
        "torch accuracy": float((pred_t == data.labels).mean()),
        "runtime accuracy": float((pred_r == data.labels).mean()),
        "same label": float((pred_t == pred_r).mean()),
        "torch s": round(t_torch, 1),
        "runtime s": round(t_rt, 1),
    }


def analog_row(model_dir: str, limit: int | None, tmp: Path) -> dict:
    from spikingjelly_ff.export.onnx import analog_to_onnx

    net, cfg, _ = load_model(model_dir)
    data = load_split(cfg.data.dataset, "test", cfg.data.root).take(limit)
    x = data.images.astype(np.float32) / 255.0
    model = load_exported(analog_to_onnx(net, tmp / "conv.onnx"))
    with torch.no_grad():
        t_torch, pred_t = timed(lambda: net.predict(torch.from_numpy(x)).numpy())
    t_rt, pred_r = timed(model.predict, x)
    return {
        "model": f"analog conv ({cfg.name}), onnxruntime",
        "images": len(x),
        "torch accuracy": float((pred_t == data.labels).mean()),
        "runtime accuracy": float((pred_r == data.labels).mean()),
        "same label": float((pred_t == pred_r).mean()),
        "torch s": round(t_torch, 1),
        "runtime s": round(t_rt, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spiking", help="a spiking conv model directory (RUN/model)")
    ap.add_argument("--analog", help="an analog conv model directory (RUN/model)")
    ap.add_argument("--limit", type=int, default=None, help="test images (default: all)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    if not (args.spiking or args.analog):
        ap.error("give --spiking and/or --analog")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        if args.spiking:
            rows.append(spiking_row(args.spiking, args.limit, Path(d)))
        if args.analog:
            rows.append(analog_row(args.analog, args.limit, Path(d)))
    header = list(rows[0])
    print_table(f"Exported conv models, {machine()}", header, [[r[h] for h in header] for r in rows])
    if args.json:
        save_json(args.json, {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
