"""Rate coding of inputs into spikes: Bernoulli (random, the paper) or regular
(deterministic), and the sparse index of a spike train that makes currents cheap.

Shapes: rates ``[..., D]`` per-step spike probabilities; spikes ``[T, ..., D]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spikingjelly_ff.functional import _array
from spikingjelly_ff.kernels import numba_online, numba_spikes

Array = Any  # torch tensor or numpy array

__all__ = [
    "SampleDraws",
    "SpikeIndex",
    "bernoulli_draws",
    "bernoulli_spikes",
    "draws_at",
    "encode_spikes",
    "regular_spikes",
]


@dataclass
class SpikeIndex:
    """Where binary spikes ``[R, D]`` are 1, as ``embedding_bag`` input (torch only).

    Input spikes are sparse (a few % of pixels fire per step), so summing the weight
    columns of the active inputs costs a fraction of a dense ``spikes @ W^T``.
    """

    cols: Any  # [nnz] int64: input index of every spike, row after row
    offsets: Any  # [R] int64: where each row starts in ``cols``
    shape: tuple[int, ...] | None = None  # the spikes' shape, e.g. [T, N, D] (R = T * N), when known

    def dense(self, dtype=None) -> Array:
        """The 0/1 spikes of :attr:`shape` (which must be known), float32 or ``dtype``."""
        if self.shape is None:
            raise ValueError("this SpikeIndex does not know the spikes' shape; build it with one")
        torch = _array.xp(self.cols)
        d = self.shape[-1]
        r = len(self.offsets)
        counts = torch.diff(self.offsets, append=torch.tensor([len(self.cols)], dtype=self.offsets.dtype))
        rows = torch.repeat_interleave(torch.arange(r), counts)
        out = torch.zeros(r, d, dtype=dtype or torch.float32)
        out[rows, self.cols] = 1.0
        return out.reshape(self.shape)

    @classmethod
    def from_dense(cls, spikes: Array) -> SpikeIndex:
        """Index of a dense 0/1 matrix ``[R, D]``."""
        rows, cols = spikes.nonzero(as_tuple=True)
        return cls(cols, _row_offsets(rows, spikes.shape[0]), tuple(spikes.shape))

    def rows(self, start: int, stop: int) -> SpikeIndex:
        """The index of rows ``[start, stop)``."""
        off = self.offsets
        begin = int(off[start]) if start < len(off) else len(self.cols)
        end = int(off[stop]) if stop < len(off) else len(self.cols)
        return SpikeIndex(self.cols[begin:end], off[start:stop] - begin)

    def matmul(self, w: Array) -> Array:
        """``spikes @ w.T`` for ``w`` ``[H, D]``: ``[R, H]``."""
        return _array.xp(w).nn.functional.embedding_bag(self.cols, w.T.contiguous(), self.offsets, mode="sum")


def _row_offsets(rows, n_rows: int):
    torch = _array.xp(rows)
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.cumsum(counts, 0) - counts


def regular_spikes(rates: Array, steps: int) -> Array:
    """Deterministic rate code ``[steps, *rates.shape]``: an input with rate r spikes whenever
    r (t + 1) + 1/2 passes an integer, so over T steps it fires round(r T) times, evenly
    spaced. The same spike counts as Bernoulli coding on average, without its noise."""
    xp = _array.xp(rates)
    if _array.is_torch(rates):
        k = xp.arange(steps + 1, dtype=rates.dtype, device=rates.device)
    else:
        k = np.arange(steps + 1, dtype=rates.dtype)
    k = k.reshape(steps + 1, *([1] * rates.ndim))
    edges = xp.floor(rates[None] * k + 0.5)
    return edges[1:] - edges[:-1]


def encode_spikes(rates: Array, steps: int, rng, coding: str = "bernoulli", index: bool = False, dense: bool = True):
    """Input spikes ``[steps, *rates.shape]`` with per-step rate ``rates``: ``bernoulli``
    (random, the paper) or ``regular`` (deterministic, :func:`regular_spikes`). With
    ``index`` (torch), also returns the :class:`SpikeIndex` of the ``[steps * N, D]`` rows."""
    if coding == "regular":
        out = regular_spikes(rates, steps)
        if not index:
            return out
        found = SpikeIndex.from_dense(out.reshape(-1, rates.shape[-1]))
        return (out if dense else None), SpikeIndex(found.cols, found.offsets, tuple(out.shape))
    if coding != "bernoulli":
        raise ValueError(f"unknown spike coding {coding!r}; choose 'bernoulli' or 'regular'")
    return bernoulli_spikes(rates, steps, rng, index, dense)


def bernoulli_spikes(rates: Array, steps: int, rng, index: bool = False, dense: bool = True):
    """``[steps, *rates.shape]`` float spikes, 1 with probability ``rates``; random numbers
    are drawn only where the rate is positive (on a GPU, everywhere). ``rng``: a
    torch.Generator or numpy Generator. With ``index`` (torch), also returns the
    :class:`SpikeIndex` of the ``[steps * N, D]`` rows; ``dense=False`` then skips the dense
    tensor (returned as ``None``)."""
    flat = rates.reshape(-1)
    if _array.is_torch(rates):
        torch = _array.xp(rates)
        if rates.is_cuda and not index:
            # finding the live inputs first (nonzero) would make the host wait for the GPU at
            # every batch; a draw for every input keeps the presentation queue full
            return torch.bernoulli(rates.expand(steps, *rates.shape), generator=rng)
        d = rates.shape[-1]
        n = flat.numel() // d
        if index and rates.device.type == "cpu" and rates.dtype == torch.float32 and numba_online.enabled():
            # the same draws and comparisons as below, the rest in two compiled passes
            live_np, live_rates = numba_spikes.live_inputs(flat.detach().contiguous().numpy())
            u = torch.rand(steps, live_np.size, generator=rng)
            out, cols, offsets = numba_spikes.scatter_draws(u.numpy(), live_rates, live_np, n, d, dense)
            spikes = torch.from_numpy(out).reshape(steps, *rates.shape) if dense else None
            return spikes, SpikeIndex(torch.from_numpy(cols), torch.from_numpy(offsets), (steps, *rates.shape))
        live = flat.nonzero().squeeze(1)
        hits = torch.rand(steps, live.numel(), generator=rng, device=rates.device) < flat[live]
        out = None
        if dense or not index:
            out = torch.zeros(steps, flat.numel(), dtype=rates.dtype, device=rates.device)
            out[:, live] = hits.to(rates.dtype)
            out = out.reshape(steps, *rates.shape)
        if not index:
            return out
        t_idx, j_idx = hits.nonzero(as_tuple=True)
        pos = live[j_idx]
        rows = t_idx * n + torch.div(pos, d, rounding_mode="floor")
        return out, SpikeIndex(pos % d, _row_offsets(rows, steps * n), (steps, *rates.shape))
    return _dense_bernoulli(flat, steps, rng).reshape(steps, *rates.shape)


#: uniforms drawn at once by :func:`_dense_bernoulli` (1 MiB of float32)
_DRAW_BLOCK = 1 << 18


def _dense_bernoulli(rates: np.ndarray, steps: int, rng: np.random.Generator) -> np.ndarray:
    """``SampleDraws.dense()`` of :func:`bernoulli_draws` (the same draws, the same spikes)
    with bounded scratch: the uniforms come at most ``_DRAW_BLOCK`` at a time (a few steps,
    or part of one step's inputs), each block compared and written into the float32 spikes
    ``[steps, D]`` at once, so a large batch holds its spikes and not also ``[steps, D]``
    uniforms and booleans (rng draws one stream, in the same order, either way)."""
    live = np.flatnonzero(rates)
    out = np.zeros((steps, rates.size), dtype=np.float32)
    n_live = live.size
    if n_live == 0:
        return out
    live_rates = rates[live]
    if n_live <= _DRAW_BLOCK:
        per = _DRAW_BLOCK // n_live
        for t0 in range(0, steps, per):
            t1 = min(steps, t0 + per)
            out[t0:t1, live] = rng.random((t1 - t0, n_live), dtype=np.float32) < live_rates
        return out
    for t in range(steps):  # more live inputs than a block: each step in parts
        for j0 in range(0, n_live, _DRAW_BLOCK):
            j1 = min(n_live, j0 + _DRAW_BLOCK)
            out[t, live[j0:j1]] = rng.random(j1 - j0, dtype=np.float32) < live_rates[j0:j1]
    return out


@dataclass(frozen=True)
class SampleDraws:
    """Bernoulli input before it is made dense: input ``live[l]`` spikes at step t when
    ``u[t, l] < rates[l]``. ``u`` ``[T, L]`` float32 uniforms, ``rates`` ``[L]``, ``live``
    ``[L]`` ascending positions among ``width`` inputs. Batch-1 learning hands these to the
    compiled presentation, which makes the spikes itself."""

    u: np.ndarray
    rates: np.ndarray
    live: np.ndarray
    width: int

    @property
    def steps(self) -> int:
        return self.u.shape[0]

    def dense(self) -> np.ndarray:
        """Float spikes ``[T, width]``."""
        out = np.zeros((self.steps, self.width), dtype=np.float32)
        if self.live.size:
            out[:, self.live] = self.u < self.rates
        return out


def bernoulli_draws(rates: np.ndarray, steps: int, rng: np.random.Generator) -> SampleDraws:
    """The draws of :func:`bernoulli_spikes` for flat numpy ``rates`` ``[D]``: uniforms only
    where the rate is positive, in ``rng``'s order (the same spikes either way)."""
    live = np.flatnonzero(rates)
    return draws_at(rates[live], live, rates.size, steps, rng)


def draws_at(rates: np.ndarray, live: np.ndarray, width: int, steps: int, rng: np.random.Generator) -> SampleDraws:
    """:func:`bernoulli_draws` given the positive ``rates`` ``[L]`` and their ascending
    positions ``live`` among ``width`` inputs."""
    return SampleDraws(rng.random((steps, live.size), dtype=np.float32), rates, live, width)
