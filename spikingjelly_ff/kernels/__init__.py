"""The hot loops, one module per backend, side by side:

* ``numpy_loop``: numpy arrays (the torch-free runtime; batch-1 training on the CPU);
* ``torch_loop``: torch tensors on any device;
* ``cupy_backend``: our CUDA kernels (``ff_neuron.cu``) on torch's CUDA tensors.

``neuron_forward`` runs a layer's neurons over T steps given the input currents;
``eligibility_apply`` applies a Hebbian delta through the eligibility trace. All backends give
identical results for identical inputs (tests/library/test_kernels.py). The torch and CuPy
modules are loaded by name on first use with a tensor, so code that only passes numpy arrays
(the runtime) never imports torch.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

from ..dynamics import NeuronParams, TraceParams
from . import numpy_loop

BACKENDS = ("torch", "cupy")

__all__ = ["BACKENDS", "eligibility_apply", "neuron_forward", "resolve_backend"]


def _backend(name: str) -> ModuleType:
    """``torch_loop`` or ``cupy_backend``, imported on first use."""
    return importlib.import_module(f"{__name__}.{'cupy_backend' if name == 'cupy' else 'torch_loop'}")


def resolve_backend(name: str, device) -> str:
    """Turn ``auto``/``torch``/``cupy`` into the backend to use on ``device`` (a torch.device or
    a string such as ``"cuda:0"``)."""
    on_cuda = str(getattr(device, "type", device)).split(":")[0] == "cuda"
    if name == "auto":
        return "cupy" if on_cuda and _backend("cupy").available() else "torch"
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {('auto', *BACKENDS)}")
    if name == "cupy" and not (on_cuda and _backend("cupy").available()):
        raise RuntimeError("backend 'cupy' needs CuPy and a CUDA device (pip install spikingjelly-ff[cuda])")
    return name


def neuron_forward(
    current, v, trace, p: NeuronParams, tp: TraceParams, backend: str = "torch", trace_seq: bool = False
):
    """T steps of charge/fire/reset/trace. ``current`` ``[T, N, H]``; ``v`` and ``trace``
    ``[N, H]`` (contiguous) are updated in place. Returns float spikes ``[T, N, H]`` and, with
    ``trace_seq``, the trace after every step ``[T, N, H]`` (else ``None``). numpy arrays run
    the numpy loop whatever ``backend`` says."""
    if isinstance(current, np.ndarray):
        return numpy_loop.neuron_forward(current, v, trace, p, tp, trace_seq)
    return _backend(backend).neuron_forward(current, v, trace, p, tp, trace_seq)


def eligibility_apply(e, w, dw, tau: float, eta: float, backend: str = "torch") -> None:
    """In place: e <- (1 - tau) e + tau dW, then w <- w + eta e (torch tensors)."""
    _backend(backend).eligibility_apply(e, w, dw, tau, eta)
