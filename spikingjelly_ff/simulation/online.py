"""Batch-1 learning without a pass over the whole weight matrix per step (numpy).

Inside a sample the per-step Hebbian updates are kept as a low-rank correction of the
weights and written once, at the end: same spikes as :func:`~.layer.run_layer`, weights
equal up to float rounding.
"""

from __future__ import annotations

import numpy as np

from spikingjelly_ff.functional.goodness import goodness, hebbian_gain
from spikingjelly_ff.functional.hebbian import ELIGIBILITY_FLOOR
from spikingjelly_ff.functional.params import HebbianParams
from spikingjelly_ff.kernels import numba_online, numpy_loop
from spikingjelly_ff.simulation.encoding import SampleDraws
from spikingjelly_ff.simulation.layer import Dynamics, rest, run_layer

__all__ = ["online_layer", "scalar_logit"]


def online_layer(
    pre: np.ndarray | SampleDraws,
    w: np.ndarray,
    v: np.ndarray,
    d: Dynamics,
    y: float,
    spec: HebbianParams,
    eta: float,
    e: np.ndarray,
    matmul=np.matmul,
    compiled: bool | None = None,
    rest_steps: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`run_layer` with learning for one sample (numpy, ``N = 1``), without a full pass
    over ``w`` per step, then ``rest_steps`` steps with no input (:func:`rest`).

    Inside the window the weights after learning step j are
    W_j = W0 + eta A_j e0 + eta tau sum_q B_{j-q} u_q x_q^T with a = 1 - tau,
    A_j = a + ... + a^(j+1), B_m = 1 + ... + a^m and u_q x_q^T the Hebbian delta of step q,
    so every current is W0 x + eta A_j (e0 x) + a small sum over the deltas so far. W and e
    are written once, at the end. ``pre`` ``[T, 1, D]`` (or the sample's Bernoulli
    :class:`SampleDraws`); ``v`` ``[1, H]``; ``w``, ``e`` ``[H, D]`` are updated in place.
    Without an eligibility trace use :func:`run_layer`.

    Only the inputs that spiked in the sample touch W, so the work is done on W's rows per
    input: ``w.T`` should be contiguous (see :func:`input_major`); otherwise a transposed copy
    is made and written back. ``matmul`` does the few products (torch passes its own BLAS:
    mixing numpy's and torch's thread pools in one process costs more than the products).

    ``compiled`` (default: when numba is installed and the layer allows it) runs the whole
    presentation, spikes from the draws and rest steps included, as one call of
    ``kernels.numba_online`` instead of the numpy steps below.
    """
    if spec.eligibility_tau is None:
        raise ValueError("online_layer needs an eligibility trace; use run_layer")
    if compiled is None:
        compiled = numba_online.supported(d.neuron, d.goodness, w.dtype) and v.dtype == w.dtype == e.dtype
    steps = pre.steps if isinstance(pre, SampleDraws) else pre.shape[0]
    if isinstance(pre, SampleDraws) and (not compiled or steps <= spec.learn_after + 1):
        pre = pre.dense()[:, None, :]
    if steps <= spec.learn_after + 1:
        out = run_layer(pre, w, v, d)
        if rest_steps:
            rest(v, d, rest_steps)
        return out
    wt, et = w.T, e.T
    copied = not (wt.flags.c_contiguous and et.flags.c_contiguous)
    if copied:
        wt, et = np.ascontiguousarray(wt), np.ascontiguousarray(et)
    if compiled:
        out = _online_compiled(pre, wt, et, v, d, y, spec, eta, rest_steps)
    else:
        out = _online_input_major(pre, wt, et, v, d, y, spec, eta, matmul)
        if rest_steps:
            rest(v, d, rest_steps)
    if copied:
        w[...] = wt.T
        e[...] = et.T
    return out


def _online_compiled(pre, wt, et, v, d: Dynamics, y: float, spec: HebbianParams, eta: float, rest_steps: int):
    """:func:`online_layer` as one compiled call (``kernels.numba_online``)."""
    gain = hebbian_gain(d.goodness, wt.shape[1], d.probability.split)
    vv = v.reshape(-1)  # [1, H] -> [H], a view (written in place)
    args = (wt, et, vv, d, gain, y, spec.learn_after + 1, spec.eligibility_tau, eta, rest_steps)
    if isinstance(pre, SampleDraws):
        out, tr = numba_online.present_online(None, *args, draws=(pre.u, pre.rates, pre.live))
    else:
        out, tr = numba_online.present_online(pre[:, 0, :], *args)
    if not np.shares_memory(vv, v):
        v[...] = vv.reshape(v.shape)
    return out[:, None, :], tr[None, :]


_TRIL: dict[int, tuple] = {}


def _online_input_major(pre, wt, et, v, d: Dynamics, y: float, spec: HebbianParams, eta: float, matmul):
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
    out[: first + 1] = numpy_loop.neuron_forward(p_cur[: first + 1, None, :].copy(), v, tr, d.neuron, d.trace)[0]
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
            out[t + 1] = numpy_loop.neuron_forward(cur, v, tr, d.neuron, d.trace)[0][0]
    # Write the history back: W gets eta A e0 + eta tau sum B u x^T, e decays and gains
    # tau sum a^(K-1-q) u x^T. The rank-K parts only touch the rows of the active inputs.
    coef_w = (np.float32(eta * tau) * b_sum[::-1]).astype(np.float32)[:, None]
    coef_e = np.asarray([tau * a ** (k - 1 - q) for q in range(k)], dtype=np.float32)[:, None]
    delta = matmul(np.ascontiguousarray(xs.T), np.concatenate((us * coef_w, us * coef_e), axis=1))  # [U, 2H]
    np.add(wt, np.multiply(et, np.float32(eta * sum(a_pow))), out=wt)
    et *= np.float32(a**k)
    wt[cols] += delta[:, :h]
    et[cols] += delta[:, h:]
    et[np.abs(et) < ELIGIBILITY_FLOOR] = 0.0  # as the compiled kernel: once per presentation
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
