"""Pure per-step dynamics of a spiking FF layer: membrane charge, firing, reset, traces.

These functions fix the arithmetic (operation order and rounding) that every backend
reproduces exactly: the torch reference, the fused torch engine, the CuPy kernels and the
numpy runtime. Each op rounds to float32 on its own; no fused multiply-add. They accept
torch tensors or numpy arrays.

Shapes: ``v``, ``x`` (input current), ``spike``, ``trace`` are ``[N, H]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spikingjelly_ff.functional import _array
from spikingjelly_ff.functional.params import NeuronParams, TraceParams

Tensor = Any  # a torch tensor or a numpy array

__all__ = ["NeuronParams", "TraceParams", "charge", "fire", "kwta_mask", "reset", "trace_step"]


def charge(v: Tensor, x: Tensor, p: NeuronParams) -> Tensor:
    """Membrane after integrating input current ``x``."""
    if p.form == "beta":
        return v * p.beta + x
    if p.decay_input:
        return v + (x - (v - p.v_rest)) / p.tau
    return v - (v - p.v_rest) / p.tau + x


def kwta_mask(v: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` largest entries of each row of ``v`` (ties included)."""
    h = v.shape[-1]
    if k >= h:
        return _array.ones_bool(v)
    if _array.is_torch(v):
        kth = v.topk(k, dim=-1).values[..., -1:]
    else:
        kth = np.partition(v, h - k, axis=-1)[..., h - k : h - k + 1]
    return v >= kth


def fire(v: Tensor, p: NeuronParams) -> Tensor:
    """Boolean spikes of membrane ``v``."""
    spike = v > p.v_threshold if p.fire == ">" else v >= p.v_threshold
    if p.kwta is not None:
        spike = spike & kwta_mask(v, p.kwta)
    return spike


def reset(v: Tensor, spike: Tensor, p: NeuronParams) -> Tensor:
    """Where a spike occurred: V = v_reset (hard reset), or V - v_threshold (soft reset,
    ``v_reset=None``)."""
    if p.v_reset is None:
        return _array.where(spike, v - p.v_threshold, v)
    return _array.where(spike, p.v_reset, v)


def trace_step(trace: Tensor, spike: Tensor, p: TraceParams) -> Tensor:
    """Trace after one step with boolean ``spike``."""
    s = _array.astype_like(spike, trace)
    if p.kind == "count":
        return trace + s * p.increment
    if p.kind == "leaky":
        return trace * p.decay + s * p.one_minus_decay
    if p.kind == "hard":
        return _array.where(spike, 1.0, trace * p.decay)
    return s
