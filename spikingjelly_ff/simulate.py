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
from .hebbian import ff_hebbian_delta, neuron_modulation
from .goodness import hebbian_gain
from .params import NeuronParams, TraceParams
from .probability import Probability

Array = Any  # torch tensor or numpy array

__all__ = [
    "Dynamics",
    "LearnSpec",
    "bernoulli_spikes",
    "eligibility_apply",
    "label_currents",
    "neuron_forward",
    "online_layer",
    "rest",
    "run_layer",
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
    fired = np.empty(v.shape, dtype=bool)
    beta = np.float32(p.beta)
    for t in range(current.shape[0]):
        if p.form == "beta":
            np.multiply(v, beta, out=v)
            np.add(v, current[t], out=v)
        else:
            v[...] = charge(v, current[t], p)
        if p.fire == ">":
            np.greater(v, p.v_threshold, out=fired)
        else:
            np.greater_equal(v, p.v_threshold, out=fired)
        np.putmask(v, fired, np.float32(p.v_reset))
        st = spikes[t]
        st[...] = fired
        if tp.kind == "count":
            trace += st * np.float32(tp.increment)
        elif tp.kind == "leaky":
            np.multiply(trace, np.float32(tp.decay), out=trace)
            trace += st * np.float32(tp.one_minus_decay)
        elif tp.kind == "hard":
            np.multiply(trace, np.float32(tp.decay), out=trace)
            np.putmask(trace, fired, np.float32(1.0))
        else:
            trace[...] = st
    return spikes


def rest(v: Array, d: Dynamics, steps: int) -> Array:
    """Membrane after ``steps`` steps with no input (spikes only reset it)."""
    p = d.neuron
    # Without k-WTA every neuron above threshold fired and reset at the last input step, and
    # with no input V only decays (towards v_reset, or 0 for the beta form): no spike is
    # possible, so the firing test can be skipped.
    silent = p.kwta is None and p.v_reset <= p.v_threshold and (p.form == "lif" or p.v_threshold >= 0)
    zero = _zeros(v, tuple(v.shape))
    for _ in range(steps):
        v = charge(v, zero, p)
        if not silent:
            v = reset(v, fire(v, p), p)
    return v


def eligibility_apply(e: Array, w: Array, dw: Array, tau: float, eta: float, backend: str = "torch") -> None:
    """In place: e <- (1 - tau) e + tau dW, then w <- w + eta e."""
    if _array.is_torch(e):
        from . import kernels

        kernels.eligibility_apply(e, w, dw, tau, eta, backend)
        return
    e *= np.float32(1.0 - tau)
    e += dw * np.float32(tau)
    w += e * np.float32(eta)


def bernoulli_spikes(rates: Array, steps: int, rng) -> Array:
    """``[steps, *rates.shape]`` float spikes, 1 with probability ``rates``; random numbers
    are drawn only where the rate is positive. ``rng``: a torch.Generator or numpy Generator."""
    if _array.is_torch(rates):
        from .models import bernoulli_spikes as torch_spikes

        return torch_spikes(rates, steps, rng)
    flat = rates.reshape(-1)
    live = np.flatnonzero(flat)
    out = np.zeros((steps, flat.size), dtype=np.float32)
    if live.size:
        u = rng.random((steps, live.size), dtype=np.float32)
        out[:, live] = u < flat[live]
    return out.reshape(steps, *rates.shape)


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
) -> tuple[Array, Array]:
    """Present spikes ``pre`` ``[T, N, D]`` to a layer with weights ``w`` ``[H, D]`` and membrane
    ``v`` ``[N, H]`` (updated in place). With ``learn = (y, spec, eta, eligibility)`` the
    weights update in place after every step t > learn_after, as the reference does.
    Returns output spikes ``[T, N, H]`` and the final trace ``[N, H]``."""
    t_steps, n, _ = pre.shape
    h = w.shape[0]
    tr = _zeros(v, (n, h))
    first = t_steps if learn is None else learn[1].learn_after + 1
    if first >= t_steps:
        current = (pre.reshape(t_steps * n, -1) @ w.T).reshape(t_steps, n, h)
        return neuron_forward(current, v, tr, d, backend), tr
    y, spec, eta, e = learn
    out = _zeros(v, (t_steps, n, h))
    k = first + 1  # steps 0..first run before the first update
    current = (pre[:k].reshape(k * n, -1) @ w.T).reshape(k, n, h)
    out[:k] = neuron_forward(current, v, tr, d, backend)
    for t in range(first, t_steps):
        dw = ff_hebbian_delta(d.probability, tr, pre[t], y, d.goodness)
        if spec.eligibility_tau is None:
            w += dw * eta
        else:
            eligibility_apply(e, w, dw, spec.eligibility_tau, eta, backend)
        if t + 1 < t_steps:
            current = (pre[t + 1] @ w.T).reshape(1, n, h)
            out[t + 1] = neuron_forward(current, v, tr, d, backend)[0]
    return out, tr


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
    ``matmul`` does the few large products (torch passes its own BLAS: mixing numpy's and
    torch's thread pools in one process costs far more than the products themselves).
    """
    if spec.eligibility_tau is None:
        raise ValueError("online_layer needs an eligibility trace; use run_layer")
    t_steps = pre.shape[0]
    first = spec.learn_after + 1
    if first >= t_steps:
        return run_layer(pre, w, v, d)
    h = w.shape[0]
    x = pre[:, 0, :]  # [T, D]
    tau = spec.eligibility_tau
    a = 1.0 - tau
    both = matmul(x, np.concatenate((w, e)).T)  # [T, 2H]: W0 x_t and e0 x_t for every step
    p_cur, q_cur = both[:, :h], both[:, h:]
    tr = np.zeros((1, h), dtype=np.float32)
    out = np.zeros((t_steps, 1, h), dtype=np.float32)
    out[: first + 1] = _numpy_neuron_forward(p_cur[: first + 1, None, :].copy(), v, tr, d.neuron, d.trace)
    learn_steps = t_steps - first
    xs = x[first:]  # inputs of the learning steps
    gram = matmul(xs, x.T)  # [K, T]: x_q . x_t
    gain = hebbian_gain(d.goodness, h, d.probability.split)
    us = np.zeros((learn_steps, h), dtype=np.float32)
    yv = np.asarray([y], dtype=np.float32)
    a_pow = [a ** (i + 1) for i in range(learn_steps)]
    b_sum = np.cumsum([a**i for i in range(learn_steps)])  # B_m = 1 + a + ... + a^m
    for j in range(learn_steps):
        t = first + j
        m = neuron_modulation(d.probability, tr, yv, d.goodness)
        us[j] = (m * tr)[0] * np.float32(gain)
        if t + 1 < t_steps:
            coef = (eta * tau * b_sum[j::-1] * gram[: j + 1, t + 1]).astype(np.float32)
            # (coef[:, None] * us).sum(0) rather than coef @ us: a BLAS call this small costs
            # more in thread start-up than in arithmetic.
            low_rank = (coef[:, None] * us[: j + 1]).sum(0)
            cur = p_cur[t + 1] + np.float32(eta * sum(a_pow[: j + 1])) * q_cur[t + 1] + low_rank
            out[t + 1] = _numpy_neuron_forward(cur[None, None, :].astype(np.float32), v, tr, d.neuron, d.trace)[0]
    # Write the low-rank history back: W gets eta A e0 + eta tau sum B u x^T, e decays and
    # gains tau sum a^(K-1-q) u x^T.
    k = learn_steps
    w += np.float32(eta * sum(a_pow[:k])) * e
    w += matmul(us.T * np.float32(eta * tau) * b_sum[k - 1 :: -1].astype(np.float32), xs)
    e *= np.float32(a**k)
    e += matmul(us.T * np.float32(tau) * np.asarray([a ** (k - 1 - q) for q in range(k)], dtype=np.float32), xs)
    return out, tr


# ------------------------------------------------------------------------------------------
# scoring every label


def score_labels(
    currents_first: Array,
    weights: list[Array],
    d: Dynamics,
    states: list[Array | None],
    carry: bool,
    rest_steps: int,
    backend: str = "torch",
    counts: bool = False,
) -> tuple[list[Array], list[Array]]:
    """Present C labels to every layer, given layer 1's currents ``[C, T, N, H]``.

    With ``carry`` the labels follow one another and each layer's membrane carries over,
    decaying over ``rest_steps`` between labels (the paper); otherwise each label starts
    from rest and all C run side by side. ``states`` holds each layer's starting membrane
    ``[N, H]`` (or ``None``). Returns per layer the final traces (or spike counts)
    ``[C, N, H]`` and the membranes left at the end.
    """
    outputs, final_states = [], []
    current = currents_first
    for i, w in enumerate(weights):
        if i > 0:
            c, t, n, _ = spikes.shape
            current = (spikes.reshape(c * t * n, -1) @ w.T).reshape(c, t, n, w.shape[0])
        c, t, n, h = current.shape
        if not carry:
            v = _zeros(current, (c * n, h))
            tr = _zeros(current, (c * n, h))
            flat = _swap01(current).reshape(t, c * n, h)
            spikes = _swap01(neuron_forward(_contiguous(flat), v, tr, d, backend).reshape(t, c, n, h))
            traces = tr.reshape(c, n, h)
            final_states.append(None)
        else:
            v = states[i] if states[i] is not None and tuple(states[i].shape) == (n, h) else _zeros(current, (n, h))
            v = _contiguous(v.copy() if not _array.is_torch(v) else v.clone())
            spikes = _zeros(current, (c, t, n, h))
            traces = _zeros(current, (c, n, h))
            for k in range(c):
                spikes[k] = neuron_forward(_contiguous(current[k]), v, traces[k], d, backend)
                v[...] = rest(v, d, rest_steps)
            final_states.append(v)
        outputs.append(spikes.sum(1) if counts else traces)
    return outputs, final_states


def label_currents(rates: Array, label_slice: slice, w: Array, steps: int, rng, share: bool = True) -> Array:
    """Draw input spikes for every candidate label and return layer 1's current ``[C, T, N, H]``.

    ``rates`` ``[C, N, D']`` are the embedded inputs' spike probabilities; only the positions
    in ``label_slice`` differ between labels. With ``share`` all labels of an image see the
    same image spikes and the same uniform draws for their label positions (common random
    numbers), so the image part of the current is computed once, not C times.
    """
    c, n, d = rates.shape
    h = w.shape[0]
    if not share:
        spikes = bernoulli_spikes(rates, steps, rng)  # [T, C, N, D']
        return _swap01((spikes.reshape(steps * c * n, d) @ w.T).reshape(steps, c, n, h))
    keep = np.ones(d, dtype=bool)
    keep[label_slice] = False
    width = label_slice.stop - label_slice.start
    if _array.is_torch(rates):
        import torch

        keep_idx = torch.from_numpy(np.flatnonzero(keep)).to(rates.device)
        shared_rates = rates[0].index_select(1, keep_idx)
        u = torch.rand(steps, n, width, generator=rng, device=rates.device)
        w_shared = w.index_select(1, keep_idx)
    else:
        keep_idx = np.flatnonzero(keep)
        shared_rates = rates[0][:, keep_idx]
        u = rng.random((steps, n, width), dtype=np.float32)
        w_shared = w[:, keep_idx]
    shared = bernoulli_spikes(shared_rates, steps, rng)  # [T, N, S]
    label = _array.astype_like(u[None] < rates[:, None, :, label_slice], rates)  # [C, T, N, L]
    cur = (shared.reshape(steps * n, -1) @ w_shared.T).reshape(1, steps, n, h)
    return cur + (label.reshape(c * steps * n, width) @ w[:, label_slice].T).reshape(c, steps, n, h)


def _swap01(x: Array) -> Array:
    return x.transpose(0, 1) if _array.is_torch(x) else np.swapaxes(x, 0, 1)


def _contiguous(x: Array) -> Array:
    return x.contiguous() if _array.is_torch(x) else np.ascontiguousarray(x)
