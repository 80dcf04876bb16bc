"""Fast simulation of spiking FF layers, written once for torch tensors and numpy arrays.

The torch engine (``engine.py``) and the torch-free runtime (``runtime/``) both run on
these functions, so training, export and the edge device share one implementation. Results
equal the per-step module loop (``reference.py``): identical spikes, weights equal up to
float rounding. What makes it fast:

* the currents of all steps that share one weight matrix come from one GEMM;
* the neuron recurrence runs as a few in-place ops per step (a CuPy kernel on GPU);
* scoring all C labels computes the label-independent part of layer 1's current once;
* batch-1 learning (``online_layer``) never touches the whole weight matrix inside a
  sample: the per-step updates are kept as a low-rank correction and applied once at the
  end of the sample.

Shapes: spikes ``[T, N, D]``; weights ``[H, D]``; membrane/trace ``[N, H]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _array
from .dynamics import charge, fire, reset, trace_step
from .goodness import goodness, hebbian_gain
from .hebbian import apply_delta, ff_hebbian_delta
from .params import NeuronParams, TraceParams
from .probability import Probability

Array = Any  # torch tensor or numpy array

__all__ = [
    "Dynamics",
    "LearnSpec",
    "SpikeIndex",
    "bernoulli_spikes",
    "eligibility_apply",
    "encode_spikes",
    "input_major",
    "label_currents",
    "learns_online",
    "neuron_forward",
    "online_layer",
    "regular_spikes",
    "rest",
    "run_layer",
    "scalar_logit",
    "score_labels",
]


@dataclass(frozen=True)
class Dynamics:
    """Everything a layer's simulation needs besides its weights."""

    neuron: NeuronParams
    trace: TraceParams
    probability: Probability
    goodness: str = "sum_squares"


@dataclass(frozen=True)
class LearnSpec:
    """Hebbian step: eta on the exact FF gradient, eligibility filter, learning window."""

    eta: float
    eligibility_tau: float | None = 0.1
    learn_after: int = 15


# ------------------------------------------------------------------------------------------
# primitives


def neuron_forward(current: Array, v: Array, trace: Array, d: Dynamics, backend: str = "torch") -> Array:
    """T steps of charge/fire/reset/trace; ``v`` and ``trace`` ``[N, H]`` update in place.
    Returns float spikes ``[T, N, H]``."""
    if _array.is_torch(current):
        from . import kernels

        return kernels.neuron_forward(current, v, trace, d.neuron, d.trace, backend)[0]
    return _numpy_neuron_forward(current, v, trace, d.neuron, d.trace)


def _numpy_neuron_forward(current, v, trace, p: NeuronParams, tp: TraceParams):
    spikes = np.empty_like(current)
    if p.kwta is not None and p.kwta < v.shape[-1]:
        for t in range(current.shape[0]):
            vt = charge(v, current[t], p)
            s = fire(vt, p)
            v[...] = reset(vt, s, p)
            trace[...] = trace_step(trace, s, tp)
            spikes[t] = s
        return spikes
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
    return spikes


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
            f(p.beta), f(p.v_threshold), f(p.v_reset), f(tp.increment), f(tp.decay), f(tp.one_minus_decay), f(1.0)
        )
    return c


def rest(v: Array, d: Dynamics, steps: int) -> Array:
    """Membrane after ``steps`` steps with no input (spikes only reset it); numpy arrays are
    updated in place (and returned), tensors are returned new."""
    p = d.neuron
    # Without k-WTA every neuron above threshold fired and reset at the last input step, and
    # with no input V only decays (towards v_reset, or 0 for the beta form): no spike is
    # possible, so the firing test can be skipped.
    silent = p.kwta is None and p.v_reset <= p.v_threshold and (p.form == "lif" or p.v_threshold >= 0)
    if silent and p.form == "beta" and isinstance(v, np.ndarray):
        beta, zero = np.float32(p.beta), np.float32(0.0)
        for _ in range(steps):  # v * beta + 0, as charge() computes it
            np.multiply(v, beta, out=v)
            np.add(v, zero, out=v)
        return v
    zero = _zeros(v, tuple(v.shape))
    out = v
    for _ in range(steps):
        out = charge(out, zero, p)
        if not silent:
            out = reset(out, fire(out, p), p)
    if isinstance(v, np.ndarray):
        v[...] = out
        return v
    return out


def eligibility_apply(e: Array, w: Array, dw: Array, tau: float, eta: float, backend: str = "torch") -> None:
    """In place: e <- (1 - tau) e + tau dW, then w <- w + eta e (see ``hebbian.apply_delta``)."""
    apply_delta(w, dw, eta, tau, e, backend)


@dataclass
class SpikeIndex:
    """Where binary spikes ``[R, D]`` are 1, as ``embedding_bag`` input (torch only).

    Input spikes are sparse (a few % of pixels fire per step), so summing the weight
    columns of the active inputs costs a fraction of a dense ``spikes @ W^T``.
    """

    cols: Any  # [nnz] int64: input index of every spike, row after row
    offsets: Any  # [R] int64: where each row starts in ``cols``

    @classmethod
    def from_dense(cls, spikes: Array) -> SpikeIndex:
        """Index of a dense 0/1 matrix ``[R, D]``."""
        rows, cols = spikes.nonzero(as_tuple=True)
        return cls(cols, _row_offsets(rows, spikes.shape[0]))

    def rows(self, start: int, stop: int) -> SpikeIndex:
        """The index of rows ``[start, stop)``."""
        off = self.offsets
        begin = int(off[start]) if start < len(off) else len(self.cols)
        end = int(off[stop]) if stop < len(off) else len(self.cols)
        return SpikeIndex(self.cols[begin:end], off[start:stop] - begin)

    def matmul(self, w: Array) -> Array:
        """``spikes @ w.T`` for ``w`` ``[H, D]``: ``[R, H]``."""
        import torch.nn.functional as F

        return F.embedding_bag(self.cols, w.T.contiguous(), self.offsets, mode="sum")


def _row_offsets(rows, n_rows: int):
    import torch

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
        return (out if dense else None), SpikeIndex.from_dense(out.reshape(-1, rates.shape[-1]))
    if coding != "bernoulli":
        raise ValueError(f"unknown spike coding {coding!r}; choose 'bernoulli' or 'regular'")
    return bernoulli_spikes(rates, steps, rng, index, dense)


def bernoulli_spikes(rates: Array, steps: int, rng, index: bool = False, dense: bool = True):
    """``[steps, *rates.shape]`` float spikes, 1 with probability ``rates``; random numbers
    are drawn only where the rate is positive. ``rng``: a torch.Generator or numpy Generator.
    With ``index`` (torch), also returns the :class:`SpikeIndex` of the ``[steps * N, D]`` rows;
    ``dense=False`` then skips the dense tensor (returned as ``None``)."""
    flat = rates.reshape(-1)
    if _array.is_torch(rates):
        import torch

        live = flat.nonzero().squeeze(1)
        hits = torch.rand(steps, live.numel(), generator=rng, device=rates.device) < flat[live]
        out = None
        if dense or not index:
            out = torch.zeros(steps, flat.numel(), dtype=rates.dtype, device=rates.device)
            out[:, live] = hits.to(rates.dtype)
            out = out.reshape(steps, *rates.shape)
        if not index:
            return out
        d = rates.shape[-1]
        n = flat.numel() // d
        t_idx, j_idx = hits.nonzero(as_tuple=True)
        pos = live[j_idx]
        rows = t_idx * n + torch.div(pos, d, rounding_mode="floor")
        return out, SpikeIndex(pos % d, _row_offsets(rows, steps * n))
    live = np.flatnonzero(flat)
    out = np.zeros((steps, flat.size), dtype=np.float32)
    if live.size:
        u = rng.random((steps, live.size), dtype=np.float32)
        out[:, live] = u < flat[live]
    return out.reshape(steps, *rates.shape)


def _empty(like: Array, shape: tuple) -> Array:
    if _array.is_torch(like):
        import torch

        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return np.empty(shape, dtype=like.dtype)


def _zeros(like: Array, shape: tuple) -> Array:
    if _array.is_torch(like):
        import torch

        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    return np.zeros(shape, dtype=like.dtype)


# ------------------------------------------------------------------------------------------
# one layer, one presentation


def run_layer(
    pre: Array,
    w: Array,
    v: Array,
    d: Dynamics,
    backend: str = "torch",
    learn: tuple[Array, LearnSpec, float, Array] | None = None,
    pre_index: SpikeIndex | None = None,
) -> tuple[Array, Array]:
    """Present spikes ``pre`` ``[T, N, D]`` to a layer with weights ``w`` ``[H, D]`` and membrane
    ``v`` ``[N, H]`` (updated in place). With ``learn = (y, spec, eta, eligibility)`` the
    weights update in place after every step t > learn_after, as the reference does.
    ``pre_index`` (the :class:`SpikeIndex` of ``pre`` as ``[T * N, D]``) makes the currents
    sparse sums. Returns output spikes ``[T, N, H]`` and the final trace ``[N, H]``."""
    t_steps, n, _ = pre.shape
    h = w.shape[0]
    tr = _zeros(v, (n, h))

    def currents(t0: int, t1: int):
        if pre_index is not None:
            return pre_index.rows(t0 * n, t1 * n).matmul(w).reshape(t1 - t0, n, h)
        return (pre[t0:t1].reshape((t1 - t0) * n, -1) @ w.T).reshape(t1 - t0, n, h)

    first = t_steps if learn is None else learn[1].learn_after + 1
    if first >= t_steps:
        return neuron_forward(currents(0, t_steps), v, tr, d, backend), tr
    y, spec, eta, e = learn
    out = _zeros(v, (t_steps, n, h))
    k = first + 1  # steps 0..first run before the first update
    out[:k] = neuron_forward(currents(0, k), v, tr, d, backend)
    for t in range(first, t_steps):
        dw = ff_hebbian_delta(d.probability, tr, pre[t], y, d.goodness)
        apply_delta(w, dw, eta, spec.eligibility_tau, e, backend)
        if t + 1 < t_steps:
            out[t + 1] = neuron_forward(currents(t + 1, t + 2), v, tr, d, backend)[0]
    return out, tr


def learns_online(batch: int, spec: LearnSpec, neuron: NeuronParams, on_cpu: bool = True) -> bool:
    """Whether a batch learns through :func:`online_layer` (one sample on the CPU, with an
    eligibility trace and no k-WTA) rather than :func:`run_layer`: the one place both the
    torch engine and the runtime decide it."""
    return batch == 1 and on_cpu and spec.eligibility_tau is not None and neuron.kwta is None


def online_layer(
    pre: np.ndarray,
    w: np.ndarray,
    v: np.ndarray,
    d: Dynamics,
    y: float,
    spec: LearnSpec,
    eta: float,
    e: np.ndarray,
    matmul=np.matmul,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`run_layer` with learning for one sample (numpy, ``N = 1``), without a full pass
    over ``w`` per step.

    Inside the window the weights after learning step j are
    W_j = W0 + eta A_j e0 + eta tau sum_q B_{j-q} u_q x_q^T with a = 1 - tau,
    A_j = a + ... + a^(j+1), B_m = 1 + ... + a^m and u_q x_q^T the Hebbian delta of step q,
    so every current is W0 x + eta A_j (e0 x) + a small sum over the deltas so far. W and e
    are written once, at the end. ``pre`` ``[T, 1, D]``; ``v`` ``[1, H]``; ``w``, ``e``
    ``[H, D]`` are updated in place. Without an eligibility trace use :func:`run_layer`.

    Only the inputs that spiked in the sample touch W, so the work is done on W's rows per
    input: ``w.T`` should be contiguous (see :func:`input_major`); otherwise a transposed copy
    is made and written back. ``matmul`` does the few products (torch passes its own BLAS:
    mixing numpy's and torch's thread pools in one process costs more than the products).
    """
    if spec.eligibility_tau is None:
        raise ValueError("online_layer needs an eligibility trace; use run_layer")
    if pre.shape[0] <= spec.learn_after + 1:
        return run_layer(pre, w, v, d)
    wt, et = w.T, e.T
    if wt.flags.c_contiguous and et.flags.c_contiguous:
        return _online_input_major(pre, wt, et, v, d, y, spec, eta, matmul)
    wt, et = np.ascontiguousarray(wt), np.ascontiguousarray(et)
    out = _online_input_major(pre, wt, et, v, d, y, spec, eta, matmul)
    w[...] = wt.T
    e[...] = et.T
    return out


def input_major(w):
    """``w`` ``[H, D]`` re-allocated so that ``w.T`` is contiguous (same values, a view)."""
    return w.T.copy().T if not _array.is_torch(w) else w.t().contiguous().t()


_TRIL: dict[int, tuple] = {}


def _online_input_major(pre, wt, et, v, d: Dynamics, y: float, spec: LearnSpec, eta: float, matmul):
    """:func:`online_layer` on input-major weights ``wt``, ``et`` ``[D, H]`` (contiguous)."""
    t_steps = pre.shape[0]
    first = spec.learn_after + 1
    h = wt.shape[1]
    x = pre[:, 0, :]  # [T, D]
    tau = spec.eligibility_tau
    a = 1.0 - tau
    # Only the inputs that spiked during this sample matter (a few % of them).
    cols = np.flatnonzero(x.any(axis=0))
    xu = np.ascontiguousarray(x[:, cols])  # [T, U]
    both = matmul(xu, np.concatenate((wt[cols], et[cols]), axis=1))  # [T, 2H]: W0 x_t and e0 x_t
    p_cur, q_cur = both[:, :h], both[:, h:]
    tr = np.zeros((1, h), dtype=np.float32)
    out = np.zeros((t_steps, 1, h), dtype=np.float32)
    out[: first + 1] = _numpy_neuron_forward(p_cur[: first + 1, None, :].copy(), v, tr, d.neuron, d.trace)
    k = t_steps - first  # learning steps
    xs = xu[first:]  # inputs of the learning steps, [K, U]
    gram = matmul(xs, xu.T)  # [K, T]: x_q . x_t
    gain = hebbian_gain(d.goodness, h, d.probability.split)
    us = np.zeros((k, h), dtype=np.float32)
    a_pow = [a ** (i + 1) for i in range(k)]
    b_sum = np.cumsum([a**i for i in range(k)])  # B_m = 1 + a + ... + a^m
    # coef[j, q] = eta tau B_{j-q} (x_q . x_{t_j + 1}) for q <= j: the weight of delta q in the
    # current after learning step j (lower triangular, once per sample)
    if k not in _TRIL:
        _TRIL[k] = np.tril_indices(k)
    jj, qq = _TRIL[k]
    coef = np.zeros((k, k), dtype=np.float32)
    coef[jj, qq] = eta * tau * b_sum[jj - qq] * gram[qq, np.minimum(first + jj + 1, t_steps - 1)]
    cur = np.empty((1, 1, h), dtype=np.float32)
    for j in range(k):
        t = first + j
        _modulated_trace(d, tr, float(y), gain, us[j])
        if t + 1 < t_steps:
            # (coef * us).sum(0) rather than coef @ us: a BLAS call this small costs more in
            # thread start-up than in arithmetic.
            np.multiply(q_cur[t + 1], np.float32(eta * sum(a_pow[: j + 1])), out=cur[0, 0])
            cur[0, 0] += p_cur[t + 1]
            cur[0, 0] += (coef[j, : j + 1, None] * us[: j + 1]).sum(0)
            out[t + 1] = _numpy_neuron_forward(cur, v, tr, d.neuron, d.trace)[0]
    # Write the history back: W gets eta A e0 + eta tau sum B u x^T, e decays and gains
    # tau sum a^(K-1-q) u x^T. The rank-K parts only touch the rows of the active inputs.
    coef_w = (np.float32(eta * tau) * b_sum[::-1]).astype(np.float32)[:, None]
    coef_e = np.asarray([tau * a ** (k - 1 - q) for q in range(k)], dtype=np.float32)[:, None]
    delta = matmul(np.ascontiguousarray(xs.T), np.concatenate((us * coef_w, us * coef_e), axis=1))  # [U, 2H]
    np.add(wt, np.multiply(et, np.float32(eta * sum(a_pow))), out=wt)
    et *= np.float32(a**k)
    wt[cols] += delta[:, :h]
    et[cols] += delta[:, h:]
    return out, tr


def _modulated_trace(d: Dynamics, tr: np.ndarray, y: float, gain: float, out: np.ndarray) -> None:
    """out = gain * M * trace for one sample (``tr`` ``[1, H]``): the post-synaptic factor of
    the Hebbian delta. Goodness and modulation are scalars here, so they are computed on
    Python floats (the probability functions accept them) rather than on 1-element arrays."""
    prob = d.probability
    act = tr[0]
    if prob.split:
        h2 = act.shape[0] // 2
        pos, neg = act[:h2], act[h2:]
        g = (_scalar_goodness(pos, d.goodness), _scalar_goodness(neg, d.goodness))
        m_pos, m_neg = prob.modulation(g, y)
        np.multiply(pos, np.float32(m_pos * gain), out=out[:h2])
        np.multiply(neg, np.float32(m_neg * gain), out=out[h2:])
    else:
        m = prob.modulation(_scalar_goodness(act, d.goodness), y)
        np.multiply(act, np.float32(m * gain), out=out)


def scalar_logit(d: Dynamics, act: np.ndarray) -> float:
    """log(P / (1 - P)) of one sample's activity ``[H]`` (Python float)."""
    if d.probability.split:
        h2 = act.shape[0] // 2
        g = (_scalar_goodness(act[:h2], d.goodness), _scalar_goodness(act[h2:], d.goodness))
        return float(d.probability.logit(g))
    return float(d.probability.logit(_scalar_goodness(act, d.goodness)))


def _scalar_goodness(act: np.ndarray, kind: str) -> float:
    if kind == "sum_squares":
        return float(np.dot(act, act))
    if kind == "mean_squares":
        return float(np.dot(act, act)) / act.shape[0]
    return float(goodness(act[None], kind)[0])


# ------------------------------------------------------------------------------------------
# scoring every label


def score_labels(
    first_current,
    num_labels: int,
    weights: list[Array],
    d: Dynamics,
    states: list[Array | None],
    carry: bool,
    rest_steps: int,
    backend: str = "torch",
    counts: bool = False,
) -> tuple[list[Array], list[Array]]:
    """Present C candidate labels to every layer and collect each layer's final traces.

    ``first_current(k)`` returns layer 1's input current ``[T, N, H1]`` for label k (see
    :func:`label_currents`). Labels stream through all layers one after another, so no
    ``[C, T, N, H]`` tensor is ever built. With ``carry`` each layer's membrane carries from
    one label to the next, decaying over ``rest_steps`` (the paper); otherwise every label
    starts from rest. ``states`` holds each layer's starting membrane ``[N, H]`` (or ``None``).
    Returns per layer the final traces (or spike counts) ``[C, N, H]``, and the membranes
    left at the end (``None`` without ``carry``).
    """
    outputs: list[Array] = []
    vs: list[Array] = []
    for k in range(num_labels):
        current = first_current(k)
        t, n, _ = current.shape
        spikes = None
        for i, w in enumerate(weights):
            h = w.shape[0]
            if spikes is not None:  # the previous layer's output drives this one
                current = (spikes.reshape(t * n, -1) @ w.T).reshape(t, n, h)
            if k == 0:
                outputs.append(_empty(current, (num_labels, n, h)))
                start = states[i] if carry and states[i] is not None and tuple(states[i].shape) == (n, h) else None
                vs.append(_zeros(current, (n, h)) if start is None else _contiguous(_copy(start)))
            v = vs[i] if carry else _zeros(current, (n, h))
            tr = _zeros(current, (n, h))
            spikes = neuron_forward(_contiguous(current), v, tr, d, backend)
            outputs[i][k] = spikes.sum(0) if counts else tr
            if carry:
                v[...] = rest(v, d, rest_steps)
    return outputs, (vs if carry else [None] * len(weights))


def label_currents(
    image_rates: Array,
    label_rates: Array,
    image_slice: slice,
    label_slice: slice,
    w: Array,
    steps: int,
    rng,
    share: bool = True,
    coding: str = "bernoulli",
):
    """Draw input spikes for every candidate label; returns ``current(k)``, layer 1's input
    current ``[T, N, H]`` for label k.

    ``image_rates`` ``[N, D]`` are the images' spike probabilities (the embedded input holds
    positions ``image_slice`` of them at the same positions); ``label_rates`` ``[C, L]`` those
    of each label's code, at ``label_slice`` of the embedded input (``w`` is ``[H, D']``).
    With ``share`` all labels of an image see the same image spikes and the same uniform
    draws for their label positions (common random numbers), so the image part of the
    current is computed once, not C times; and when every active label position has the
    same rate (binary label codes) one draw of label spikes serves every label, each label
    adding a small product over its own active positions.
    """
    c, width = label_rates.shape
    n = image_rates.shape[0]
    h = w.shape[0]
    if not share:
        rates = _embedded_rates(image_rates, label_rates, image_slice, label_slice, w.shape[1])  # [C, N, D']
        spikes = bernoulli_spikes(rates, steps, rng)  # [T, C, N, D']
        full = _swap01((spikes.reshape(steps * c * n, -1) @ w.T).reshape(steps, c, n, h))
        return lambda k: full[k]
    w_lab = w[:, label_slice]
    if _array.is_torch(image_rates):
        import torch

        keep_idx = torch.arange(image_slice.start, image_slice.stop, device=image_rates.device)
        w_shared = w.index_select(1, keep_idx)
        shared_rates = image_rates.index_select(1, keep_idx)
        if image_rates.device.type == "cpu":
            _, index = encode_spikes(shared_rates, steps, rng, coding, index=True, dense=False)
            shared = index.matmul(w_shared)  # [T*N, H]
        else:
            spikes = encode_spikes(shared_rates, steps, rng, coding)
            shared = spikes.reshape(steps * n, -1) @ w_shared.T
        u = torch.rand(steps, n, width, generator=rng, device=image_rates.device) if coding == "bernoulli" else None
        code = label_rates  # [C, L]
        level = code.max()
        if bool(((code == 0) | (code == level)).all()):
            # Binary codes: label c's spikes are (u < level) on c's active positions.
            if u is None:  # regular coding: every active position fires on the same steps
                fired = regular_spikes(level.reshape(1), steps).expand(steps, n * width).reshape(steps * n, width)
            else:
                fired = (u < level).to(image_rates.dtype).reshape(steps * n, width)
            active = [(code[k] > 0).nonzero().squeeze(1) for k in range(c)]

            def current(k: int):
                on = active[k]
                if not on.numel():
                    return shared.reshape(steps, n, h)
                return torch.addmm(shared, fired.index_select(1, on), w_lab.index_select(1, on).T).reshape(steps, n, h)

            return current
        if u is None:
            label = _swap01(regular_spikes(code[:, None, :].expand(c, n, width), steps))  # [C, T, N, L]
        else:
            label = (u[None] < code[:, None, None, :]).to(image_rates.dtype)  # [C, T, N, L]
    else:
        keep_idx = np.arange(image_slice.start, image_slice.stop)
        shared = _shared_current(image_rates[:, keep_idx], w[:, keep_idx], steps, rng, coding)
        if coding == "regular":
            per_image = np.broadcast_to(label_rates[:, None, :], (c, n, width))
            label = np.swapaxes(regular_spikes(per_image, steps), 0, 1)  # [C, T, N, L]
        else:
            u = rng.random((steps, n, width), dtype=np.float32)
            label = _array.astype_like(u[None] < label_rates[:, None, None, :], image_rates)  # [C, T, N, L]
    return lambda k: (shared + label[k].reshape(steps * n, width) @ w_lab.T).reshape(steps, n, h)


def _embedded_rates(image_rates: Array, label_rates: Array, image_slice: slice, label_slice: slice, width: int):
    """Every label's embedded rates ``[C, N, D']``, for the path that draws them all."""
    c, n = label_rates.shape[0], image_rates.shape[0]
    out = _zeros(image_rates, (c, n, width))
    out[:, :, image_slice] = image_rates[:, image_slice]
    out[:, :, label_slice] = label_rates[:, None, :]
    return out


_CHUNK_STEPS = 32


def _shared_current(rates: np.ndarray, w: np.ndarray, steps: int, rng, coding: str) -> np.ndarray:
    """``[T * N, H]`` current of the image spikes (numpy), drawn and multiplied a few steps at a
    time: the uniform draws come in the same order as one ``[T, N, S]`` draw, so the result is
    the same, but memory stays bounded and a long run stays interruptible between chunks."""
    n = rates.shape[0]
    if coding != "bernoulli" or steps <= _CHUNK_STEPS:
        return encode_spikes(rates, steps, rng, coding).reshape(steps * n, -1) @ w.T
    out = np.empty((steps * n, w.shape[0]), dtype=np.result_type(w.dtype, np.float32))
    wt = w.T
    for t0 in range(0, steps, _CHUNK_STEPS):
        t1 = min(steps, t0 + _CHUNK_STEPS)
        spikes = bernoulli_spikes(rates, t1 - t0, rng)
        np.matmul(spikes.reshape((t1 - t0) * n, -1), wt, out=out[t0 * n : t1 * n])
    return out


def _copy(x: Array) -> Array:
    return x.clone() if _array.is_torch(x) else x.copy()


def _swap01(x: Array) -> Array:
    return x.transpose(0, 1) if _array.is_torch(x) else np.swapaxes(x, 0, 1)


def _contiguous(x: Array) -> Array:
    return x.contiguous() if _array.is_torch(x) else np.ascontiguousarray(x)
