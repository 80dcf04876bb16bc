"""Spiking conv FF layers, one presentation from rest: conv and label currents, the neuron loop
over the flattened map, the Hebbian conv rule learning in place inside the window, pooling for
the next layer, and all-label scoring. Written once for torch tensors and numpy arrays: the
torch engine (``learning.conv_engine``) and the runtime (``runtime.conv_model``) both run it.

Each layer's currents come from one batched convolution over all ``T * N`` frames before its
learning window, and one frame at a time inside it, because the weights change after every
step t > ``learn_after`` (as the dense :func:`~.layer.run_layer` and the step-by-step module
graph do): dW (conv) and dB (label weights) are the Hebbian conv rule on the trace map at t and
the input frame at t (``functional.conv.ff_conv_hebbian_deltas``), applied through the
eligibility trace with ``kernels.apply_delta``.

Shapes: image spikes ``[T, N, I, H, W]``; label spikes ``[T, N, L]`` (``[T, 1, L]``: one label
draw shared by the images); conv weights W ``[C, I, KH, KW]``; label weights B
``[L, C, OH, OW]``; trace maps ``[N, C, OH, OW]``; a layer's U = C * OH * OW units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spikingjelly_ff import kernels
from spikingjelly_ff.functional import _array
from spikingjelly_ff.functional.conv import (
    CPU_CONV_PASS,
    conv2d,
    conv_summed_score,
    ff_conv_hebbian_deltas,
    pool2d,
)
from spikingjelly_ff.functional.params import HebbianParams
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.kernels import apply_delta
from spikingjelly_ff.simulation.layer import Dynamics, neuron_forward

Array = Any  # torch tensor or numpy array
#: (targets y [N], Hebbian settings, eta, eligibility of W, eligibility of B)
Learn = tuple[Array, HebbianParams, float, Array, Array]

#: images per scoring chunk, in the torch scorer and the numpy runtime alike: the images of a
#: chunk share one label draw (so equal chunks keep their scores equal in distribution), and
#: it bounds the ``[T, N, U]`` currents
SCORE_CHUNK = 100
#: frames per conv call on the CPU (a scoring chunk holds T * N = 1,200 frames)
CONV_PASS = CPU_CONV_PASS

__all__ = [
    "SCORE_CHUNK",
    "ConvLayout",
    "Learn",
    "conv_current",
    "conv_score",
    "label_current",
    "present_conv",
    "run_conv_layer",
    "score_conv_labels",
    "window_deltas",
]


@dataclass(frozen=True)
class ConvLayout:
    """Geometry of one conv layer besides its weights: the convolution's ``stride`` and zero
    ``padding``, and the pooling of its spikes for the next layer (``pool`` None, "max" or
    "avg", over ``pool_size`` windows with stride ``pool_size``)."""

    stride: int = 1
    padding: int = 0
    pool: str | None = None
    pool_size: int = 2


def conv_current(pre: Array, w: Array, stride=1, padding=0) -> Array:
    """Image part of the current, frames ``[K, N, I, H, W]`` -> ``[K, N, U]``."""
    k, n = pre.shape[:2]
    frames = pre.reshape(k * n, *pre.shape[2:])
    if k * n <= CONV_PASS or (_array.is_torch(frames) and frames.is_cuda):
        z = conv2d(frames, w, stride, padding)
    else:
        z = _array.concat(
            [conv2d(frames[i : i + CONV_PASS], w, stride, padding) for i in range(0, k * n, CONV_PASS)], 0
        )
    return z.reshape(k, n, -1)


def label_current(code: Array, b: Array) -> Array:
    """Label part, label spikes ``[K, N, L]`` -> ``[K, N, U]`` (zeros when L = 0: a
    competitive net sees no label)."""
    if b.shape[0] == 0:
        c, oh, ow = b.shape[1:]
        return _array.zeros(b, (*code.shape[:2], c * oh * ow))
    return (code.reshape(-1, b.shape[0]) @ b.reshape(b.shape[0], -1)).reshape(*code.shape[:2], -1)


def run_conv_layer(
    pre: Array,
    code: Array,
    w: Array,
    b: Array,
    d: Dynamics,
    stride=1,
    padding=0,
    over: str = "map",
    backend: str = "torch",
    learn: Learn | None = None,
    image_current: Array | None = None,
    deltas: list[tuple[Array, Array]] | None = None,
) -> tuple[Array, Array]:
    """Present input spikes ``pre`` ``[T, N, I, H, W]`` and label spikes ``code`` ``[T, N, L]``
    to one layer (weights ``w``, label weights ``b``) from rest. With ``learn = (y, spec, eta,
    e_w, e_b)`` ``w`` and ``b`` (and their eligibility traces) learn in place after every step
    t > ``spec.learn_after``, the goodness taken ``over`` the map, each location or each channel
    group ("group:K"); with ``spec.update == "presentation"`` once, after the last step, from
    the summed delta of those steps (:func:`window_deltas`), or, when a ``deltas`` list is
    given, not at all: ``(dW, dB)`` is appended to it for the caller to apply (an optimizer).
    ``image_current``: the conv part of the currents ``[T, N, U]``, when already computed
    (refused with ``learn``: it would be stale after the first update). Returns the output
    spikes ``[T, N, C, OH, OW]`` (before pooling) and the final trace map ``[N, C, OH, OW]``."""
    if learn is not None and image_current is not None:
        raise ValueError("a layer that learns computes its own currents: pass image_current or learn, not both")
    if learn is None and deltas is not None:
        raise ValueError("deltas are collected from a layer that learns: pass learn with the deltas list")
    t_steps, n = pre.shape[:2]
    c, oh, ow = b.shape[1:]
    units = c * oh * ow
    v = _array.zeros(pre, (n, units))
    tr = _array.zeros(pre, (n, units))

    def currents(t0: int, t1: int) -> Array:
        image = image_current[t0:t1] if image_current is not None else conv_current(pre[t0:t1], w, stride, padding)
        if b.shape[0] == 0:  # a competitive net sees no label: no zeros to allocate and add
            return _array.contiguous(image)
        return _array.contiguous(image + label_current(code[t0:t1], b))

    first = t_steps if learn is None else learn[1].learn_after + 1
    window = learn is not None and learn[1].update == "presentation"
    if deltas is not None and not window:
        raise ValueError('collected deltas need a presentation update (HebbianParams.update="presentation")')
    if deltas is not None and first >= t_steps:  # the caller would step its optimizer on nothing
        raise ValueError(f"the learning window (steps t > learn_after={first - 1}) is empty for {t_steps} steps")
    if window and first < t_steps:  # the weights stay fixed while the sample is shown
        # the neuron's own trace after every step feeds the rule
        out, traces = kernels.neuron_forward(currents(0, t_steps), v, tr, d.neuron, d.trace, backend, trace_seq=True)
        y, spec, eta, e_w, e_b = learn
        dw, db = window_deltas(d, traces, pre, code, y, first, tuple(w.shape[-2:]), (c, oh, ow), stride, padding, over)
        if deltas is not None:
            deltas.append((dw, db))
        else:
            apply_delta(w, dw, eta, spec.eligibility_tau, e_w, "torch")
            apply_delta(b, db, eta, spec.eligibility_tau, e_b, "torch")
        return out.reshape(t_steps, n, c, oh, ow), tr.reshape(n, c, oh, ow)
    if first >= t_steps:  # nothing to learn: one pass
        out = neuron_forward(currents(0, t_steps), v, tr, d, backend)
        return out.reshape(t_steps, n, c, oh, ow), tr.reshape(n, c, oh, ow)
    y, spec, eta, e_w, e_b = learn
    kernel = tuple(w.shape[-2:])
    out = _array.zeros(pre, (t_steps, n, units))
    k = first + 1  # steps 0..first run before the first update
    out[:k] = neuron_forward(currents(0, k), v, tr, d, backend)
    for t in range(first, t_steps):
        dw, db = ff_conv_hebbian_deltas(
            d.probability, tr.reshape(n, c, oh, ow), pre[t], y, code[t], kernel, stride, padding, d.goodness, over
        )
        # conv weights are 4-D: the torch (or numpy) update; the CuPy kernel is written for [H, D]
        apply_delta(w, dw, eta, spec.eligibility_tau, e_w, "torch")
        apply_delta(b, db, eta, spec.eligibility_tau, e_b, "torch")
        if t + 1 < t_steps:
            out[t + 1] = neuron_forward(currents(t + 1, t + 2), v, tr, d, backend)[0]
    return out.reshape(t_steps, n, c, oh, ow), tr.reshape(n, c, oh, ow)


def window_deltas(
    d: Dynamics,
    traces: Array,
    pre: Array,
    code: Array,
    y: Array,
    first: int,
    kernel: tuple[int, int],
    map_shape: tuple[int, int, int],
    stride=1,
    padding=0,
    over: str = "map",
) -> tuple[Array, Array]:
    """Summed Hebbian conv deltas of steps ``first .. T - 1`` of a presentation with fixed
    weights: sum_t (dW_t, dB_t), each the rule (a mean over the N images) on the trace map at t
    and the input at t, as the step update would apply them had the weights not moved.
    ``traces`` ``[T, N, U]`` (the layer's trace after every step, a map of ``map_shape``
    (C, OH, OW) flattened), ``pre`` ``[T, N, I, H, W]``, ``code`` ``[T, N, L]``, targets ``y``
    ``[N]``. All K steps go through one correlation over ``K * N`` frames. Returns dW
    ``[C, I, KH, KW]`` and dB ``[L, C, OH, OW]``."""
    t_steps, n = traces.shape[:2]
    k = t_steps - first
    post = traces[first:].reshape(k * n, *map_shape)
    frames = pre[first:].reshape(k * n, *pre.shape[2:])
    targets = _array.concat([y] * k, axis=0)
    labels = code[first:].reshape(k * n, code.shape[-1])
    # the rule averages over the K * N rows it is given: times K is the sum over the steps
    prob, kind = d.probability, d.goodness
    dw, db = ff_conv_hebbian_deltas(prob, post, frames, targets, labels, kernel, stride, padding, kind, over)
    return dw * k, db * k


def present_conv(
    pre: Array,
    code: Array,
    weights: list[Array],
    label_weights: list[Array],
    layouts: list[ConvLayout],
    d: Dynamics,
    over: str = "map",
    backend: str = "torch",
    learns: list[Learn] | None = None,
    first_current: Array | None = None,
    counts: bool = False,
    deltas: list[tuple[Array, Array]] | None = None,
) -> list[Array]:
    """One presentation of image spikes ``pre`` and label spikes ``code`` to the whole stack,
    each layer from rest, its spikes pooled for the next. ``learns``: one :data:`Learn` per
    layer (every layer learns in place; with presentation updates and a ``deltas`` list, each
    layer's ``(dW, dB)`` is appended to it instead, see :func:`run_conv_layer`).
    ``first_current``: layer 1's conv current ``[T, N, U_1]`` when already computed (refused
    with ``learns``). Returns each layer's final trace map (or, with ``counts``, its spike
    counts) ``[N, C, OH, OW]``."""
    if learns is not None and first_current is not None:
        raise ValueError("a stack that learns computes its own currents: pass first_current or learns, not both")
    acts = []
    last = len(weights) - 1
    for i, (w, b, lay) in enumerate(zip(weights, label_weights, layouts)):
        learn = None if learns is None else learns[i]
        current = first_current if i == 0 else None
        out, tr = run_conv_layer(pre, code, w, b, d, lay.stride, lay.padding, over, backend, learn, current, deltas)
        acts.append(out.sum(0) if counts else tr)
        if i < last:  # the last layer's pooled spikes feed nothing
            pre = pool2d(out, lay.pool, lay.pool_size)
    return acts


def score_conv_labels(
    image: Array,
    codes: list[Array],
    weights: list[Array],
    label_weights: list[Array],
    layouts: list[ConvLayout],
    d: Dynamics,
    score: Callable[[list[Array]], Array],
    over: str = "map",
    backend: str = "torch",
) -> Array:
    """Scores ``[N, C]`` of every candidate label: image spikes ``image`` ``[T, N, I, H, W]``
    shown with each label's spikes ``codes[k]`` (``[T, N, L]`` or ``[T, 1, L]``, the latter
    broadcast over the images), each presentation from rest. The first layer's conv current
    does not depend on the label, so it is computed once. ``score(acts)`` turns the trace maps
    into ``[N]`` (:func:`conv_score`, or the torch net's ``score_activities``)."""
    first = conv_current(image, weights[0], layouts[0].stride, layouts[0].padding)
    total = _array.zeros(image, (image.shape[1], len(codes)))
    for k, code in enumerate(codes):
        acts = present_conv(image, code, weights, label_weights, layouts, d, over, backend, first_current=first)
        total[:, k] += score(acts)
    return total


def conv_score(
    acts: list[Array],
    over: str,
    score_layers: list[int],
    prob: Probability,
    goodness_kind: str = "sum_squares",
    score: str = "probability",
) -> Array:
    """Summed score ``[N]`` of trace maps ``acts`` (one ``[N, C, OH, OW]`` per layer): each
    voting layer's score summed over its goodness entries, then over the voting layers (as
    ``nn.conv_models.ConvScores``; ``functional.conv.conv_summed_score``);
    ``score="probability"`` gives the summed log-odds."""
    return conv_summed_score(acts, score_layers, prob, goodness_kind, score, over)
