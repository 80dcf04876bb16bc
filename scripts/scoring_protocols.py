"""Test accuracy of trained models under two test protocols: ours and the paper notebook's.

    python scripts/scoring_protocols.py runs/paper/hebbian-online-sigmoid/model [MODEL ...] [--limit N]

Ours: summed log-odds log(P / (1 - P)) of the voting layers, argmax over the labels; in a
spiking model all labels of an image see the same image spikes (``eval.share_image_spikes``).
The notebook's: argmax of P itself in float32 (P saturates to 1.0 for several labels when
goodness is large, and the first such label wins), with fresh image spikes for every label.
A large gap between the two would mean that a difference from the paper comes from scoring;
the script also counts the images where two or more labels reach P = 1.0.

Each model is scored from rest, in chunks of 1,000 images (the table's figure comes from the
pass at the end of training, with its own spike draws, so it differs by a few tenths).
Prints one JSON object per model.
"""

from __future__ import annotations

import argparse
import json

import torch

from spikingjelly_ff.learning.engine import SpikingScorer
from spikingjelly_ff.nn.models import AnalogFFNet, FFNet
from spikingjelly_ff.runs.checkpoint import load_model
from spikingjelly_ff.runs.data import load_split


def label_activities(net: FFNet, x: torch.Tensor, seed: int, share: bool | None) -> list[torch.Tensor]:
    """Every voting layer's activity for every label, each ``[C * N, H]`` (label-major)."""
    if isinstance(net, AnalogFFNet):
        with torch.no_grad():
            return net.all_label_activities(x)
    scorer = SpikingScorer(net, share_image_spikes=bool(share), seed=seed, use_state=False)
    parts = [scorer.layer_outputs(x[i : i + 1000]) for i in range(0, len(x), 1000)]
    traces = [torch.cat([p[k] for p in parts], dim=1) for k in range(len(parts[0]))]
    return [t.reshape(-1, t.shape[-1]) for t in traces]


def score(net: FFNet, x: torch.Tensor, y: torch.Tensor, seed: int, share: bool | None) -> dict:
    acts = label_activities(net, x, seed, share)
    c, n = net.num_classes, len(y)
    logit = net.score_activities(acts).reshape(c, n).T
    p = torch.ones(n, c)
    for i in net.score_layers:  # the notebook has one layer; with several, P of each multiplied
        p = p * net.probability(net.layer_goodness(acts[i])).float().reshape(c, n).T
    return {
        "log_odds": round(float((logit.argmax(1) == y).float().mean()) * 100, 2),
        "argmax_p_float32": round(float((p.argmax(1) == y).float().mean()) * 100, 2),
        "images_with_2+_labels_at_p_1": int(((p == 1.0).sum(1) >= 2).sum()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="model directories (RUN/model)")
    ap.add_argument("--limit", type=int, help="test images (default all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for model_dir in args.models:
        net, cfg, _ = load_model(model_dir)
        data = load_split(cfg.data.dataset, "test", cfg.data.root).take(args.limit)
        x, y = data.to_tensors("cpu")
        out: dict = {"model": model_dir, "images": len(y)}
        if isinstance(net, AnalogFFNet):
            out["analog"] = score(net, x, y, cfg.seed, None)
        else:
            out["shared_image_spikes"] = score(net, x, y, cfg.seed + 4, True)
            out["fresh_spikes_per_label"] = score(net, x, y, cfg.seed + 4, False)
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
