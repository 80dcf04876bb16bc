"""One spiking layer, one presentation: charge/fire/reset/trace over T steps, with the weights
learning in place inside the learning window.

Shapes: spikes ``[T, N, D]``; weights ``[H, D]``; membrane/trace ``[N, H]``. Arrays are numpy
arrays or torch tensors; the neuron loop of each backend is in ``kernels``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spikingjelly_ff import kernels
from spikingjelly_ff.functional import _array
from spikingjelly_ff.functional.dynamics import charge, fire, reset
from spikingjelly_ff.functional.hebbian import DeltaReduce, ff_hebbian_delta
from spikingjelly_ff.functional.params import HebbianParams, NeuronParams, TraceParams
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.kernels import apply_delta, numba_online
from spikingjelly_ff.simulation.encoding import SpikeIndex

Array = Any  # torch tensor or numpy array

__all__ = ["Dynamics", "input_major", "learns_online", "neuron_forward", "rest", "run_layer"]


@dataclass(frozen=True)
class Dynamics:
    """Everything a layer's simulation needs besides its weights."""

    neuron: NeuronParams
    trace: TraceParams
    probability: Probability
    goodness: str = "sum_squares"


def neuron_forward(current: Array, v: Array, trace: Array, d: Dynamics, backend: str = "torch") -> Array:
    """T steps of charge/fire/reset/trace; ``v`` and ``trace`` ``[N, H]`` update in place.
    Returns float spikes ``[T, N, H]``."""
    return kernels.neuron_forward(current, v, trace, d.neuron, d.trace, backend)[0]


def rest(v: Array, d: Dynamics, steps: int) -> Array:
    """Membrane after ``steps`` steps with no input (spikes only reset it); numpy arrays are
    updated in place (and returned), tensors are returned new."""
    p = d.neuron
    silent = p.silent_at_rest  # no spike is possible: the firing test can be skipped
    if silent and p.form == "beta" and isinstance(v, np.ndarray):
        if numba_online.enabled() and v.dtype == np.float32 and v.flags.c_contiguous:
            numba_online.rest_beta(v, p.beta, steps)  # one call instead of 2 x steps numpy calls
            return v
        beta, zero = np.float32(p.beta), np.float32(0.0)
        for _ in range(steps):  # v * beta + 0, as charge() computes it
            np.multiply(v, beta, out=v)
            np.add(v, zero, out=v)
        return v
    zero = _array.zeros(v, tuple(v.shape))
    out = v
    for _ in range(steps):
        out = charge(out, zero, p)
        if not silent:
            out = reset(out, fire(out, p), p)
    if isinstance(v, np.ndarray):
        v[...] = out
        return v
    return out


def run_layer(
    pre: Array,
    w: Array,
    v: Array,
    d: Dynamics,
    backend: str = "torch",
    learn: tuple[Array, HebbianParams, float, Array] | None = None,
    pre_index: SpikeIndex | None = None,
    reduce: DeltaReduce | None = None,
) -> tuple[Array, Array]:
    """Present spikes ``pre`` ``[T, N, D]`` to a layer with weights ``w`` ``[H, D]`` and membrane
    ``v`` ``[N, H]`` (updated in place). With ``learn = (y, spec, eta, eligibility)`` the
    weights update in place after every step t > learn_after, as the reference does.
    ``pre_index`` (the :class:`SpikeIndex` of ``pre`` as ``[T * N, D]``) makes the currents
    sparse sums. ``reduce`` (data parallel: this batch is one rank's shard) combines every
    step's delta across ranks before it is applied (``ff_hebbian_delta``). Returns output
    spikes ``[T, N, H]`` and the final trace ``[N, H]``."""
    t_steps, n, d_in = pre.shape
    h = w.shape[0]
    tr = _array.zeros(v, (n, h))

    def currents(t0: int, t1: int):
        if pre_index is not None:
            return pre_index.rows(t0 * n, t1 * n).matmul(w).reshape(t1 - t0, n, h)
        # d_in, not -1: a data-parallel rank's shard may hold no rows (n = 0)
        return (pre[t0:t1].reshape((t1 - t0) * n, d_in) @ w.T).reshape(t1 - t0, n, h)

    first = t_steps if learn is None else learn[1].learn_after + 1
    if first >= t_steps:
        return neuron_forward(currents(0, t_steps), v, tr, d, backend), tr
    y, spec, eta, e = learn
    out = _array.zeros(v, (t_steps, n, h))
    k = first + 1  # steps 0..first run before the first update
    out[:k] = neuron_forward(currents(0, k), v, tr, d, backend)
    for t in range(first, t_steps):
        dw = ff_hebbian_delta(d.probability, tr, pre[t], y, d.goodness, reduce)
        apply_delta(w, dw, eta, spec.eligibility_tau, e, backend)
        if t + 1 < t_steps:
            out[t + 1] = neuron_forward(currents(t + 1, t + 2), v, tr, d, backend)[0]
    return out, tr


def learns_online(batch: int, spec: HebbianParams, neuron: NeuronParams, on_cpu: bool = True) -> bool:
    """Whether a batch learns through :func:`online_layer` (one sample on the CPU, with an
    eligibility trace and no k-WTA) rather than :func:`run_layer`: the one place both the
    torch engine and the runtime decide it."""
    return batch == 1 and on_cpu and spec.eligibility_tau is not None and neuron.kwta is None


def input_major(w):
    """``w`` ``[H, D]`` re-allocated so that ``w.T`` is contiguous (same values, a view)."""
    return w.T.copy().T if not _array.is_torch(w) else w.t().contiguous().t()
