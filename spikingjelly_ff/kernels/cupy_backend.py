"""CuPy launchers for the kernels in ``ff_neuron.cu`` (GPU only).

Tensors stay torch tensors: they cross to CuPy through DLPack without copies, and the
kernels run on torch's current CUDA stream.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from ..params import NeuronParams, TraceParams

SOURCE = Path(__file__).with_name("ff_neuron.cu")
TRACE_CODES = {"count": 0, "leaky": 1, "hard": 2, "none": 3}
THREADS = 256


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

    return cupy.RawModule(code=SOURCE.read_text(), options=("--std=c++14",))


def _cp(t: torch.Tensor):
    import cupy

    return cupy.from_dlpack(t.detach())


def _stream():
    import cupy

    return cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)


def _params(p: NeuronParams, tp: TraceParams) -> tuple:
    f = np.float32
    return (
        np.int32(0 if p.form == "beta" else 1),
        f(p.beta),
        f(p.tau),
        np.int32(p.decay_input),
        f(p.v_threshold),
        f(p.v_reset),
        np.int32(p.fire == ">="),
        np.int32(TRACE_CODES[tp.kind]),
        f(tp.decay),
        f(tp.one_minus_decay),
        f(tp.increment),
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
    current = current.contiguous()
    t_steps, n, h = current.shape
    spikes = torch.empty_like(current)
    seq = torch.empty_like(current) if trace_seq else None
    mod = _module()
    with _stream():
        if p.kwta is None or p.kwta >= h:
            grid = ((n * h + THREADS - 1) // THREADS,)
            mod.get_function("sjff_neuron_forward")(
                grid,
                (THREADS,),
                (
                    _cp(current),
                    _cp(v),
                    _cp(trace),
                    _cp(spikes),
                    _cp(seq) if seq is not None else 0,
                    np.int32(t_steps),
                    np.int32(n * h),
                    *_params(p, tp),
                ),
            )
        else:
            scratch = torch.empty_like(v)
            grid = ((n + 63) // 64,)
            mod.get_function("sjff_neuron_forward_kwta")(
                grid,
                (64,),
                (
                    _cp(current),
                    _cp(v),
                    _cp(trace),
                    _cp(spikes),
                    _cp(seq) if seq is not None else 0,
                    _cp(scratch),
                    np.int32(t_steps),
                    np.int32(n),
                    np.int32(h),
                    np.int32(p.kwta),
                    *_params(p, tp),
                ),
            )
    return spikes, seq


def eligibility_apply(e: torch.Tensor, w: torch.Tensor, dw: torch.Tensor, tau: float, eta: float) -> None:
    """In place: e <- (1 - tau) e + tau dW; w <- w + eta e, in one pass."""
    n = e.numel()
    grid = ((n + THREADS - 1) // THREADS,)
    with _stream():
        _module().get_function("sjff_eligibility_apply")(
            grid,
            (THREADS,),
            (
                _cp(e),
                _cp(w),
                _cp(dw.contiguous()),
                np.int64(n),
                np.float32(1.0 - tau),
                np.float32(tau),
                np.float32(eta),
            ),
        )
