"""The CUDA kernels: they compile with nvcc, their logic (run on the CPU through a host
emulation) equals the torch path bit for bit, and on a GPU the CuPy backend equals torch."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from spikingjelly_ff import kernels
from spikingjelly_ff.functional.hebbian import ELIGIBILITY_FLOOR
from spikingjelly_ff.functional.params import NeuronParams, TraceParams
from spikingjelly_ff.kernels import cupy_backend, torch_loop

KDIR = Path(kernels.__file__).parent
CASES = [
    (NeuronParams(form="beta", beta=0.85, v_threshold=0.001), TraceParams("count", scale=10.0)),
    (NeuronParams(form="beta", beta=0.7, v_threshold=0.2, fire=">="), TraceParams("leaky", 0.85)),
    (NeuronParams(form="lif", tau=3.0, v_threshold=0.3, decay_input=False), TraceParams("hard", 0.8)),
    (NeuronParams(form="lif", tau=2.5, v_threshold=0.3, decay_input=True, v_reset=-0.1), TraceParams("leaky", 0.6)),
    (NeuronParams(form="beta", beta=0.9, v_threshold=0.05, kwta=5), TraceParams("leaky", 0.85)),
    (NeuronParams(form="beta", beta=0.85, v_threshold=0.2, v_reset=None), TraceParams("leaky", 0.85)),
    (NeuronParams(form="lif", tau=2.5, v_threshold=0.3, v_reset=None, fire=">="), TraceParams("count", scale=5.0)),
    (NeuronParams(form="beta", beta=0.9, v_threshold=0.05, v_reset=None, kwta=5), TraceParams("hard", 0.8)),
]


# nvcc and g++ are optional on a developer machine; CI sets SJFF_REQUIRE_CUDA_TOOLS=1 so that a
# missing compiler fails instead of hiding a broken kernel behind a skip.
REQUIRE_TOOLS = os.environ.get("SJFF_REQUIRE_CUDA_TOOLS") == "1"


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        if REQUIRE_TOOLS:
            pytest.fail(f"{tool} is not installed (SJFF_REQUIRE_CUDA_TOOLS=1)")
        pytest.skip(f"{tool} is not installed")


def _ptx_functions(ptx: str) -> dict[str, str]:
    """PTX text per function (``.func``/``.entry`` definitions), keyed by name."""
    out = {}
    for part in re.split(r"\n(?=(?:\.visible |\.weak )?\.(?:func|entry)\b)", ptx):
        m = re.match(r"\s*(?:\.visible |\.weak )?\.(?:func|entry)\s+(?:\([^)]*\)\s*)?(\w+)", part)
        if m:
            out[m.group(1)] = out.get(m.group(1), "") + part
    return out


@pytest.mark.parametrize("source", ["ff_neuron.cu", "ff_present.cu"])
def test_cuda_source_compiles_with_nvcc(tmp_path, source):
    _need("nvcc")
    out = tmp_path / "kernel.o"
    proc = subprocess.run(
        ["nvcc", "-c", str(KDIR / source), "-o", str(out), "-arch=sm_80", "--std=c++14"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    ptx = tmp_path / "kernel.ptx"
    subprocess.run(["nvcc", "-ptx", str(KDIR / source), "-o", str(ptx), "-arch=sm_90", "--std=c++14"], check=True)
    # Exact equality with torch needs separately rounded multiply and add: no FMA allowed in
    # our arithmetic. expf's own code (kept out of line in sjff_exp) is the one exception.
    functions = _ptx_functions(ptx.read_text())
    assert "sjff_neuron_forward" in functions and "sjff_eligibility_apply" in functions
    with_fma = sorted(name for name, body in functions.items() if "fma." in body and "sjff_exp" not in name)
    assert with_fma == []


def _nvrtc() -> ctypes.CDLL:
    """NVRTC, the runtime compiler CuPy builds RawModules with (from the nvidia-cuda-nvrtc
    wheel or a CUDA toolkit). It needs no GPU."""
    found = []
    try:
        import nvidia

        for root in nvidia.__path__:
            found += sorted(Path(root).glob("cu*/lib/libnvrtc.so.*")) + sorted(
                Path(root).glob("cuda_nvrtc/lib/libnvrtc.so.*")
            )
    except ImportError:
        pass
    for home in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda", *map(str, Path("/usr/local").glob("cuda-*"))):
        if home:
            found += sorted(Path(home).glob("lib64/libnvrtc.so.*"))
    found = [f for f in found if ".alt." not in f.name]
    if not found:
        if REQUIRE_TOOLS:
            pytest.fail("NVRTC is not installed (SJFF_REQUIRE_CUDA_TOOLS=1; pip install nvidia-cuda-nvrtc)")
        pytest.skip("NVRTC is not installed")
    lib = found[0]
    # libnvrtc opens its builtins library by name: load it first from the same folder
    for builtins in sorted(lib.parent.glob("libnvrtc-builtins.so.*")):
        if ".alt." not in builtins.name:
            ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(str(lib))


def test_cuda_source_compiles_with_nvrtc_as_cupy_does():
    """CuPy compiles ff_present.cu with ff_neuron.cu pasted in (``module_source``) with NVRTC,
    which has no math headers (nvcc includes them): the code must build there too, with the
    launcher's own options, and hold every kernel the launcher calls."""
    nvrtc = _nvrtc()
    prog = ctypes.c_void_p()
    src = cupy_backend.module_source().encode()
    assert b"#include" not in src  # the included file is pasted in: CuPy's cache sees its text
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, cupy_backend.SOURCE.name.encode(), 0, None, None) == 0
    opts = [o.encode() for o in (*cupy_backend.COMPILE_OPTIONS, "-arch=compute_80")]
    rc = nvrtc.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    ptx_size = ctypes.c_size_t()
    ptx = b""
    if rc == 0:
        nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(ptx_size))
        buf = ctypes.create_string_buffer(ptx_size.value)
        nvrtc.nvrtcGetPTX(prog, buf)
        ptx = buf.value
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    assert rc == 0, log.value.decode(errors="replace")
    entries = set(re.findall(rb"\.entry\s+(\w+)", ptx))
    assert {b"sjff_neuron_forward", b"sjff_neuron_forward_kwta", b"sjff_eligibility_apply", b"sjff_present"} <= entries


class _Args(ctypes.Structure):
    _fields_ = [
        ("form", ctypes.c_int),
        ("beta", ctypes.c_float),
        ("tau", ctypes.c_float),
        ("decay_input", ctypes.c_int),
        ("v_threshold", ctypes.c_float),
        ("v_reset", ctypes.c_float),
        ("fire_ge", ctypes.c_int),
        ("trace_kind", ctypes.c_int),
        ("trace_decay", ctypes.c_float),
        ("trace_one_minus_decay", ctypes.c_float),
        ("trace_increment", ctypes.c_float),
        ("tau_recip", ctypes.c_float),
        ("soft_reset", ctypes.c_int),
    ]


def _args(p: NeuronParams, tp: TraceParams, tau_recip: float = 0.0) -> _Args:
    """The kernel's NeuronArgs as the CuPy launch passes them, with ``tau_recip`` set (0:
    divide by tau, as torch does on the CPU)."""
    values = [x.item() for x in cupy_backend.neuron_args(p, tp)]
    values[-2] = tau_recip
    return _Args(*values)


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


@pytest.mark.parametrize("p,tp", CASES)
def test_kernel_logic_equals_torch_path(emulated, p, tp):
    g = np.random.default_rng(3)
    t, n, h = 17, 6, 24
    current = (g.normal(size=(t, n, h)) * 0.8).astype(np.float32)
    v0 = (g.normal(size=(n, h)) * 0.3).astype(np.float32)
    tr0 = g.uniform(size=(n, h)).astype(np.float32)
    # torch path
    v_t, tr_t = torch.from_numpy(v0.copy()), torch.from_numpy(tr0.copy())
    s_t, seq_t = kernels.neuron_forward(torch.from_numpy(current), v_t, tr_t, p, tp, "torch", trace_seq=True)
    # kernel, emulated on the CPU
    v_k, tr_k = v0.copy(), tr0.copy()
    s_k, seq_k = np.zeros_like(current), np.zeros_like(current)
    if p.kwta is None:
        emulated.emu_neuron_forward(
            _ptr(current), _ptr(v_k), _ptr(tr_k), _ptr(s_k), _ptr(seq_k), t, n * h, _args(p, tp)
        )
    else:
        scratch = np.zeros_like(v0)
        emulated.emu_neuron_forward_kwta(
            _ptr(current), _ptr(v_k), _ptr(tr_k), _ptr(s_k), _ptr(seq_k), _ptr(scratch), t, n, h, p.kwta, _args(p, tp)
        )
    assert 0 < s_k.sum() < s_k.size
    assert np.array_equal(s_k, s_t.numpy())
    assert np.array_equal(v_k, v_t.numpy())
    assert np.array_equal(tr_k, tr_t.numpy())
    assert np.array_equal(seq_k, seq_t.numpy())


def test_eligibility_kernel_logic_equals_torch_path(emulated):
    g = np.random.default_rng(4)
    e, w, dw = (g.normal(size=(40, 30)).astype(np.float32) for _ in range(3))
    e_t, w_t = torch.from_numpy(e.copy()), torch.from_numpy(w.copy())
    kernels.apply_delta(w_t, torch.from_numpy(dw), 0.7, 0.1, e_t, "torch")
    e_k, w_k = e.copy(), w.copy()
    emulated.emu_eligibility_apply(
        _ptr(e_k),
        _ptr(w_k),
        _ptr(dw),
        ctypes.c_longlong(e.size),
        ctypes.c_float(0.9),
        ctypes.c_float(0.1),
        ctypes.c_float(0.7),
        ctypes.c_float(ELIGIBILITY_FLOOR),
    )
    assert np.array_equal(e_k, e_t.numpy()) and np.array_equal(w_k, w_t.numpy())


def _raw(t: torch.Tensor):
    """The tensor's memory as the kernel sees it: a float pointer, whatever the strides."""
    return ctypes.cast(t.data_ptr(), ctypes.POINTER(ctypes.c_float))


def test_eligibility_kernel_on_input_major_weights(emulated):
    """The trainer keeps e and W input-major (W.T contiguous) and the delta row-major: the
    launcher must hand the kernel three buffers in one memory order."""
    from spikingjelly_ff.simulation import input_major

    g = torch.Generator().manual_seed(6)
    e, w = input_major(torch.randn(40, 30, generator=g)), input_major(torch.randn(40, 30, generator=g))
    dw = torch.randn(40, 30, generator=g)
    e_t, w_t = e.clone(), w.clone()
    kernels.apply_delta(w_t, dw, 0.7, 0.1, e_t, "torch")
    d = cupy_backend.aligned_delta(e, w, dw)
    assert d.stride() == w.stride() and torch.equal(d, dw)
    keep, tau, eta, floor = (ctypes.c_float(v) for v in (0.9, 0.1, 0.7, ELIGIBILITY_FLOOR))
    emulated.emu_eligibility_apply(_raw(e), _raw(w), _raw(d), ctypes.c_longlong(e.numel()), keep, tau, eta, floor)
    assert torch.equal(e, e_t) and torch.equal(w, w_t)
    with pytest.raises(ValueError, match="memory layout"):
        cupy_backend.aligned_delta(e.contiguous(), w, dw)


@pytest.mark.parametrize("p,tp", [c for c in CASES if c[0].form == "lif"])
def test_kernel_reciprocal_mode_equals_torch_cuda_arithmetic(emulated, monkeypatch, p, tp):
    """On CUDA, torch computes x / tau (a Python float) as x * (1f / tau); the launcher sets
    tau_recip so the kernel does the same. Checked here against that arithmetic in torch."""
    inv = np.float32(1.0) / np.float32(p.tau)

    def charge(v, x, q):
        if q.decay_input:
            return v + (x - (v - q.v_rest)) * float(inv)
        return v - (v - q.v_rest) * float(inv) + x

    monkeypatch.setattr(torch_loop, "charge", charge)
    g = np.random.default_rng(8)
    t, n, h = 17, 6, 24
    current = (g.normal(size=(t, n, h)) * 0.8).astype(np.float32)
    v0, tr0 = (g.normal(size=(n, h)) * 0.3).astype(np.float32), g.uniform(size=(n, h)).astype(np.float32)
    v_t, tr_t = torch.from_numpy(v0.copy()), torch.from_numpy(tr0.copy())
    s_t, _ = torch_loop._neuron_forward_generic(torch.from_numpy(current), v_t, tr_t, p, tp, False)
    v_k, tr_k, s_k, seq_k = v0.copy(), tr0.copy(), np.zeros_like(current), np.zeros_like(current)
    args = _args(p, tp, float(inv))
    emulated.emu_neuron_forward(_ptr(current), _ptr(v_k), _ptr(tr_k), _ptr(s_k), _ptr(seq_k), t, n * h, args)
    assert np.array_equal(s_k, s_t.numpy()) and np.array_equal(v_k, v_t.numpy())
    # and the mode matters: division gives other membranes
    v_d, tr_d = v0.copy(), tr0.copy()
    emulated.emu_neuron_forward(_ptr(current), _ptr(v_d), _ptr(tr_d), _ptr(s_k), _ptr(seq_k), t, n * h, _args(p, tp))
    assert not np.array_equal(v_d, v_k)


def test_auto_backend_is_torch_without_cuda():
    assert kernels.resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(RuntimeError, match="cupy"):
        kernels.resolve_backend("cupy", "cpu")
    with pytest.raises(ValueError):
        kernels.resolve_backend("triton", "cpu")


gpu = pytest.mark.skipif(not (torch.cuda.is_available() and cupy_backend.available()), reason="needs CUDA and CuPy")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("p,tp", CASES)
def test_cupy_kernel_equals_torch_on_gpu(p, tp):
    g = torch.Generator(device="cuda").manual_seed(5)
    t, n, h = 23, 64, 200
    current = torch.randn(t, n, h, generator=g, device="cuda") * 0.8
    v0 = torch.randn(n, h, generator=g, device="cuda") * 0.3
    tr0 = torch.rand(n, h, generator=g, device="cuda")
    v_a, tr_a = v0.clone(), tr0.clone()
    s_a, seq_a = kernels.neuron_forward(current, v_a, tr_a, p, tp, "torch", trace_seq=True)
    v_b, tr_b = v0.clone(), tr0.clone()
    s_b, seq_b = kernels.neuron_forward(current, v_b, tr_b, p, tp, "cupy", trace_seq=True)
    torch.cuda.synchronize()
    assert torch.equal(s_a, s_b) and torch.equal(v_a, v_b) and torch.equal(tr_a, tr_b) and torch.equal(seq_a, seq_b)


@gpu
@pytest.mark.gpu
def test_cupy_training_equals_torch_training_on_gpu():
    """Same input spikes -> same spikes and (float-close) weights through a whole batched run."""
    import copy

    from spikingjelly_ff.learning.engine import SpikingTrainer
    from spikingjelly_ff.runs.build import build_model
    from spikingjelly_ff.runs.config import config_from_dict

    cfg = config_from_dict(
        {"model": {"kind": "spiking", "layers": [200, 100], "init": "normal"}, "train": {"learner": "hebbian"}}
    )
    a = build_model(cfg.model, 784, 10, 0, backend="torch").cuda()
    b = copy.deepcopy(a)
    b.set_backend("cupy")
    ta, tb = SpikingTrainer(a, cfg.train.hebbian, device="cuda"), SpikingTrainer(b, cfg.train.hebbian, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(5):
        x = torch.rand(50, 784, generator=g, device="cuda")
        lab = torch.randint(0, 10, (50,), generator=g, device="cuda")
        y = (torch.rand(50, generator=g, device="cuda") < 0.5).float()
        spikes = a.encode(a.rates(x, lab), g)
        assert torch.equal(ta.train_batch(x, lab, y, spikes=spikes), tb.train_batch(x, lab, y, spikes=spikes))
    for la, lb in zip(a.layers, b.layers):
        torch.testing.assert_close(la.weight, lb.weight, rtol=1e-5, atol=1e-5)
