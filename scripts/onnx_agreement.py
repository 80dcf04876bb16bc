"""Agreement of analog ONNX exports with the torch model, and of both with float64.

    python scripts/onnx_agreement.py RUN/model [RUN/model ...] [--dataset mnist] [--limit N]

For each model: export to ONNX, run onnxruntime and torch (float32) on the test set, and
print the largest |P_ort - P_torch| over every image and label, how many exceed 1e-5, each
side's distance from a float64 evaluation of the same torch model, and the share of
identical predictions.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from spikingjelly_ff.export.onnx import analog_to_onnx
from spikingjelly_ff.runs.checkpoint import load_model
from spikingjelly_ff.runs.data import load_split


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    x, _ = load_split(args.dataset, "test").take(args.limit).to_tensors()
    print("| model | max abs(P_ort - P_torch) | > 1e-5 | torch f32 vs f64 | ort vs f64 | identical predictions |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.models:
            net, _, _ = load_model(m)
            path = analog_to_onnx(net, Path(tmp) / "model.onnx")
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            parts = []  # (P_ort, label_ort, P_torch, label_torch, P_f64), 500 images at a time
            net64 = load_model(m)[0].double()
            for i in range(0, len(x), 500):
                xb = x[i : i + 500]
                p_ort, label_ort = sess.run(["probability", "label"], {"images": xb.numpy()})
                with torch.no_grad():
                    p32 = torch.sigmoid(net.scores(xb)).numpy()
                    labels = net.view_scores(xb).argmax(1).numpy()
                    p64 = torch.sigmoid(net64.scores(xb.double())).numpy()
                parts.append((p_ort, label_ort, p32, labels, p64))
            p_ort, label_ort, p32, labels, p64 = (np.concatenate(a) for a in zip(*parts))
            out = {"probability": p_ort, "label": label_ort}
            diff = np.abs(out["probability"] - p32)
            same = (out["label"] == labels).mean()
            print(
                f"| {m} | {diff.max():.2e} | {int((diff > 1e-5).sum())} of {diff.size:,} | "
                f"{np.abs(p32 - p64).max():.2e} | {np.abs(out['probability'] - p64).max():.2e} | {100 * same:.2f} % |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
