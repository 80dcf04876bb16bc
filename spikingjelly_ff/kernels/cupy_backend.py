"""CuPy launchers for the per-step kernels in ``ff_neuron.cu`` (GPU only); the module they
are compiled in, shared with ``cupy_present`` (the one-launch presentation).

Tensors stay torch tensors: they cross to CuPy through DLPack without copies, and the
kernels run on torch's current CUDA stream.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from spikingjelly_ff.functional.hebbian import ELIGIBILITY_FLOOR
from spikingjelly_ff.functional.params import NeuronParams, TraceParams

# ff_present.cu includes ff_neuron.cu: one module holds every kernel
SOURCE = Path(__file__).with_name("ff_present.cu")
INCLUDED = Path(__file__).with_name("ff_neuron.cu")
TRACE_CODES = {"count": 0, "leaky": 1, "hard": 2, "none": 3}
THREADS = 256
COMPILE_OPTIONS = ("--std=c++14",)


def module_source() -> str:
    """The module's CUDA code with ``ff_neuron.cu`` pasted where ``ff_present.cu`` includes it:
    CuPy keys its on-disk cache of compiled modules on the code string alone, so an included
    file that changed would otherwise load the old binary."""
    include = f'#include "{INCLUDED.name}"'
    code = SOURCE.read_text()
    if include not in code:
        raise RuntimeError(f"{SOURCE.name} no longer includes {INCLUDED.name}")
    return code.replace(include, INCLUDED.read_text(), 1)


def available() -> bool:
    """True when CuPy imports and sees a CUDA device."""
    try:
        import cupy
    except ImportError:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any CUDA runtime failure means "not available"
        return False


@functools.cache
def _module():
    import cupy

    return cupy.RawModule(code=module_source(), options=COMPILE_OPTIONS)


def device_ptr(t: torch.Tensor) -> np.uint64:
    """A kernel's pointer argument: the tensor's device address. CuPy packs a numpy uint64 as
    8 bytes, which is a pointer; no DLPack wrapper per call (learning launches once per step).
    The caller keeps ``t`` alive for the launch."""
    return np.uint64(t.data_ptr())


def _dense(t: torch.Tensor) -> bool:
    """Row-major or (2-D) column-major without gaps: flat index i covers every element once."""
    return t.is_contiguous() or (t.dim() == 2 and t.t().is_contiguous())


def aligned_delta(e: torch.Tensor, w: torch.Tensor, dw: torch.Tensor) -> torch.Tensor:
    """``dw`` laid out in memory like ``e`` and ``w`` (which must share one dense layout), so
    that a kernel walking the three buffers by flat index pairs equal elements."""
    if e.shape != w.shape or dw.shape != w.shape:
        raise ValueError(f"shapes differ: e {tuple(e.shape)}, w {tuple(w.shape)}, dw {tuple(dw.shape)}")
    if e.stride() != w.stride() or not _dense(w):
        raise ValueError(f"e and w need one dense memory layout, got strides {e.stride()} and {w.stride()}")
    if dw.stride() == w.stride():
        return dw
    return torch.empty_like(w).copy_(dw)  # empty_like keeps the strides of a dense tensor


@functools.cache
def kernel(name: str):
    return _module().get_function(name)


@functools.cache
def _external_stream(ptr: int):
    import cupy

    return cupy.cuda.ExternalStream(ptr)


def stream(device: torch.device | None = None):
    """torch's current stream (of ``device``, default the current one) as a CuPy stream
    (cached: learning calls this once per step)."""
    return _external_stream(torch.cuda.current_stream(device).cuda_stream)


def neuron_args(p: NeuronParams, tp: TraceParams) -> tuple:
    f = np.float32
    return (
        np.int32(0 if p.form == "beta" else 1),
        f(p.beta),
        f(p.tau),
        np.int32(p.decay_input),
        f(p.v_threshold),
        f(p.v_rest),
        np.int32(p.fire == ">="),
        np.int32(TRACE_CODES[tp.kind]),
        f(tp.decay),
        f(tp.one_minus_decay),
        f(tp.increment),
        # torch on CUDA divides by a Python scalar as a multiply by its float32 reciprocal
        f(1.0) / f(p.tau),
        np.int32(p.soft_reset),
    )


def neuron_forward(
    current: torch.Tensor,
    v: torch.Tensor,
    trace: torch.Tensor,
    p: NeuronParams,
    tp: TraceParams,
    trace_seq: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run T steps in one launch. ``current`` ``[T, N, H]``; ``v``/``trace`` ``[N, H]`` updated
    in place. Returns spikes ``[T, N, H]`` and, if asked, the trace after each step."""
    if current.dtype != torch.float32 or not current.is_cuda:
        raise TypeError("the cupy backend needs float32 CUDA tensors")
    if not (v.is_contiguous() and trace.is_contiguous()):
        # the kernel indexes raw memory: run on contiguous copies, then write back
        v_c, tr_c = v.contiguous(), trace.contiguous()
        out = neuron_forward(current, v_c, tr_c, p, tp, trace_seq)
        v.copy_(v_c)
        trace.copy_(tr_c)
        return out
    current = current.contiguous()
    t_steps, n, h = current.shape
    spikes = torch.empty_like(current)
    seq = torch.empty_like(current) if trace_seq else None
    with stream():
        if p.kwta is None or p.kwta >= h:
            grid = ((n * h + THREADS - 1) // THREADS,)
            kernel("sjff_neuron_forward")(
                grid,
                (THREADS,),
                (
                    device_ptr(current),
                    device_ptr(v),
                    device_ptr(trace),
                    device_ptr(spikes),
                    device_ptr(seq) if seq is not None else np.uint64(0),
                    np.int32(t_steps),
                    np.int32(n * h),
                    *neuron_args(p, tp),
                ),
            )
        else:
            scratch = torch.empty_like(v)
            grid = ((n + 63) // 64,)
            kernel("sjff_neuron_forward_kwta")(
                grid,
                (64,),
                (
                    device_ptr(current),
                    device_ptr(v),
                    device_ptr(trace),
                    device_ptr(spikes),
                    device_ptr(seq) if seq is not None else np.uint64(0),
                    device_ptr(scratch),
                    np.int32(t_steps),
                    np.int32(n),
                    np.int32(h),
                    np.int32(p.kwta),
                    *neuron_args(p, tp),
                ),
            )
    return spikes, seq


def eligibility_apply(e: torch.Tensor, w: torch.Tensor, dw: torch.Tensor, tau: float, eta: float) -> None:
    """In place: e <- (1 - tau) e + tau dW (0 below ``ELIGIBILITY_FLOOR``); w <- w + eta e, in
    one pass.

    The kernel walks raw memory, so ``e``, ``w`` and the delta must share one memory order:
    the trainer keeps ``e`` and ``w`` input-major (``w.T`` contiguous) while a delta is
    usually row-major."""
    dw = aligned_delta(e, w, dw)
    n = e.numel()
    grid = ((n + THREADS - 1) // THREADS,)
    with stream():
        kernel("sjff_eligibility_apply")(
            grid,
            (THREADS,),
            (
                device_ptr(e),
                device_ptr(w),
                device_ptr(dw),
                np.int64(n),
                np.float32(1.0 - tau),
                np.float32(tau),
                np.float32(eta),
                np.float32(ELIGIBILITY_FLOOR),
            ),
        )
