"""Fixtures of the library tests: the shipped MNIST subset and small models trained on it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "tests" / "data" / "mnist-mini"


@contextlib.contextmanager
def per_step_path():
    """``SJFF_COMPILED=0`` for the block: ``run_layer`` then runs the per-step reference path
    rather than the compiled batch presentation (a reference that shares no compiled code)."""
    before = os.environ.get("SJFF_COMPILED")
    os.environ["SJFF_COMPILED"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SJFF_COMPILED", None)
        else:
            os.environ["SJFF_COMPILED"] = before


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


def stream_epoch_of(trainer, batches: list, cfg, **hooks) -> tuple[int, int]:
    """One ``stream_epoch`` of ``batches`` ``[(images, labels, rows)]`` through ``trainer``, with
    fixed random streams and ``hooks`` (``ahead=``, ``rows=``): (judged right, judged)."""
    import torch
    from tqdm import tqdm

    from spikingjelly_ff.runs.samples import stream_epoch

    gen, sample_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    bar = tqdm(batches, disable=True)
    return stream_epoch(bar, trainer.train_batch, cfg, 10, (28, 28), gen, sample_gen, None, **hooks)


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


def _struct(values: tuple) -> ctypes.Structure:
    """A ctypes struct laid out like a kernel's argument struct, from the launcher's tuple."""
    import numpy as np

    fields = [(f"f{i}", ctypes.c_int if isinstance(v, np.int32) else ctypes.c_float) for i, v in enumerate(values)]
    cls = type("Args", (ctypes.Structure,), {"_fields_": fields})
    return cls(*[int(v) if isinstance(v, np.int32) else float(v) for v in values])


def run_emulated(emulated, launch, threads: int = 1) -> None:
    """Run one ``sjff_present`` launch (``cupy_present.PresentLaunch`` built on CPU tensors) in
    the host emulation, ``threads`` simulated threads per block."""
    from spikingjelly_ff.functional.params import NeuronParams, TraceParams
    from spikingjelly_ff.kernels.cupy_backend import neuron_args

    a = launch.args
    k = 22 + len(neuron_args(NeuronParams(), TraceParams()))  # the NeuronArgs end here
    pointers = [ctypes.c_void_p(int(q)) for q in a[:11]]
    t, n, d, h, hb, w_sh, w_sd, first, rest, silent, chunk = (int(q) for q in a[11:22])
    touched = emulated.emu_present(
        *pointers, launch.blocks, threads, ctypes.c_longlong(launch.shared_bytes // 4), t, n, d, h, hb,
        ctypes.c_longlong(w_sh), ctypes.c_longlong(w_sd), first, rest, silent, chunk, _struct(a[22:k]),
        _struct(a[k:]),
    )  # fmt: skip
    assert touched == 0, f"the kernel wrote {touched} floats past the shared memory the launcher gave it"
    assert int(launch.keep[-1][0]) == 0  # the barrier's count is back to 0 for the next launch


def emulated_present(emulated, blocks: int, threads: int = 1):
    """``kernels.present`` for CPU tensors: the launch ``cupy_present`` builds for a GPU with
    ``blocks`` multiprocessors, run in the host emulation."""
    from spikingjelly_ff.kernels import cupy_present

    def present(x, w, v, p, tp, learn=None, rest_steps: int = 0):
        launch = cupy_present.present_launch(x, w, v, p, tp, learn, rest_steps, blocks)
        run_emulated(emulated, launch, threads)
        if launch.v is not v:
            v.copy_(launch.v)
        return launch.spikes, launch.trace

    return present
