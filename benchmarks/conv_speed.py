"""Spiking conv FF training and testing speed, and where a training batch spends its time.

    python benchmarks/conv_speed.py [--config conv/spiking-competitive-mnist] [--images 600]
                                    [--test 500] [--threads 1] [--json OUT] [--set KEY=VALUE ...]

Trains the config for one pass over the first ``--images`` training images, then tests on the
first ``--test`` test images, through ``sjff train``'s own code (``runs.train.train``), and
prints images/s for both with each step's share of the training time: the conv currents,
the neuron, the Hebbian conv deltas (of which the weight correlation), the pooling and the
eligibility update. The shares come from timers wrapped around those functions of
``simulation.conv`` for this run (they add a few microseconds per call). To compare two
commits, run it from each checkout, one after the other, more than once: on a shared machine
the ratio of images/s from runs close in time is what holds, not the figure alone.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, save_json  # noqa: E402

import spikingjelly_ff.functional.conv as fconv  # noqa: E402
import spikingjelly_ff.simulation.conv as sconv  # noqa: E402
from spikingjelly_ff.runs.config import ConfigError, load_config  # noqa: E402
from spikingjelly_ff.runs.train import train  # noqa: E402

#: (module, function, row name): the steps of a spiking conv presentation
STEPS = [
    (sconv, "conv_current", "conv currents"),
    (sconv, "neuron_forward", "neuron"),
    (sconv, "ff_conv_hebbian_deltas", "Hebbian conv deltas"),
    (fconv, "conv_weight_correlation", "  of which the weight correlation"),
    (sconv, "pool2d", "pooling"),
    (sconv, "apply_delta", "eligibility and weight update"),
]


def instrument(seconds: Counter, calls: Counter) -> None:
    """Wrap each step's function in its module with a timer."""
    for module, name, row in STEPS:
        fn = getattr(module, name)

        @functools.wraps(fn)
        def timed(*args, _fn=fn, _row=row, **kwargs):
            t = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                seconds[_row] += time.perf_counter() - t
                calls[_row] += 1

        setattr(module, name, timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="conv/spiking-competitive-mnist")
    ap.add_argument("--images", type=int, default=600, help="training images (one pass)")
    ap.add_argument("--test", type=int, default=500, help="test images")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a config override, as for sjff train"
    )
    args = ap.parse_args()
    overrides = [
        "train.epochs=1",
        f"train.limit={args.images}",
        f"eval.limit={args.test}",
        f"threads={args.threads}",  # train() sets torch's threads from it
        *args.set,
    ]
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    if cfg.model.kind != "spiking" or not cfg.model.conv:
        raise SystemExit(f"{args.config} is not a spiking conv config")
    seconds: Counter = Counter()
    calls: Counter = Counter()
    instrument(seconds, calls)
    with tempfile.TemporaryDirectory() as out:
        metrics = train(cfg, out, log=lambda s: None, progress=False)
    epoch = metrics["epochs"][-1]
    train_s, test_s = epoch["train_seconds"], epoch["test_seconds"]
    print(f"{machine()}; {args.config}, batch {cfg.train.batch_size}")
    print_table(
        "Speed",
        ["pass", "images", "seconds", "images/s"],
        [
            ["training (one pass)", args.images, f"{train_s:.2f}", f"{args.images / train_s:.1f}"],
            ["test (every class in one presentation)", args.test, f"{test_s:.2f}", f"{args.test / test_s:.1f}"],
        ],
    )
    # the test pass runs conv currents, the neuron and pooling too: shares are of both passes
    total = train_s + test_s
    rows = [
        [row, calls[row], f"{seconds[row]:.2f}", f"{100 * seconds[row] / total:.0f} %"]
        for _, _, row in STEPS
        if calls[row]
    ]
    print_table("Where the time goes (training and test passes)", ["step", "calls", "seconds", "share"], rows)
    save_json(
        args.json,
        {
            "machine": machine(),
            "config": args.config,
            "train_images_per_second": args.images / train_s,
            "test_images_per_second": args.test / test_s,
            "steps": {row: {"seconds": seconds[row], "calls": calls[row]} for _, _, row in STEPS},
        },
    )


if __name__ == "__main__":
    main()
