"""How a trained spiking conv net fires: per layer, the share of units silent through a whole
presentation, the share firing at every step, and the mean rate, on test images.

    python benchmarks/spike_rates.py RUN/model [RUN/model ...] [--limit N]

Each image is shown once (competitive nets: without a label; others: with its true label),
every layer from rest, as the scorer does. A unit is one (channel, row, column) of a layer's
map for one image. Every figure is computed in this run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402

from spikingjelly_ff.learning.conv_engine import conv_layouts  # noqa: E402
from spikingjelly_ff.nn.spiking_conv import SpikingConvFFNet  # noqa: E402
from spikingjelly_ff.runs.checkpoint import load_model  # noqa: E402
from spikingjelly_ff.runs.data import load_split  # noqa: E402
from spikingjelly_ff.simulation import encode_spikes, present_conv  # noqa: E402


@torch.no_grad()
def layer_counts(net: SpikingConvFFNet, x: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    """Spike counts of every layer over one presentation of images ``x`` ``[N, H * W]``,
    ``[N, C, OH, OW]`` each."""
    g = torch.Generator().manual_seed(seed)
    steps = net.encoder.steps
    image = encode_spikes(net.image_rates(x), steps, g, net.encoder.coding)
    if net.competitive:
        code = net.no_label_spikes(image)
    else:
        code = encode_spikes(net.label_rates(labels).to(x.dtype), steps, g, net.encoder.coding)
    w = [layer.weight.data for layer in net.layers]
    b = [layer.label_bias.data for layer in net.layers]
    return present_conv(image, code, w, b, conv_layouts(net), net.dynamics, net.over, net.backend, counts=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="model folders written by sjff train (spiking conv nets)")
    ap.add_argument("--limit", type=int, default=100, help="test images (default 100)")
    args = ap.parse_args(argv)
    rows = []
    for path in args.models:
        net, cfg, _ = load_model(path)
        if not isinstance(net, SpikingConvFFNet):
            raise SystemExit(f"{path}: a spiking conv model is needed, this is {type(net).__name__}")
        test = load_split(cfg.data.dataset, "test")
        x = torch.from_numpy(test.images[: args.limit].astype(np.float32) / 255.0).to(next(net.parameters()).dtype)
        labels = torch.from_numpy(test.labels[: args.limit].astype(np.int64))
        p = net.neuron_params
        reset = "soft" if p.soft_reset else f"to {p.v_reset:g}"
        for i, counts in enumerate(layer_counts(net, x, labels)):
            c = counts.reshape(-1).numpy() / net.encoder.steps
            rows.append([path, f"{p.v_threshold:g}, {reset}", net.encoder.steps, i + 1, f"{100 * np.mean(c == 0):.1f}",
                         f"{100 * np.mean(c == 1):.1f}", f"{c.mean():.3f}"])  # fmt: skip
    header = ["model", "threshold, reset", "steps", "layer", "silent %", "every step %", "mean rate"]
    print_table("Spike rates on test images", header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
