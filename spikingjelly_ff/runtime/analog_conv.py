"""On-line learning of an exported analog conv FF network, in numpy (no torch).

The forward pass mirrors ``nn.conv_models.AnalogConvFFNet.activities``: the label is written
into the first pixels, each layer computes l = ReLU(W * x_hat + code @ B) (x_hat the previous
layer's pooled output, length-normalised over the goodness region after the first layer) and
pools for the next one. The update is the exact FF gradient of each layer's local loss as a
Hebbian correlation (``functional.conv.ff_conv_hebbian_deltas``): the kernels from the
modulated map and the input patches, the label weights B from the same map and the label
code. Each array learns through ``kernels.apply_delta`` (eligibility trace when ``tau`` is
set), as the dense runtime does. :class:`~spikingjelly_ff.runtime.analog.AnalogModel.learn`
calls :func:`conv_learn` for conv exports. The convolution and pooling are
``functional.conv``'s (shared with torch training and the spiking conv runtime).
"""

from __future__ import annotations

import numpy as np

from spikingjelly_ff.functional.conv import (
    conv2d,
    conv_summed_score,
    ff_conv_hebbian_deltas,
    length_normalize_map,
    normalize_region,
    pool2d,
)
from spikingjelly_ff.functional.scores import class_margin
from spikingjelly_ff.kernels import apply_delta
from spikingjelly_ff.runtime.onnx_meta import OnnxMeta

__all__ = ["conv_activities", "conv_learn", "conv_log_odds"]


def conv_activities(
    meta: OnnxMeta, weights: list[np.ndarray], inp: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Every layer's (input after normalisation ``[N, I, H, W]``, activity ``[N, C, OH, OW]``)
    and the label code ``[N, L]`` for embedded inputs ``inp`` ``[N, H*W]`` (label pixels
    set); ``weights`` as the runtime holds them (kernels, then label weights)."""
    conv = meta.conv
    if conv is None:
        raise ValueError("not a conv export")
    if any(layer.bias for layer in meta.layers):
        raise ValueError("on-line conv learning needs bias-free layers (export with model.bias=false)")
    # a competitive net sees the plain image: no label pixels to read
    code = None if meta.probability.competitive else inp[:, meta.label_code.label_slice(meta.in_features)]
    kernels = weights[: len(conv.layers)]
    labels = iter(weights[len(conv.layers) :])
    x = inp.reshape(inp.shape[0], *conv.layers[0].in_shape)
    region = normalize_region(conv.over, meta.probability)
    pres, acts = [], []
    for layer, spec, w in zip(meta.layers, conv.layers, kernels):
        pre = length_normalize_map(x, region) if layer.normalize_input else x
        z = conv2d(pre, w, spec.stride, spec.padding)
        if spec.label_weight is not None:
            z += np.tensordot(code, next(labels), 1)
        act = np.maximum(z, np.float32(0.0))
        pres.append(pre)
        acts.append(act)
        x = pool2d(act, spec.pool, spec.pool_size)
    return pres, acts, code


def conv_log_odds(meta: OnnxMeta, acts: list[np.ndarray]) -> np.ndarray:
    """Summed log-odds ``[N]`` that each sample is positive (``AnalogConvFFNet.pn_logit``, and
    the graph's ``probability``): each voting layer's log-odds summed over its goodness entries
    (a competitive net: the summed class log-probabilities ``[N, C]``)."""
    return conv_summed_score(acts, meta.score_layers, meta.probability, meta.goodness, "probability", meta.conv.over)


def conv_learn(
    meta: OnnxMeta,
    weights: list[np.ndarray],
    eligibility: list[np.ndarray],
    inp: np.ndarray,
    y: np.ndarray,
    eta: float,
    tau: float | None,
) -> np.ndarray:
    """One Hebbian update of every conv layer (kernels and label weights, in place) from
    embedded inputs ``inp`` ``[N, H*W]`` and targets ``y`` ``[N]`` (1 positive, 0 negative;
    a competitive net: plain images and class labels). Every layer reads the activities before
    the update. Returns the summed log-odds before learning ``[N]`` (competitive: the margin of
    the label's summed log-probability over the best other class, ``functional.scores.class_margin``)."""
    conv = meta.conv
    pres, acts, code = conv_activities(meta, weights, inp)
    n_layers = len(conv.layers)
    label_index = iter(range(n_layers, len(weights)))
    for i, (spec, pre, act) in enumerate(zip(conv.layers, pres, acts)):
        has_labels = spec.label_weight is not None
        dw, db = ff_conv_hebbian_deltas(
            meta.probability,
            act,
            pre,
            y,
            code if has_labels else None,
            spec.kernel,
            spec.stride,
            spec.padding,
            meta.goodness,
            conv.over,
        )
        apply_delta(weights[i], dw, eta, tau, eligibility[i])
        if has_labels:
            j = next(label_index)
            apply_delta(weights[j], db, eta, tau, eligibility[j])
    if meta.probability.competitive:  # > 0 when the label wins, as log-odds > 0 for a positive
        return class_margin(conv_log_odds(meta, acts), y)
    return conv_log_odds(meta, acts)
