"""The examples run and do what they say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_spikingjelly_style_example_learns():
    out = _run("examples/spikingjelly_style.py", "--samples", "2000", "--test", "100")
    acc = float(out.strip().split()[-1])
    assert acc > 0.3  # chance is 0.1


def test_edge_runtime_example(spiking_run, tmp_path):
    from spikingjelly_ff.export.spike import export_spike
    from spikingjelly_ff.runs.checkpoint import load_model

    net, cfg, meta = load_model(spiking_run / "model")
    art = export_spike(
        net,
        tmp_path / "m.nir",
        meta["image_shape"],
        hebbian=cfg.train.hebbian,
        evaluation=cfg.eval.params,
        name=cfg.name,
    )
    out = _run("examples/edge_runtime.py", str(art), "--out", str(tmp_path / "learned.nir"))
    assert "accuracy before learning" in out and (tmp_path / "learned.nir").is_file()
