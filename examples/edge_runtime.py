"""The torch-free runtime on an edge device: load an exported spiking model, classify, keep
learning from labelled samples, save. Needs numpy and h5py only.

    sjff export RUN/model --format spike --out model.nir
    python examples/edge_runtime.py model.nir [--data tests/data/mnist-mini]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from spikingjelly_ff.runs.data import load_split  # numpy-only
from spikingjelly_ff.runtime import SpikeModel

MINI = Path(__file__).resolve().parents[1] / "tests" / "data" / "mnist-mini"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a .nir spike artefact written by `sjff export --format spike`")
    ap.add_argument("--data", default=str(MINI))
    ap.add_argument("--out", default=None, help="where to save the model after learning")
    args = ap.parse_args()
    model = SpikeModel.load(args.model)
    test = load_split(args.data, "test")
    images = test.images.astype(np.float32) / 255.0
    before = float((model.predict(images, seed=0) == test.labels).mean())
    # learn on-line from the first half, one labelled image at a time (positive samples)
    half = len(images) // 2
    for i in range(half):
        model.learn(images[i : i + 1], test.labels[i : i + 1], np.ones(1), seed=i)
    after = float((model.predict(images[half:], seed=0) == test.labels[half:]).mean())
    print(f"accuracy before learning {before:.3f}; on the unseen half after {half} updates {after:.3f}")
    if args.out:
        print(f"saved {model.save(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
