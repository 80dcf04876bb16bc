"""One spiking layer, one presentation: charge/fire/reset/trace over T steps, with the weights
learning in place inside the learning window.

Shapes: spikes ``[T, N, D]``; weights ``[H, D]``; membrane/trace ``[N, H]``. Arrays are numpy
arrays or torch tensors; the neuron loop of each backend is in ``kernels``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spikingjelly_ff import kernels
from spikingjelly_ff.functional import _array
from spikingjelly_ff.functional.dynamics import charge, fire, reset
from spikingjelly_ff.functional.hebbian import DeltaReduce, ff_hebbian_delta
from spikingjelly_ff.functional.params import Dynamics, HebbianParams, NeuronParams
from spikingjelly_ff.kernels import apply_delta, numba_batch, numba_online
from spikingjelly_ff.simulation.encoding import SpikeIndex

Array = Any  # torch tensor or numpy array

__all__ = [
    "Dynamics", "batch_compiles", "input_major", "learns_online", "neuron_forward", "rest", "rest_inplace", "run_layer",
]  # fmt: skip


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


def rest_inplace(v: Array, d: Dynamics, steps: int) -> Array:
    """:func:`rest` on ``v`` in place, for tensors too (returns ``v``)."""
    if steps <= 0:
        return v
    if isinstance(v, np.ndarray):
        return rest(v, d, steps)
    if v.device.type == "cpu" and v.is_contiguous():
        rest(v.numpy(), d, steps)  # in place on the tensor's memory: tiny ops are cheaper in numpy
        return v
    return v.copy_(rest(v, d, steps))


def _fused(pre: Array, w: Array, v: Array, d: Dynamics, backend: str, learn, reduce) -> bool:
    """Whether the presentation runs as one CUDA launch (``kernels.present``)."""
    if reduce is not None or backend != "cupy" or not _array.is_torch(w):
        return False
    e = learn[3] if learn is not None and learn[1].eligibility_tau is not None else None
    if e is not None and e.stride() != w.stride():
        return False
    split = d.probability is not None and d.probability.split
    return kernels.present_fits(backend, pre, w, v, e, d.neuron, d.goodness, split, learn is not None)


def batch_compiles(d: Dynamics, backend: str = "torch", reduce: DeltaReduce | None = None) -> bool:
    """Whether a learning presentation of CPU arrays with these dynamics runs as one
    ``numba_batch`` call (:func:`run_layer`; the arrays' layout decides the rest)."""
    return (
        reduce is None and backend in ("torch", "numpy") and numba_online.supported(d.neuron, d.goodness, np.float32)
    )


def _compiled_batch(pre, w, v, d: Dynamics, backend: str, learn, pre_index, reduce, rest_steps: int):
    """:func:`run_layer` as one ``numba_batch`` call, or None where it does not apply: a learning
    presentation of binary spikes on the CPU (numpy, or torch CPU tensors) with W (and e)
    input-major, float32, numba in use, no data-parallel reduction."""
    if learn is None or not batch_compiles(d, backend, reduce):
        return None
    torch_in = _array.is_torch(w)
    if torch_in and (w.device.type != "cpu" or w.requires_grad):
        return None
    y, spec, eta, e = learn
    e = e if spec.eligibility_tau is not None else None
    wt, vv = (w.detach().T.numpy(), v.numpy()) if torch_in else (w.T, v)
    et = None if e is None else (e.T.numpy() if torch_in else e.T)
    arrays = (wt, vv) if et is None else (wt, vv, et)
    if not numba_batch.supported(d.neuron, d.goodness, *arrays):
        return None
    t_steps, n, d_in = pre.shape if pre is not None else pre_index.shape
    split = d.probability is not None and d.probability.split
    # arrays that do not fit go to the per-step path, which says what is wrong in its own terms
    if numba_batch.misfit(t_steps * n, t_steps, d_in, wt, et, vv, y, split):
        return None
    if pre_index is None:
        flat = pre.reshape(t_steps * n, d_in)
        if not bool(((flat == 0) | (flat == 1)).all()):  # the kernel sums W rows: spikes only
            return None
        pre_index = SpikeIndex.from_dense(flat) if torch_in else _numpy_index(flat)
    cols, offsets = (pre_index.cols.numpy(), pre_index.offsets.numpy()) if torch_in else pre_index
    if len(offsets) != t_steps * n:  # an index of other spikes than ``pre``'s shape says
        return None
    yy = y.numpy() if torch_in else y
    out, tr = numba_batch.present_batch(
        cols, offsets, t_steps, wt, et, vv, d,
        np.ascontiguousarray(yy, dtype=np.float32), spec.learn_after + 1, spec.eligibility_tau, eta, rest_steps,
    )  # fmt: skip
    if torch_in:
        return _array.xp(w).from_numpy(out), _array.xp(w).from_numpy(tr)
    return out, tr


def _numpy_index(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cols, row offsets) of the 1s of a binary ``[R, D]`` array, as ``SpikeIndex`` holds them."""
    rows, cols = np.nonzero(flat)
    counts = np.bincount(rows, minlength=flat.shape[0])
    return cols.astype(np.int64), (np.cumsum(counts) - counts).astype(np.int64)


def run_layer(
    pre: Array,
    w: Array,
    v: Array,
    d: Dynamics,
    backend: str = "torch",
    learn: tuple[Array, HebbianParams, float, Array] | None = None,
    pre_index: SpikeIndex | None = None,
    reduce: DeltaReduce | None = None,
    rest_steps: int = 0,
) -> tuple[Array, Array]:
    """Present spikes ``pre`` ``[T, N, D]`` to a layer with weights ``w`` ``[H, D]`` and membrane
    ``v`` ``[N, H]`` (updated in place). With ``learn = (y, spec, eta, eligibility)`` the
    weights update in place after every step t > learn_after, as the reference does.
    ``pre_index`` (the :class:`SpikeIndex` of ``pre`` as ``[T * N, D]``) makes the currents
    sparse sums. ``reduce`` (data parallel: this batch is one rank's shard) combines every
    step's delta across ranks before it is applied (``ff_hebbian_delta``). ``rest_steps``
    steps with no input follow (:func:`rest`). Returns output spikes ``[T, N, H]`` and the
    final trace ``[N, H]``.

    With the ``cupy`` backend the whole presentation is one launch when the layer fits
    (``kernels.present``: state in shared memory, currents and deltas summed in the
    kernel's own order, so equal to the per-step path to float rounding). A learning
    presentation on the CPU is one compiled call where numba runs
    (``kernels.numba_batch``, equal to the per-step path to float rounding likewise); it reads
    ``pre_index`` alone, so ``pre`` may be None when the index knows the spikes' shape (the
    dense spikes are then made only if another path runs)."""
    compiled = _compiled_batch(pre, w, v, d, backend, learn, pre_index, reduce, rest_steps)
    if compiled is not None:
        return compiled
    if pre is None:
        if pre_index is None or pre_index.shape is None or len(pre_index.shape) != 3:
            raise ValueError("run_layer needs the spikes, or their SpikeIndex with its shape [T, N, D]")
        pre = pre_index.dense(w.dtype)
    if _fused(pre, w, v, d, backend, learn, reduce):
        fused = None
        if learn is not None:
            y, spec, eta, e = learn
            first = spec.learn_after + 1
            e = e if spec.eligibility_tau is not None else None
            fused = (y, e, d.probability, d.goodness, first, spec.eligibility_tau, eta)
        return kernels.present(pre, w, v, d.neuron, d.trace, fused, rest_steps)
    out, tr = _run_steps(pre, w, v, d, backend, learn, pre_index, reduce)
    rest_inplace(v, d, rest_steps)
    return out, tr


def _run_steps(pre, w, v, d: Dynamics, backend: str, learn, pre_index, reduce) -> tuple[Array, Array]:
    """:func:`run_layer`'s input steps, one neuron call (and one delta) per learning step."""
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
