"""Score the weights that arXiv 2406.16479's public notebook saved, with this library.

The notebook repository (github.com/erikberter/Hebbian_FFA) ships its trained weights under
results/models/. Download them, then:

    python scripts/score_notebook_weights.py --dir PATH/TO/results/models [--limit 10000]

It rebuilds each model with the matching config in spikingjelly_ff/configs/paper/, loads the weights and
label patterns, and prints the test accuracy (spiking rows: our engine, the notebook's
presentation protocol; analog rows: argmax of P as the notebook scores, and of log-odds).
This checks that our model semantics match the notebook's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from spikingjelly_ff.learning.engine import SpikingScorer
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.config import load_config
from spikingjelly_ff.runs.data import load_split

ROWS = {  # notebook file stem -> our config
    "relu_standard": "paper/analog-sigmoid",
    "relu_sym": "paper/analog-symmetric",
    "1": "paper/hebbian-batched-symmetric",
    "2": "paper/hebbian-batched-sigmoid",
    "3": "paper/hebbian-online-symmetric",
    "4": "paper/hebbian-online-sigmoid",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="the notebook's results/models directory")
    ap.add_argument("--limit", type=int, default=2000, help="test images (the first N)")
    args = ap.parse_args()
    x, y = load_split("mnist", "test").take(args.limit).to_tensors()
    for stem, config in ROWS.items():
        wpath, lpath = Path(args.dir) / f"model_{stem}.pt", Path(args.dir) / f"labels_{stem}.pt"
        if not wpath.is_file():
            print(f"{config}: {wpath} missing, skipped")
            continue
        cfg = load_config(config)
        net = build_model(cfg.model, 784, 10, 0)
        w = torch.load(wpath, map_location="cpu")
        w = w["weight"] if isinstance(w, dict) else w.T  # spiking weights are stored [inputs, neurons]
        with torch.no_grad():
            net.layers[0].weight.copy_(w)
        net.embedding.set_patterns(torch.load(lpath, map_location="cpu").float())
        if net.kind == "analog":
            with torch.no_grad():
                scores = net.scores(x)
                p = torch.sigmoid(scores)
            acc_p = float((p.argmax(1) == y).float().mean())
            acc_logit = float((scores.argmax(1) == y).float().mean())
            print(f"{config}: argmax P {100 * acc_p:.2f}%, argmax log-odds {100 * acc_logit:.2f}% on {len(y)} images")
        else:
            pred = torch.cat([SpikingScorer(net, seed=0).predict(x[i : i + 1000]) for i in range(0, len(x), 1000)])
            print(f"{config}: {100 * float((pred == y).float().mean()):.2f}% on {len(y)} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
