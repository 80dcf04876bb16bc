"""A batch's whole presentation to one layer in one compiled call (numba): the CPU's
presentation kernel for batched training.

The per-step path (``simulation.layer.run_layer``) makes, for each of the learning steps,
a dense delta (a BLAS product over every input), a pass over W and e, and a neuron call, each
from Python; with two threads the BLAS call's idle OpenMP workers also slowed the single-thread
passes between them. Here one call runs the input steps, the learning window and the rest
steps: the currents sum the weight rows of the inputs that spiked (``SpikeIndex`` order), the
neuron step is ``numba_online``'s (dynamics.py's float32 arithmetic), the delta of step t is
summed over the samples whose input fired, sample by sample, and e and W take
``eligibility_apply``'s per-element arithmetic with its floor. W and e equal the per-step
path's to float rounding, because the delta's and the goodness's sums run in another order
than BLAS's and torch's; so spikes and traces are the same except where a membrane sits on
the threshold within that rounding (``tests/library/test_numba_batch.py``). The torch engine's
batched training and the runtime's batched Learns (the server's) run it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from spikingjelly_ff.functional.goodness import hebbian_gain
from spikingjelly_ff.functional.params import Dynamics, NeuronParams
from spikingjelly_ff.kernels import numba_online

__all__ = ["misfit", "present_batch", "supported"]


def supported(p: NeuronParams, goodness: str, *arrays) -> bool:
    """Whether :func:`present_batch` runs this layer: what the batch-1 kernel takes (numba in
    use, no k-WTA, a quadratic goodness), on float32 C-contiguous numpy ``arrays``."""
    return numba_online.supported(p, goodness, np.float32) and all(
        a.dtype == np.float32 and a.flags.c_contiguous for a in arrays
    )


def misfit(
    rows: int, steps: int, d_in: int, wt: np.ndarray, et: np.ndarray | None, v: np.ndarray, y, split: bool
) -> str | None:
    """What keeps :func:`present_batch` from these arrays (numba checks no bounds), or None:
    spikes of ``d_in`` inputs in ``rows`` rows, ``steps`` steps of ``rows / steps`` samples."""
    d, h = wt.shape
    n = v.shape[0]
    if d_in != d:
        return f"spikes of {d_in} inputs for weights of {d}"
    if v.shape != (n, h) or len(y) != n or rows != steps * n:
        return f"membranes {list(v.shape)}, {len(y)} targets and {rows} spike rows for {steps} steps of {h} units"
    if et is not None and et.shape != wt.shape:
        return f"an eligibility trace {list(et.shape)} for weights {list(wt.shape)}"
    if split and h % 2:
        return f"a split probability needs an even number of units, not {h}"
    return None


def _bad_index(cols: np.ndarray, offsets: np.ndarray, d: int) -> str | None:
    """What is wrong with a spike index for ``d`` inputs (its rows must lie in ``cols``)."""
    wrong = _index_fault(cols, offsets, d)  # one compiled pass: the numpy checks cost ~10% of a batch
    if wrong == 1:
        return f"spikes at inputs {int(cols.min())}..{int(cols.max())} for weights of {d}"
    if wrong == 2:
        return "row offsets that are not ascending within the spikes"
    return None


def _index_fault_impl(cols, offsets, d):
    for c in range(cols.shape[0]):
        if cols[c] < 0 or cols[c] >= d:
            return 1
    last = 0
    for r in range(offsets.shape[0]):
        if offsets[r] < last or offsets[r] > cols.shape[0]:
            return 2
        last = offsets[r]
    return 0


def present_batch(
    cols: np.ndarray,
    offsets: np.ndarray,
    steps: int,
    wt: np.ndarray,
    et: np.ndarray | None,
    v: np.ndarray,
    d: Dynamics,
    y: np.ndarray,
    first: int,
    tau: float | None,
    eta: float,
    rest: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Present binary input spikes, given as the ``SpikeIndex`` of their ``[steps * N, D]`` rows
    (``cols`` ``[nnz]``, ``offsets`` ``[steps * N]``, int64), to a layer and learn at every step
    t >= ``first``, then rest ``rest`` steps.

    ``wt`` ``[D, H]`` (W input-major) and ``et`` (its eligibility, or None: dW applied at once),
    and the membranes ``v`` ``[N, H]`` are updated in place; ``y`` ``[N]`` float32 targets.
    Returns spikes ``[steps, N, H]`` and the trace after the last input step ``[N, H]``. Arrays
    that do not fit (:func:`misfit`) raise ValueError."""
    wrong = misfit(len(offsets), steps, wt.shape[0], wt, et, v, y, d.probability.split)
    wrong = wrong or _bad_index(cols, offsets, wt.shape[0])
    if wrong is not None:
        raise ValueError(f"present_batch: {wrong}")
    n = v.shape[0]
    h = wt.shape[1]
    gain = hebbian_gain(d.goodness, h, d.probability.split)
    neuron, switches, floats, _, _ = numba_online.plan(d, gain, first, 0, tau or 0.0)
    has_e = et is not None
    e_arr = et if has_e else np.empty((0, h), np.float32)
    f = np.float32
    scale = f(gain / max(n, 1))  # hebbian_delta's gain / N, a float32 factor as torch applies it
    return _kernel(cols, offsets, steps, wt, e_arr, v, neuron, switches, floats, y, scale, f(eta), rest, has_e)


# numba's disk cache keys a function by its own file: the step it inlines lives in
# numba_online.py, so that file's digest is a closure constant here, and an edit of the step
# compiles this kernel again instead of loading a copy of the old one.
_STEPS_DIGEST = hashlib.sha256(Path(numba_online.__file__).read_bytes()).hexdigest()


modulated, neuron_loop = numba_online.modulated, numba_online.neuron_loop
eligibility_step, rest_units = numba_online.eligibility_step, numba_online.rest_units


def _make(stamp: str):
    def impl(cols, offsets, t_steps, wt, et, v, neuron, switches, floats, y, scale, eta, rest, has_e):
        if len(stamp) == 0:  # never: it keeps the digest in the function's closure
            return np.zeros((0, 0, 0), np.float32), np.zeros((0, 0), np.float32)
        form, decay_input, fire_ge, trace_kind = switches[0], switches[1] != 0, switches[2] != 0, switches[3]
        prob_kind, goodness, first, silent = switches[4], switches[5], switches[6], switches[7] != 0
        alpha, theta, eps, clip = floats[0], floats[1], floats[2], floats[3]
        tau = np.float32(floats[5])
        keep = np.float32(1.0 - floats[5])
        floor = np.float32(floats[6])
        n, h = v.shape
        d = wt.shape[0]
        rows, nnz = t_steps * n, cols.shape[0]
        zero = np.float32(0.0)
        out = np.zeros((t_steps, n, h), np.float32)
        tr = np.zeros((n, h), np.float32)
        cur = np.empty((n, h), np.float32)
        coef = np.empty((n, h), np.float32)
        dw = np.zeros((d, h), np.float32)
        hit = np.zeros(d, np.bool_)
        split = prob_kind != 0
        half = h // 2 if split else h
        no_seq = np.empty((0, n * h), np.float32)
        for t in range(t_steps):
            for s in range(n):  # the currents: the rows of W of the inputs that spiked
                r = t * n + s
                end = offsets[r + 1] if r + 1 < rows else nnz
                for j in range(h):
                    cur[s, j] = zero
                for c in range(offsets[r], end):
                    i = cols[c]
                    for j in range(h):
                        cur[s, j] += wt[i, j]
            # the whole batch's neuron step as one call of the (vectorised) neuron loop: stepped
            # unit by unit in here, it ran scalar
            neuron_loop(cur.reshape(1, n * h), v.reshape(-1), tr.reshape(-1), out[t].reshape(1, n * h), no_seq,
                        form, decay_input, fire_ge, trace_kind, neuron)  # fmt: skip
            if t < first:
                continue
            # M * trace of every sample (hebbian_delta's m * post), then the delta of the
            # inputs that spiked at step t, summed sample by sample
            for s in range(n):
                modulated(tr[s], coef[s], split, half, prob_kind, alpha, theta, eps, clip, goodness, 1.0, y[s])
            for s in range(n):
                r = t * n + s
                end = offsets[r + 1] if r + 1 < rows else nnz
                for c in range(offsets[r], end):
                    i = cols[c]
                    if not hit[i]:
                        hit[i] = True
                        for j in range(h):
                            dw[i, j] = zero
                    for j in range(h):
                        dw[i, j] += coef[s, j]
            # e <- e * keep + dW * tau (0 below the floor), W <- W + e * eta, or W <- W + dW * eta
            # (the branches outside the unit loops, which LLVM then vectorises)
            for i in range(d):
                if hit[i] and has_e:
                    for j in range(h):
                        g = dw[i, j] * scale
                        et[i, j], wt[i, j] = eligibility_step(et[i, j], wt[i, j], g, keep, tau, eta, floor)
                elif hit[i]:
                    for j in range(h):
                        wt[i, j] = wt[i, j] + (dw[i, j] * scale) * eta
                elif has_e:  # dW = 0 here
                    for j in range(h):
                        et[i, j], wt[i, j] = eligibility_step(et[i, j], wt[i, j], zero, keep, tau, eta, floor)
                hit[i] = False
        # the rest steps (no input), as simulation.rest: decay, and fire and reset where it can
        rest_units(v.reshape(-1), rest, form, decay_input, fire_ge, silent, neuron)
        return out, tr

    return impl


# nogil: the engine draws the next batch's input on a worker thread meanwhile (learning/ahead.py)
_kernel = numba_online.jit(_make(_STEPS_DIGEST), nogil=True) if numba_online.AVAILABLE else _make(_STEPS_DIGEST)
_index_fault = numba_online.jit(_index_fault_impl) if numba_online.AVAILABLE else _index_fault_impl
