"""Helpers of the server/client tests: small trained models, repositories, tokens.

Models are trained with the real CLI (``sjff train`` + ``sjff export``) on the shipped MNIST
subset (tests/data/mnist-mini: no download) and cached under
``~/.cache/spikingjelly-ff/test-models/<hash of the library source>``, so a change to the
library retrains them and repeated runs start fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "sjff-test-token-0123456789abcdef"
CACHE = Path(os.environ.get("SJFF_TEST_MODEL_CACHE", Path.home() / ".cache" / "spikingjelly-ff" / "test-models"))

MINI = ROOT / "tests" / "data" / "mnist-mini"
_DATA = [f"data.dataset={MINI}", "data.download=false"]
# a 2-layer analog net (exercises multi-layer export and learning) and the paper's online spiking layer
ANALOG = ["paper/analog-symmetric", *_DATA, "train.epochs=3", "model.layers=[128, 64]", "model.normalize=true"]
ANALOG += ["train.optimizer.lr=0.001", "train.negatives=paired"]
SPIKE = ["paper/hebbian-online-symmetric", *_DATA, "train.epochs=1", "train.limit=1000"]


def _source_hash() -> str:
    h = hashlib.sha256()
    sources = sorted((ROOT / "spikingjelly_ff").rglob("*.py")) + sorted(
        (ROOT / "spikingjelly_ff" / "configs").rglob("*.yaml")
    )
    for p in sources:
        h.update(p.relative_to(ROOT).as_posix().encode())
        h.update(p.read_bytes())
    h.update(json.dumps([ANALOG, SPIKE]).encode())
    return h.hexdigest()[:16]


def _sjff(*args: str) -> None:
    cmd = [sys.executable, "-c", "import sys; from spikingjelly_ff.cli import main; sys.exit(main())", *args]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=600)


def _train(spec: list[str], fmt: str, out: Path, work: Path) -> None:
    sets = [a for s in spec[1:] for a in ("--set", s)]
    _sjff("train", spec[0], *sets, "--out", str(work), "--quiet")
    _sjff("export", str(work / "model"), "--format", fmt, "--out", str(out))


def trained_models() -> dict[str, Path]:
    """Paths of a small analog ONNX export and a small spike (.nir) export."""
    d = CACHE / _source_hash()
    models = {"analog": d / "analog.onnx", "spike": d / "spike.nir"}
    if all(p.is_file() for p in models.values()):
        return models
    work = d.with_name(d.name + f".work-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _train(ANALOG, "onnx", work / "analog.onnx", work / "analog-run")
    _train(SPIKE, "spike", work / "spike.nir", work / "spike-run")
    d.mkdir(parents=True, exist_ok=True)
    for name, path in models.items():
        os.replace(work / path.name, path)
    shutil.rmtree(work, ignore_errors=True)
    # keep the cache small: the three newest model sets
    old = sorted((p for p in CACHE.iterdir() if p.is_dir() and ".work-" not in p.name), key=lambda p: p.stat().st_mtime)
    for stale in old[:-3]:
        shutil.rmtree(stale, ignore_errors=True)
    return models


def mnist_test(n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` MNIST test images (uint8 [n, 784]) and labels, from the shipped subset."""
    from spikingjelly_ff.runs.data import load_split

    split = load_split(str(MINI), "test")
    return np.ascontiguousarray(split.images[:n], dtype=np.uint8), np.asarray(split.labels[:n], dtype=np.int64)


def make_repository(root: Path, models: dict[str, Path], configs: dict[str, dict] | None = None) -> Path:
    """``root/<name>/1/model.<ext>`` for each ``name -> artefact`` (+ ``config.json``)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, src in models.items():
        vdir = root / name / "1"
        vdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, vdir / ("model.onnx" if src.suffix == ".onnx" else "model.nir"))
        if configs and name in configs:
            (root / name / "config.json").write_text(json.dumps(configs[name]))
    return root


def write_token(path: Path, token: str = TOKEN) -> Path:
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def as_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / np.float32(255.0)
