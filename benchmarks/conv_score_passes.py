"""Analog conv FF scoring speed against the number of inputs per batched pass.

    python benchmarks/conv_score_passes.py [--config conv/analog-competitive-fashion]
                                           [--images 2000] [--passes 2000,512,128,64]
                                           [--rounds 3] [--threads 1] [--json OUT]

Builds the config's network (seed 0, untrained: the conv arithmetic does not depend on the
weights' values), scores ``--images`` test images (the image alone, every class) once per
pass size and round, the sizes alternating within each round so that a shared machine's
drift falls on all of them alike, and prints images/s (median over the rounds) with the ratio
to the first size. It checks that every pass size gives the same scores, bit for bit. The
library's default (``AnalogConvFFNet.pass_inputs``) is marked.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, save_json  # noqa: E402

from spikingjelly_ff.nn.conv_models import AnalogConvFFNet  # noqa: E402
from spikingjelly_ff.runs.build import build_model  # noqa: E402
from spikingjelly_ff.runs.config import ConfigError, load_config  # noqa: E402
from spikingjelly_ff.runs.data import load_split  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="conv/analog-competitive-fashion")
    ap.add_argument("--images", type=int, default=2000, help="test images scored per pass size and round")
    ap.add_argument("--passes", default="2000,512,128,64", help="inputs per pass, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    try:
        cfg = load_config(args.config, [])
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        sizes = [int(s) for s in args.passes.split(",")]
    except ValueError:
        raise SystemExit(f"error: --passes wants comma-separated whole numbers, got {args.passes!r}") from None
    if cfg.model.kind != "analog" or not cfg.model.conv or min(sizes) < 1 or args.images < 1 or args.rounds < 1:
        raise SystemExit("error: needs an analog conv config, pass sizes >= 1, --images >= 1 and --rounds >= 1")
    torch.set_num_threads(args.threads)
    test = load_split(cfg.data.dataset, "test", cfg.data.root, cfg.data.download).take(args.images)
    net = build_model(cfg.model, test.images.shape[1], 10, seed=0, image_shape=test.shape)
    assert isinstance(net, AnalogConvFFNet)
    net.eval()
    x = torch.as_tensor(test.images, dtype=torch.float32) / 255.0
    default = net.pass_inputs(x.device)
    rates: dict[int, list[float]] = {s: [] for s in sizes}
    reference = None
    with torch.no_grad():
        for _ in range(args.rounds):
            for size in sizes:
                net.score_inputs = size
                t = time.perf_counter()
                scores = net.scores(x)
                rates[size].append(len(x) / (time.perf_counter() - t))
                if reference is None:
                    reference = scores
                elif not torch.equal(scores, reference):
                    raise SystemExit(f"error: passes of {size} inputs changed the scores")
    first = statistics.median(rates[sizes[0]])
    rows = []
    for size in sizes:
        med = statistics.median(rates[size])
        mark = " (default)" if size == default else ""
        rows.append(
            [f"{size}{mark}", f"{med:.0f}", f"{min(rates[size]):.0f}-{max(rates[size]):.0f}", f"{med / first:.2f}"]
        )
    print(f"{machine()}; {args.config}, {args.images} images, {args.threads} thread(s), {args.rounds} rounds")
    print_table(
        "Scoring speed by inputs per pass (scores identical for every size)",
        ["inputs per pass", "images/s (median)", "range", f"ratio to {sizes[0]}"],
        rows,
    )
    save_json(
        args.json,
        {"machine": machine(), "config": args.config, "images": args.images, "images_per_second": rates},
    )


if __name__ == "__main__":
    main()
