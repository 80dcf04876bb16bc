"""Modulated Hebbian updates: the FF gradient written as a local rule.

For a layer l = f(W x) with goodness G(l) and loss L(P(G), y), the chain rule gives

    -dL/dW = M * (dG/dl * f'(Wx)) x^T,     M = -dL/dG.

With a quadratic goodness (dG/dl = c l) and ReLU (l f'(z) = l) this is the Hebbian product
c M l x^T: post-synaptic activity times pre-synaptic input, gated by one scalar per sample
(or per half for split probabilities). Shapes: ``post`` ``[N, H]``, ``pre`` ``[N, D]``,
modulation ``m`` ``[N, H]`` (one value per neuron), deltas ``[H, D]`` (torch ``Linear``
weight layout), averaged over the batch like a mean-reduced loss. Torch or numpy inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spikingjelly_ff.functional import _array
from spikingjelly_ff.functional.goodness import goodness, goodness_grad, hebbian_gain, split_halves
from spikingjelly_ff.functional.probability import Probability

Tensor = Any  # a torch tensor or a numpy array

#: Combines the per-rank parts of a data-parallel delta: called with this rank's float64 sum
#: ``[D, H]`` over its ``n`` rows, returns the batch mean over the rows of every rank.
DeltaReduce = Callable[[Tensor, int], Tensor]

#: Eligibility entries smaller than this in magnitude (2**-100, about 7.9e-31) are set to 0 by
#: every path that updates the trace. An entry of an input that stops firing decays
#: geometrically, and below float32's smallest normal number (1.2e-38) it turns subnormal:
#: x86 CPUs take a microcode assist of about a hundred cycles per operation on one, which made
#: the eligibility pass 2-4x slower after a few hundred batches. At this floor any product with
#: a learning rate above 2**-26 stays normal, and such an entry is ~10**27 times below the
#: traces the rule builds (~1e-3), so it could only move a weight smaller than ~1e-23.
ELIGIBILITY_FLOOR = 2.0**-100

__all__ = [
    "ELIGIBILITY_FLOOR",
    "DeltaReduce",
    "eligibility_step",
    "ff_hebbian_delta",
    "ff_local_rule_delta",
    "hebbian_delta",
    "hebbian_sum",
    "local_rule_delta",
    "neuron_modulation",
]


def neuron_modulation(prob: Probability, post: Tensor, y: Tensor, goodness_kind: str = "sum_squares") -> Tensor:
    """Per-neuron modulation ``[N, H]`` from activity ``post`` ``[N, H]`` and targets ``y`` ``[N]``.

    Every neuron of a sample gets that sample's M; with a split probability the
    positive half gets M+ and the negative half M-.
    """
    if prob.split:
        g = goodness(post, goodness_kind, split=True)
        m_pos, m_neg = prob.modulation(g, y)
        pos, neg = split_halves(post)
        return _array.concat([_array.expand_last(m_pos, pos.shape[-1]), _array.expand_last(m_neg, neg.shape[-1])])
    m = prob.modulation(goodness(post, goodness_kind), y)
    return _array.expand_last(m, post.shape[-1])


def hebbian_delta(m: Tensor, post: Tensor, pre: Tensor, gain: float = 1.0) -> Tensor:
    """dW = gain / N * sum_i (m_i * post_i) pre_i^T, ``[H, D]``."""
    n = post.shape[0]
    # computed as (pre^T (m post))^T: an input-major result, the layout the weights use
    return (pre.T @ (m * post)).T * (gain / n)


def hebbian_sum(m: Tensor, post: Tensor, pre: Tensor, gain: float = 1.0) -> Tensor:
    """gain * sum_i (m_i * post_i) pre_i^T in float64, input-major ``[D, H]`` (contiguous).

    The per-rank part of a data-parallel delta: float32 products are exact in float64 and the
    float64 sum rounds ~1e-16, so the total rounded to float32 does not depend on how the
    batch was split across ranks (up to a tie at one float32 rounding boundary)."""
    return (_array.float64(pre).T @ _array.float64(m * post)) * gain


def local_rule_delta(m: Tensor, dgdl: Tensor, dact: Tensor, pre: Tensor) -> Tensor:
    """The exact local rule for any goodness/activation: 1/N sum_i (m_i dG/dl_i f'_i) pre_i^T."""
    n = pre.shape[0]
    return ((m * dgdl * dact).T @ pre) / n


def ff_hebbian_delta(
    prob: Probability,
    post: Tensor,
    pre: Tensor,
    y: Tensor,
    goodness_kind: str = "sum_squares",
    reduce: DeltaReduce | None = None,
) -> Tensor:
    """-dL/dW of a ReLU FF layer with quadratic goodness, computed as a Hebbian product.

    With ``reduce`` (data parallel), this batch is one rank's shard: the delta is
    ``reduce(hebbian_sum(...), N)`` (the mean over every rank's rows) in ``post``'s dtype."""
    gain = hebbian_gain(goodness_kind, post.shape[-1], prob.split)
    m = neuron_modulation(prob, post, y, goodness_kind)
    if reduce is None:
        return hebbian_delta(m, post, pre, gain)
    return _array.astype_like(reduce(hebbian_sum(m, post, pre, gain), post.shape[0]), post).T


def ff_local_rule_delta(
    prob: Probability, post: Tensor, pre: Tensor, y: Tensor, goodness_kind: str, dact: Tensor
) -> Tensor:
    """-dL/dW for any goodness: modulation times dG/dl times f'(z), times the input."""
    m = neuron_modulation(prob, post, y, goodness_kind)
    return local_rule_delta(m, goodness_grad(post, goodness_kind, prob.split), dact, pre)


def eligibility_step(e: Tensor, dw: Tensor, tau: float) -> Tensor:
    """e <- (1 - tau) e + tau dW (a low-pass filter of the updates; returns a new tensor), with
    the entries below :data:`ELIGIBILITY_FLOOR` in magnitude set to 0."""
    out = e * (1.0 - tau) + dw * tau
    return _array.where(abs(out) < ELIGIBILITY_FLOOR, 0.0, out)
