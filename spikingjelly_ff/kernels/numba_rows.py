"""Many batch-1 presentations, one after another, in one compiled call (numba): on-line
learning of a run of samples without returning to Python between them.

A batch-1 presentation costs its kernel (``numba_online``) about 75 µs on the paper's layer
and the Python around it (the sample's rates and draws, the membrane, the views, the
judgement, the trainer's calls) as much again. Here each sample's rates and live inputs come
from one compiled pass over the run's images, the uniforms from one draw of the run's numpy
generator (the same numbers as one draw per sample: a generator's stream does not depend on how
it is cut), and each sample then runs ``numba_online``'s presentation in turn, the membrane
carried from one to the next: the same arithmetic, so the same spikes, weights and traces as
one call per sample, bit for bit (``tests/library/test_online_rows.py``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from spikingjelly_ff.functional.goodness import hebbian_gain
from spikingjelly_ff.functional.params import Dynamics
from spikingjelly_ff.kernels import numba_online

__all__ = ["live_rows", "present_rows"]


def live_rows(
    images: np.ndarray,
    gain: float,
    label_rates: np.ndarray,
    labels: np.ndarray,
    image_at: slice,
    label_at: slice,
    width: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every sample's positive spike probabilities and where they are, as
    ``numba_spikes.live_rates`` makes them one sample at a time: images ``[B, P]`` float32,
    ``label_rates`` ``[C, L]``, ``labels`` ``[B]`` int64 in [0, C). Returns ``(rates [S],
    live [S], starts [B + 1])``: sample b's are ``[starts[b]:starts[b + 1]]``, ``live``
    ascending within each."""
    b = len(labels)
    if images.ndim != 2 or len(images) != b or images.shape[1] < image_at.stop or image_at.stop > width:
        raise ValueError(f"live_rows: images {list(images.shape)} for {b} labels, image positions to {image_at.stop}")
    if label_rates.shape[1] != label_at.stop - label_at.start or label_at.stop > width:
        raise ValueError(f"live_rows: label rates {list(label_rates.shape)} for label positions {label_at}")
    if b and (labels.min() < 0 or labels.max() >= len(label_rates)):
        raise ValueError(f"live_rows: labels must lie in [0, {len(label_rates)})")
    return _live(images, np.float32(gain), label_rates, labels, image_at.start, image_at.stop, label_at.start,
                 label_at.stop, width)  # fmt: skip


def present_rows(
    u: np.ndarray,
    rates: np.ndarray,
    live: np.ndarray,
    starts: np.ndarray,
    steps: int,
    wt: np.ndarray,
    et: np.ndarray,
    v: np.ndarray,
    d: Dynamics,
    y: np.ndarray,
    first: int,
    tau: float,
    eta: np.ndarray,
    rest: int = 0,
    carry: bool = True,
) -> np.ndarray:
    """Present B samples one after another to a layer, each learning at every step t >=
    ``first`` and resting ``rest`` steps: ``numba_online.present_online`` with ``draws`` for
    each in turn. Sample b spikes at input ``live[l]`` and step t when ``u_b[t, l] < rates[l]``
    for l in ``[starts[b], starts[b + 1])``, ``u_b`` ``[steps, L_b]`` being the next
    ``steps * L_b`` numbers of ``u`` (float32). ``wt``, ``et`` ``[D, H]`` and the membrane ``v``
    ``[H]`` are updated in place; ``y`` ``[B]`` targets and ``eta`` ``[B]`` learning rates (float64).
    Without ``carry`` every sample starts from a membrane at 0 (as a batch-1 presentation does
    when the encoder does not carry it). Returns each sample's final trace ``[B, H]``."""
    b = len(y)
    if len(eta) != b or len(starts) != b + 1 or u.size != steps * int(starts[-1]) or len(live) != int(starts[-1]):
        raise ValueError(f"present_rows: draws of {len(starts) - 1} samples for {b} targets and {len(eta)} rates")
    if len(rates) != len(live) or starts[0] != 0 or (np.diff(starts) < 0).any():
        raise ValueError(f"present_rows: {len(rates)} rates for {len(live)} inputs, or sample starts not ascending")
    n_in, h = wt.shape
    if et.shape != wt.shape or v.shape != (h,) or (live.size and (live.min() < 0 or live.max() >= n_in)):
        raise ValueError(f"present_rows: weights {list(wt.shape)}, eligibility {list(et.shape)}, membrane "
                         f"{list(v.shape)} and inputs up to {int(live.max()) if live.size else 0}")  # fmt: skip
    gain = hebbian_gain(d.goodness, h, d.probability.split)
    consts = numba_online.plan(d, gain, first, max(0, steps - first), tau)
    return _kernel(u, rates, live, starts, steps, n_in, wt, et, v, *consts, y, eta, rest, carry)


def _live_impl(images, gain, label_rates, labels, i0, i1, l0, l1, width):
    b = images.shape[0]
    starts = np.zeros(b + 1, np.int64)
    rates = np.zeros(width, np.float32)
    out = np.empty(b * width, np.float32)  # room for every input of every sample: one pass
    live = np.empty(b * width, np.int64)
    n = 0
    for s in range(b):
        _fill(rates, images[s], gain, label_rates[labels[s]], i0, i1, l0, l1)
        for p in range(width):
            if rates[p] != 0.0:
                live[n] = p
                out[n] = rates[p]
                n += 1
        starts[s + 1] = n
    return out[:n], live[:n], starts


def _fill_impl(rates, image, gain, label, i0, i1, l0, l1):
    """One sample's rates, as ``numba_spikes.live_rates`` computes them."""
    rates[:] = 0.0
    for p in range(i0, i1):
        r = image[p] * gain
        rates[p] = min(max(r, np.float32(0.0)), np.float32(1.0))
    for p in range(l0, l1):
        rates[p] = label[p - l0]


# numba's disk cache keys a function by its own file: the presentation it calls lives in
# numba_online.py, whose digest is a closure constant here (see numba_batch)
_STEPS_DIGEST = hashlib.sha256(Path(numba_online.__file__).read_bytes()).hexdigest()


def _make(stamp: str):
    draws, core = numba_online.draws_csr, numba_online.core

    def impl(u, rates, live, starts, steps, d, wt, et, v, neuron, switches, floats, a_sum, b_sum, y, eta, rest, carry):
        b, h = y.shape[0], wt.shape[1]
        traces = np.empty((b, h), np.float32)
        if len(stamp) == 0:  # never: it keeps the digest in the function's closure
            return traces
        at = 0
        for s in range(b):
            n = starts[s + 1] - starts[s]
            us = u[at : at + steps * n].reshape((steps, n))
            at += steps * n
            x, ptr, idx = draws(us, rates[starts[s] : starts[s + 1]], live[starts[s] : starts[s + 1]], d)
            if not carry:
                v[:] = 0.0
            _, tr = core(x, ptr, idx, wt, et, v, neuron, switches, floats, a_sum, b_sum, y[s], eta[s], rest)
            traces[s] = tr
        return traces

    return impl


if numba_online.AVAILABLE:
    _fill = numba_online.jit(_fill_impl, inline="always")
    _live = numba_online.jit(_live_impl)
    _kernel = numba_online.jit(_make(_STEPS_DIGEST), nogil=True)  # as the batch-1 kernel: servers step on threads
else:  # pragma: no cover
    _fill, _live, _kernel = _fill_impl, _live_impl, _make(_STEPS_DIGEST)
