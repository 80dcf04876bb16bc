"""The hot loops, one module per backend, side by side:

* ``numpy_loop``: numpy arrays (the torch-free runtime; batch-1 training on the CPU);
* ``torch_loop``: torch tensors on any device;
* ``cupy_backend``: our CUDA kernels (``ff_neuron.cu``) on torch's CUDA tensors, and
  ``cupy_present``: a whole presentation of a layer in one launch (``ff_present.cu``).

``neuron_forward`` runs a layer's neurons over T steps given the input currents;
``apply_delta`` applies a Hebbian delta, directly or through the eligibility trace. All backends give
identical results for identical inputs (tests/library/test_kernels.py). The torch and CuPy
modules are loaded by name on first use with a tensor, so code that only passes numpy arrays
(the runtime) never imports torch.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

from spikingjelly_ff.functional.dynamics import NeuronParams, TraceParams
from spikingjelly_ff.kernels import numpy_loop

BACKENDS = ("torch", "cupy")

__all__ = [
    "BACKENDS",
    "apply_delta",
    "neuron_forward",
    "present",
    "present_fits",
    "present_rows",
    "resolve_backend",
]


def _load(module: str) -> ModuleType:
    """A torch or CuPy module of this package, imported by name on first use."""
    return importlib.import_module(f"{__name__}.{module}")


def _backend(name: str) -> ModuleType:
    """``torch_loop`` or ``cupy_backend``, imported on first use."""
    return _load("cupy_backend" if name == "cupy" else "torch_loop")


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


def apply_delta(w, dw, eta: float, tau: float | None = None, e=None, backend: str = "torch") -> None:
    """Apply a Hebbian delta ``dw`` ``[H, D]`` to ``w`` in place, the one way every learner
    does it: w <- w + eta dW when ``tau`` is None, else through the eligibility trace ``e``
    (in place too): e <- (1 - tau) e + tau dW, then w <- w + eta e (a fused CUDA kernel with
    ``backend='cupy'``)."""
    if tau is None:
        w += dw * eta
    elif isinstance(w, np.ndarray):
        numpy_loop.eligibility_apply(e, w, dw, tau, eta)
    else:
        _backend(backend).eligibility_apply(e, w, dw, tau, eta)


def present_fits(
    backend: str, x, w, v, e, p: NeuronParams, goodness_kind: str, split: bool, learns: bool = True
) -> bool:
    """Whether a presentation of spikes ``x`` ``[T, N, D]`` to weights ``w`` ``[H, D]`` with
    membranes ``v`` (and eligibility ``e``, or None) runs as one launch
    (``cupy_present.present``): the CuPy backend, float32 tensors on one CUDA device, and a
    layer it supports (one that does not ``learn`` needs less shared memory)."""
    if backend != "cupy" or isinstance(w, np.ndarray) or not w.is_cuda:
        return False
    cp = _load("cupy_present")
    if not cp.tensors_fit(x, w, v, e):
        return False
    _, n, d = x.shape
    device = w.device.index or 0
    return cp.present_supported(p, goodness_kind, n, d, w.shape[0], e is not None, device, split, learns)


def present_rows(backend: str, w, p: NeuronParams, rows: int, d: int, least: int = 1) -> int:
    """Samples per launch for presenting ``d`` inputs to weights ``w`` ``[H, d]`` without
    learning (``cupy_present.present``): ``rows`` or the largest of its halvings that fits,
    else ``least`` if it fits; 0 when none does, when a block would hold more neurons than
    ``cupy_present.INFERENCE_NEURONS_PER_BLOCK`` (the per-step path is faster there), or when
    the layer is not float32 on a CUDA device with the CuPy backend."""
    if backend != "cupy" or isinstance(w, np.ndarray) or not w.is_cuda:
        return 0
    cp = _load("cupy_present")
    if not cp.tensors_fit(w, w, w):
        return 0
    return cp.inference_rows(p, rows, d, w.shape[0], w.device.index or 0, least)


def present(x, w, v, p: NeuronParams, tp: TraceParams, learn=None, rest_steps: int = 0):
    """One presentation of a layer in one launch (``cupy_present.present``)."""
    return _load("cupy_present").present(x, w, v, p, tp, learn, rest_steps)
