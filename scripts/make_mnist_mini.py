"""Rebuild tests/data/mnist-mini: the first 2,000 train and 500 test MNIST images, unchanged."""

from pathlib import Path

from spikingjelly_ff.runs.data import load_split, write_idx

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "mnist-mini"

if __name__ == "__main__":
    for split, prefix, n in (("train", "train", 2000), ("test", "t10k", 500)):
        s = load_split("mnist", split, download=True)
        write_idx(OUT / f"{prefix}-images-idx3-ubyte.gz", s.images[:n].reshape(n, *s.shape))
        write_idx(OUT / f"{prefix}-labels-idx1-ubyte.gz", s.labels[:n].astype("uint8"))
    print(f"wrote {OUT}")
