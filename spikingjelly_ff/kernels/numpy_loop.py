"""The neuron loop on numpy arrays (the torch-free runtime's, and batch-1 training's).

Same values as ``functional.dynamics`` written as in-place ufuncs: a numpy call on a few
hundred floats costs about a microsecond, so the op count is what matters. Identical spikes
to the torch loop (``torch_loop``) for identical currents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spikingjelly_ff.functional.dynamics import NeuronParams, TraceParams, charge, fire, reset, trace_step
from spikingjelly_ff.functional.hebbian import ELIGIBILITY_FLOOR
from spikingjelly_ff.kernels import numba_neuron

__all__ = ["eligibility_apply", "neuron_forward"]


def neuron_forward(current, v, trace, p: NeuronParams, tp: TraceParams, trace_seq: bool = False):
    """T steps of charge/fire/reset/trace. ``current`` ``[T, N, H]``; ``v`` and ``trace`` ``[N, H]``
    are updated in place. Returns float spikes ``[T, N, H]`` and, with ``trace_seq``, the trace
    after every step ``[T, N, H]`` (else ``None``)."""
    if numba_neuron.supported(p, current, v, trace):  # one compiled pass, the same values
        return numba_neuron.neuron_forward(current, v, trace, p, tp, trace_seq)
    spikes = np.empty_like(current)
    seq = np.empty_like(current) if trace_seq else None
    if p.kwta is not None and p.kwta < v.shape[-1]:
        for t in range(current.shape[0]):
            vt = charge(v, current[t], p)
            s = fire(vt, p)
            v[...] = reset(vt, s, p)
            trace[...] = trace_step(trace, s, tp)
            spikes[t] = s
            if seq is not None:
                seq[t] = trace
        return spikes, seq
    # Same values as dynamics.py, written as in-place ufuncs: a numpy call on a few hundred
    # floats costs about a microsecond, so the op count is what matters.
    c = _constants(p, tp)
    compare = np.greater if p.fire == ">" else np.greater_equal
    tmp = np.empty_like(v)
    for t in range(current.shape[0]):
        if p.form == "beta":
            np.multiply(v, c.beta, out=v)
            np.add(v, current[t], out=v)
        else:
            v[...] = charge(v, current[t], p)
        st = spikes[t]
        compare(v, c.v_threshold, out=st, casting="unsafe")  # 1.0 / 0.0
        if p.v_reset is None:  # soft reset: v - s * v_threshold
            np.multiply(st, c.v_threshold, out=tmp)
            np.subtract(v, tmp, out=v)
        else:
            np.subtract(c.one, st, out=tmp)
            np.multiply(v, tmp, out=v)  # arithmetic reset, as in the torch loop
            if c.v_reset:
                np.multiply(st, c.v_reset, out=tmp)
                np.add(v, tmp, out=v)
        if tp.kind == "count":
            np.multiply(st, c.increment, out=tmp)
            np.add(trace, tmp, out=trace)
        elif tp.kind == "leaky":
            np.multiply(trace, c.decay, out=trace)
            np.multiply(st, c.one_minus_decay, out=tmp)
            np.add(trace, tmp, out=trace)
        elif tp.kind == "hard":
            np.subtract(c.one, st, out=tmp)
            np.multiply(trace, c.decay, out=trace)
            np.multiply(trace, tmp, out=trace)
            np.add(trace, st, out=trace)
        else:
            trace[...] = st
        if seq is not None:
            seq[t] = trace
    return spikes, seq


@dataclass(frozen=True)
class _Consts:
    beta: np.float32
    v_threshold: np.float32
    v_reset: np.float32
    increment: np.float32
    decay: np.float32
    one_minus_decay: np.float32
    one: np.float32


_CONSTS: dict = {}


def _constants(p: NeuronParams, tp: TraceParams) -> _Consts:
    key = (p, tp)
    c = _CONSTS.get(key)
    if c is None:
        f = np.float32
        c = _CONSTS[key] = _Consts(
            f(p.beta), f(p.v_threshold), f(p.v_rest), f(tp.increment), f(tp.decay), f(tp.one_minus_decay), f(1.0)
        )
    return c


def eligibility_apply(e: np.ndarray, w: np.ndarray, dw: np.ndarray, tau: float, eta: float) -> None:
    """In place: e <- (1 - tau) e + tau dW, entries below ``ELIGIBILITY_FLOOR`` set to 0, then
    w <- w + eta e (float32 factors)."""
    e *= np.float32(1.0 - tau)
    e += dw * np.float32(tau)
    e[np.abs(e) < ELIGIBILITY_FLOOR] = 0.0
    w += e * np.float32(eta)
