"""Fixtures of the library tests: the shipped MNIST subset and small models trained on it."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "tests" / "data" / "mnist-mini"


def mini_config(kind: str, **overrides):
    """A run config on the MNIST subset: ``analog`` (a 2-layer symmetric net) or ``spiking``
    (the paper's online symmetric layer, which learns fastest per sample)."""
    from spikingjelly_ff.runs.config import load_config

    base = {"analog": "paper/analog-symmetric", "spiking": "paper/hebbian-online-symmetric"}[kind]
    sets = [f"data.dataset={MINI}", "data.download=false", "train.epochs=1"]
    if kind == "analog":
        sets += ["model.layers=[128, 64]", "model.normalize=true", "train.optimizer.lr=0.001", "train.negatives=paired"]
    sets += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(base, sets)


@pytest.fixture(scope="session")
def mini():
    return MINI


@pytest.fixture(scope="session")
def analog_run(tmp_path_factory):
    """A 2-layer analog model trained 3 epochs on the subset; returns the run directory."""
    from spikingjelly_ff.runs.train import train

    out = tmp_path_factory.mktemp("analog_run")
    train(mini_config("analog", **{"train.epochs": 3}), out, log=lambda s: None, progress=False)
    return out


@pytest.fixture(scope="session")
def spiking_run(tmp_path_factory):
    """The paper's online spiking layer trained one epoch on the subset."""
    from spikingjelly_ff.runs.train import train

    out = tmp_path_factory.mktemp("spiking_run")
    train(mini_config("spiking"), out, log=lambda s: None, progress=False)
    return out


@pytest.fixture(scope="session")
def emulated(tmp_path_factory):
    """The CUDA kernels compiled for the CPU (``kernels/host_emulation.cpp``), as a ctypes
    library. Without g++ the test skips, or fails where CI requires the tool
    (``SJFF_REQUIRE_CUDA_TOOLS=1``)."""
    if shutil.which("g++") is None:
        if os.environ.get("SJFF_REQUIRE_CUDA_TOOLS") == "1":
            pytest.fail("g++ is not installed (SJFF_REQUIRE_CUDA_TOOLS=1)")
        pytest.skip("g++ is not installed")
    src = ROOT / "spikingjelly_ff" / "kernels" / "host_emulation.cpp"
    lib = tmp_path_factory.mktemp("emu") / "libsjff_emu.so"
    flags = ["-std=c++20", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-pthread"]
    subprocess.run(["g++", *flags, str(src), "-o", str(lib)], check=True)
    return ctypes.CDLL(str(lib))
