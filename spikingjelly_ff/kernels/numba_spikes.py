"""Bernoulli draws to a dense spike train and its sparse row index in compiled passes (numba).

The torch path of ``simulation.encoding.bernoulli_spikes`` finds the inputs that can spike,
compares torch's uniforms with their rates and builds the same three arrays with six tensor
ops (scatter, nonzero, gather, division, bincount, cumsum), each a pass over the hits; for a
training batch that was most of the encoding's time. Here the same uniforms (torch draws them,
so the random stream is unchanged) go through one pass for the live inputs and one for the
rest. Exact: the outputs are integers and 0/1 values. Without numba
(:data:`numba_online.AVAILABLE` false) the torch ops run.
"""

from __future__ import annotations

import numpy as np

from spikingjelly_ff.kernels import numba_online

__all__ = ["live_inputs", "live_rates", "scatter_draws"]


def live_inputs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inputs of flat float32 ``rates`` that can spike: ``(live [L] ascending int64, their
    rates [L])`` (what ``torch.nonzero`` and a gather give, in one pass)."""
    return _nonzero(flat)


def scatter_draws(
    u: np.ndarray, rates: np.ndarray, live: np.ndarray, n: int, d: int, dense: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Bernoulli spikes from uniforms ``u`` ``[T, L]``: input ``live[l]`` of the flattened
    ``[N * D]`` rates spikes at step t when ``u[t, l] < rates[l]`` (``live`` ascending). Returns
    dense float32 spikes ``[T, N * D]`` (None without ``dense``: the compiled batch presentation
    reads the index alone), and the index of the ``[T * N, D]`` rows: ``cols`` ``[nnz]`` (input
    of each spike, row after row) and ``offsets`` ``[T * N]`` (where each row starts)."""
    out, cols, offsets = _scatter(u, rates, live, n, d, dense)
    return (out if dense else None), cols, offsets


def live_rates(
    image: np.ndarray, gain: float, label_rates: np.ndarray, image_at: slice, label_at: slice, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The positive spike probabilities of one embedded sample and where they are: the image's
    ``clip(image * gain, 0, 1)`` (``functional.labels.spike_rates``) at ``image_at`` and the
    label's rates at ``label_at`` among ``width`` inputs. Returns ``(rates [L], live [L])``,
    ``live`` ascending: what ``simulation.encoding.bernoulli_draws`` draws for."""
    return _live(image, np.float32(gain), label_rates, image_at.start, image_at.stop, label_at.start, label_at.stop,
                 width)  # fmt: skip


def _live_impl(image, gain, label_rates, i0, i1, l0, l1, width):
    rates = np.zeros(width, np.float32)
    for p in range(i0, i1):
        r = image[p] * gain
        rates[p] = min(max(r, np.float32(0.0)), np.float32(1.0))
    for p in range(l0, l1):
        rates[p] = label_rates[p - l0]
    n = 0
    for p in range(width):
        n += rates[p] != 0.0
    live = np.empty(n, np.int64)
    out = np.empty(n, np.float32)
    n = 0
    for p in range(width):
        if rates[p] != 0.0:
            live[n] = p
            out[n] = rates[p]
            n += 1
    return out, live


def _nonzero_impl(flat):
    count = 0
    for p in range(flat.shape[0]):
        count += flat[p] != 0.0
    live = np.empty(count, np.int64)
    rates = np.empty(count, np.float32)
    k = 0
    for p in range(flat.shape[0]):
        if flat[p] != 0.0:
            live[k] = p
            rates[k] = flat[p]
            k += 1
    return live, rates


def _scatter_impl(u, rates, live, n, d, make_dense):
    t_steps, width = u.shape
    dense = np.zeros((t_steps, n * d) if make_dense else (0, 0), np.float32)
    nnz = 0
    for t in range(t_steps):
        for j in range(width):
            nnz += u[t, j] < rates[j]
    row_of = np.empty(width, np.int64)  # each live input's sample and input: divided once, not per spike
    col_of = np.empty(width, np.int64)
    for j in range(width):
        row_of[j] = live[j] // d
        col_of[j] = live[j] - row_of[j] * d
    cols = np.empty(nnz + 1, np.int64)  # one spare: the loop writes before it knows
    counts = np.zeros(t_steps * n, np.int64)
    k = 0
    for t in range(t_steps):
        base = t * n
        # without a branch on the hit (a coin flip at rate p, mispredicted often): every live
        # input writes its column at k, and k moves on only where it spiked
        for j in range(width):
            hv = np.int64(u[t, j] < rates[j])
            cols[k] = col_of[j]
            counts[base + row_of[j]] += hv
            k += hv
        if make_dense:
            for j in range(width):
                if u[t, j] < rates[j]:
                    dense[t, live[j]] = 1.0
    offsets = np.empty(t_steps * n, np.int64)
    total = 0
    for r in range(t_steps * n):
        offsets[r] = total
        total += counts[r]
    return dense, cols[:nnz], offsets


# nogil: batched training draws the next batch on a worker thread (learning/ahead.py)
_scatter = numba_online.jit(_scatter_impl, nogil=True) if numba_online.AVAILABLE else _scatter_impl
_live = numba_online.jit(_live_impl) if numba_online.AVAILABLE else _live_impl
_nonzero = numba_online.jit(_nonzero_impl, nogil=True) if numba_online.AVAILABLE else _nonzero_impl
