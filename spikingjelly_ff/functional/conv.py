"""The FF convolution layer's math: goodness over feature maps and the Hebbian conv rule.

A conv FF layer has activity ``l = ReLU(W * x)`` (cross-correlation, stride ``s``, zero padding
``p``), shape ``[N, C, OH, OW]``. Its goodness is taken over the whole feature map
(``over="map"``: one G per sample, from all ``C * OH * OW`` units), at each spatial location
(``over="location"``: one G per sample and location, from the ``C`` channels there), or over
channel groups (``over="group:K"``: the channels split into K groups of ``C / K`` consecutive
ones, one G per sample and group, from the group's ``C / K * OH * OW`` units; "group:1" is
"map"). A split goodness (symmetric, polar probabilities) puts the first half of an entry's
channels in the positive half: the first ``C // 2`` channels (map, location) or the first
``C / (2K)`` of each group. The FF loss is the mean binary cross-entropy over the goodness
entries (samples, samples times locations, or samples times groups).

With a quadratic goodness dG/dl = c l, and l f'(z) = l for ReLU, so -dL/dW is the modulated
Hebbian correlation of the post-synaptic map with the input patches::

    dW[o, i, ky, kx] = c / K * sum_{n, y, x} M[n, o, y, x] l[n, o, y, x] x_pad[n, i, y s + ky, x s + kx]

with ``M = -dL/dG`` broadcast over the units of each goodness entry and ``K`` the number of
entries (``N``, ``N * OH * OW`` or ``N`` times the groups). Weights use torch's ``Conv2d``
layout ``[C, I, KH, KW]``. The forward convolution (:func:`conv2d`), the pooling
(:func:`pool2d`), the goodness entries' unit layout (:func:`entry_units`), the region's parser
(:func:`goodness_groups`) and the score summed over the voting layers (:func:`conv_summed_score`)
are here too, so that the torch nets, the simulation and the numpy runtimes share them. Torch
tensors or numpy arrays; torch is never imported here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from spikingjelly_ff.functional import _array
from spikingjelly_ff.functional.goodness import goodness, hebbian_gain
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.functional.scores import layer_score

Tensor = Any  # a torch tensor or a numpy array

#: the base goodness regions; "group:K" (:func:`goodness_groups`) names K channel groups
OVER = ("map", "location")

__all__ = [
    "CPU_CONV_PASS",
    "OVER",
    "check_conv_settings",
    "check_map_shape",
    "conv_goodness",
    "conv_layer_score",
    "conv_modulation",
    "conv_output_size",
    "conv_summed_score",
    "conv2d",
    "conv_weight_correlation",
    "pooled_shape",
    "entry_units",
    "goodness_groups",
    "ff_conv_hebbian_delta",
    "ff_conv_hebbian_deltas",
    "length_normalize_map",
    "normalize_region",
    "pool2d",
]


#: inputs per convolution call on the CPU, for the analog conv scorer and the spiking conv
#: currents alike: on one CPU thread torch's conv runs 2-4x faster per input in passes of 64
#: than of 1,000-2,000, whose feature maps (2,000 x 30 x 28 x 28 floats: 188 MB) leave the
#: caches (``benchmarks/conv_score_passes.py``). Every input is convolved alone, so the
#: results do not depend on it, bit for bit.
CPU_CONV_PASS = 64


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def goodness_groups(over: str, channels: Iterable[int] = (), split: bool = False) -> int | None:
    """The channel-group count K of goodness region ``over`` ("group:K"), or None for "map" and
    "location": the one parser of the region. ``ValueError`` for any other string, for K < 1,
    when a count in ``channels`` (each conv layer's C) is not a multiple of K, or when a
    ``split`` goodness would halve a group of an odd number of channels (C / K odd)."""
    if over in OVER:
        return None
    if not isinstance(over, str) or not over.startswith("group:"):
        raise ValueError(f"unknown goodness region {over!r}; choose one of {list(OVER)} or 'group:K' (K >= 1 groups)")
    tail = over[len("group:") :]
    if re.fullmatch(r"[0-9]+", tail) is None or int(tail) < 1:
        raise ValueError(f"goodness region {over!r}: the number of channel groups K must be an integer >= 1")
    k = int(tail)
    for c in channels:
        if c % k:
            raise ValueError(f"goodness region {over!r}: {c} channels do not split into {k} groups of equal size")
        if split and (c // k) % 2:
            raise ValueError(
                f"goodness region {over!r}: a split goodness needs an even number of channels per group, "
                f"got {c} // {k} = {c // k}"
            )
    return k


def conv2d(x: Tensor, w: Tensor, stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0) -> Tensor:
    """Cross-correlation of ``x`` ``[N, I, H, W]`` with ``w`` ``[C, I, KH, KW]`` (zero padding),
    ``[N, C, OH, OW]``, as torch's ``conv2d``. Tensors go to ``torch.nn.functional.conv2d``;
    numpy gathers the input patches once (im2col) and contracts them with the kernels in one
    matrix product."""
    if _array.is_torch(x):
        return _array.xp(x).nn.functional.conv2d(x, w, stride=stride, padding=padding)
    (kh, kw), (sy, sx), (py, px) = w.shape[-2:], _pair(stride), _pair(padding)
    oh, ow = conv_output_size(x.shape[2], kh, sy, py), conv_output_size(x.shape[3], kw, sx, px)
    if py or px:
        x = np.pad(x, ((0, 0), (0, 0), (py, py), (px, px)))
    win = sliding_window_view(x, (kh, kw), axis=(2, 3))  # [N, I, H', W', KH, KW], a view
    win = win[:, :, : (oh - 1) * sy + 1 : sy, : (ow - 1) * sx + 1 : sx]
    z = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))  # [N, OH, OW, C]
    return np.ascontiguousarray(z.transpose(0, 3, 1, 2))


def pool2d(x: Tensor, kind: str | None, size: int) -> Tensor:
    """Max or average pooling of maps ``[..., C, H, W]`` over ``size`` windows with stride
    ``size`` (a partial last window is dropped, as torch's pools do); ``kind`` None: ``x``
    itself. A CUDA tensor or one that needs a gradient goes to torch's own pools."""
    if kind is None:
        return x
    if kind not in ("max", "avg"):
        raise ValueError(f"unknown pooling {kind!r}; choose 'max' or 'avg'")
    c, h, w = tuple(x.shape[-3:])
    oh, ow = h // size, w // size
    if _array.is_torch(x) and (x.is_cuda or x.requires_grad):  # one kernel; autograd
        f = _array.xp(x).nn.functional
        pool = f.max_pool2d if kind == "max" else f.avg_pool2d
        return pool(x.reshape(-1, c, h, w), size).reshape(*x.shape[:-3], c, oh, ow)
    # one elementwise pass per window offset, in the window's row-major order (as torch's
    # avg_pool2d sums it): 4-6x faster than torch's max_pool2d on CPU (one thread, the
    # spiking nets' [T N, C, 24, 24] spikes), and far faster than a reduction over two
    # strided axes of a [.., OH, s, OW, s] view, in numpy too
    part = x[..., : oh * size, : ow * size]
    xp = _array.xp(x)
    out = _array.copy(part[..., ::size, ::size])
    combine = xp.maximum if kind == "max" else xp.add
    for dy in range(size):
        for dx in range(size):
            if dy or dx:
                combine(out, part[..., dy::size, dx::size], out=out)
    if kind == "avg":
        out /= size * size
    return out


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution along one axis (no dilation)."""
    return (size + 2 * padding - kernel) // stride + 1


def pooled_shape(map_shape: tuple[int, int, int], pool: str | None, size: int) -> tuple[int, int, int]:
    """``(C, H, W)`` after :func:`pool2d` of a ``map_shape`` map (a partial window dropped)."""
    c, h, w = map_shape
    return tuple(map_shape) if pool is None else (c, h // size, w // size)


def check_conv_settings(
    kernel: int, stride: int, padding: int, pool: str | None, pool_size: int, channels: int | None = None
) -> None:
    """Raise ``ValueError`` naming the setting unless ``kernel``, ``stride``, ``pool_size`` (and
    ``channels``, when given) are ints >= 1, ``padding`` an int >= 0 and ``pool`` None, "max"
    or "avg": what stored layer settings must hold before any shape is computed from them."""
    least = {"kernel": 1, "stride": 1, "padding": 0, "pool_size": 1}
    values = {"kernel": kernel, "stride": stride, "padding": padding, "pool_size": pool_size}
    if channels is not None:
        least["channels"], values["channels"] = 1, channels
    for name, v in values.items():
        # bool is an int to Python, but True is no kernel size
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least[name]:
            raise ValueError(f"conv layer {name} must be an integer >= {least[name]}, got {v!r}")
    if pool not in (None, "max", "avg"):
        raise ValueError(f"unknown pooling {pool!r}; choose None, 'max' or 'avg'")


def check_map_shape(value, name: str = "shape") -> tuple[int, int, int]:
    """``value`` as a map shape ``(C, H, W)`` of three ints >= 1; ``ValueError`` naming
    ``name`` otherwise."""
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be three integers >= 1 (C, H, W), got {value!r}") from exc
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name} must be three integers >= 1 (C, H, W), got {value!r}")
    return shape


def _units_last(act: Tensor, over: str, split: bool = False) -> Tensor:
    """``[N, C, OH, OW]`` -> the units of each goodness entry on the last axis:
    ``[N, C * OH * OW]`` (channel-major, so the first half is the first ``C // 2`` channels),
    ``[N, OH, OW, C]`` or ``[N, K, C / K * OH * OW]`` (each group channel-major). ``split``:
    a group must hold an even number of channels."""
    k = goodness_groups(over, (act.shape[1],), split)
    if k is not None:
        return act.reshape(act.shape[0], k, -1)
    if over == "map":
        return act.reshape(act.shape[0], -1)
    return act.transpose(0, 2, 3, 1) if not _array.is_torch(act) else act.permute(0, 2, 3, 1)


def entry_units(act: Tensor, over: str) -> Tensor:
    """The units of every goodness entry of maps ``[N, C, OH, OW]`` as rows, ``[K, units]``:
    ``[N, C * OH * OW]`` (``over="map"``, channel-major, so a split's first half is the first
    ``C // 2`` channels), ``[N * OH * OW, C]`` (``"location"``, sample-major) or
    ``[N * G, C / G * OH * OW]`` (``"group:G"``, sample-major, each group channel-major)."""
    u = _units_last(act, over)
    return u.reshape(-1, u.shape[-1])


def conv_layer_score(
    act: Tensor, prob: Probability, goodness_kind: str = "sum_squares", score: str = "probability", over: str = "map"
) -> Tensor:
    """Score ``[N]`` of one layer's map ``[N, C, OH, OW]``: the ``score`` (log-odds or
    goodness, ``functional.scores.layer_score``) of each goodness entry, summed over the
    sample's entries (its locations or groups). A competitive ``prob`` (one channel group per
    class, ``over="group:C"``) gives each class's log-probability (or goodness), ``[N, C]``."""
    n = act.shape[0]
    u = _units_last(act, over, prob.split)
    if prob.competitive:  # one entry per class: the class scores [N, C] themselves
        g = goodness(u, goodness_kind)
        return prob.logit(g) if score == "probability" else g
    return layer_score(u.reshape(-1, u.shape[-1]), prob, goodness_kind, score).reshape(n, -1).sum(1)


def conv_summed_score(
    acts: list[Tensor],
    layers: list[int],
    prob: Probability,
    goodness_kind: str = "sum_squares",
    score: str = "probability",
    over: str = "map",
) -> Tensor:
    """Sum of :func:`conv_layer_score` over the voting ``layers`` of maps ``acts`` (one
    ``[N, C, OH, OW]`` per layer), in the order given (a layer named twice counts twice), ``[N]``
    (``[N, C]`` for a competitive ``prob``).
    Torch tensors are stacked and summed; numpy arrays add one layer at a time into float32
    (as ``functional.scores.summed_score``)."""
    parts = [conv_layer_score(acts[i], prob, goodness_kind, score, over) for i in layers]
    if _array.is_torch(acts[0]):
        return _array.xp(acts[0]).stack(parts).sum(0)
    total = np.zeros(parts[0].shape, dtype=np.float32)
    for p in parts:
        total += p
    return total


def _units_back(u: Tensor, shape: tuple, over: str) -> Tensor:
    """Inverse of :func:`_units_last`."""
    if over != "location":  # map and channel groups: the units are the map, reshaped
        return u.reshape(shape)
    return u.transpose(0, 3, 1, 2) if not _array.is_torch(u) else u.permute(0, 3, 1, 2)


def conv_goodness(
    act: Tensor, kind: str = "sum_squares", split: bool = False, over: str = "map"
) -> Tensor | tuple[Tensor, Tensor]:
    """Goodness of a feature map ``act`` ``[N, C, OH, OW]``: ``[N]`` (``over="map"``),
    ``[N, OH, OW]`` (``"location"``) or ``[N, K]`` (``"group:K"``); a ``(G+, G-)`` pair of
    those when ``split``."""
    return goodness(_units_last(act, over, split), kind, split)


def _broadcast_targets(y: Tensor, g: Tensor) -> Tensor:
    """Targets ``[N]`` repeated over the entries of ``g`` ``[N, ...]`` (locations, groups)."""
    if g.ndim == 1:
        return y
    return _array.zeros(g, g.shape) + y.reshape(-1, *([1] * (g.ndim - 1)))


def conv_modulation(
    prob: Probability, act: Tensor, y: Tensor, goodness_kind: str = "sum_squares", over: str = "map"
) -> Tensor:
    """Modulation M = -dL/dG for every unit, ``[N, C, OH, OW]``, from activity ``act`` and
    targets ``y`` ``[N]`` (1 positive, 0 negative; class labels for a competitive ``prob``):
    the unit's goodness entry's M (its half's M for a split probability)."""
    if prob.split and act.shape[1] % 2:
        raise ValueError(f"a split goodness needs an even number of channels, got {act.shape[1]}")
    u = _units_last(act, over, prob.split)
    g = goodness(u, goodness_kind, split=prob.split)
    width = u.shape[-1]
    if prob.competitive:  # the class entries compete: M [N, C] from the labels
        return _units_back(_array.expand_last(prob.modulation(g, y), width), act.shape, over)
    yb = _broadcast_targets(y, g[0] if prob.split else g)
    if prob.split:
        m_pos, m_neg = prob.modulation(g, yb)
        half = width // 2
        m = _array.concat([_array.expand_last(m_pos, half), _array.expand_last(m_neg, width - half)])
    else:
        m = _array.expand_last(prob.modulation(g, yb), width)
    return _units_back(m, act.shape, over)


def conv_weight_correlation(
    post: Tensor,
    pre: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> Tensor:
    """sum_{n, y, x} post[n, o, y, x] pre_pad[n, i, y sy + ky, x sx + kx], ``[C, I, KH, KW]``.

    ``post`` ``[N, C, OH, OW]`` (e.g. M * l), ``pre`` ``[N, I, H, W]``; zero padding. This is
    the weight gradient of a convolution: torch's ``conv2d_weight`` for tensors, one
    contraction per kernel offset for numpy (the two sum in different orders)."""
    (kh, kw), (sy, sx), (py, px) = _pair(kernel_size), _pair(stride), _pair(padding)
    n, ci, h, w = pre.shape
    oh, ow = post.shape[-2:]
    if (oh, ow) != (conv_output_size(h, kh, sy, py), conv_output_size(w, kw, sx, px)):
        raise ValueError(f"post-synaptic map {tuple(post.shape)} does not fit input {tuple(pre.shape)} and the conv")
    if _array.is_torch(pre):  # torch's own weight gradient: ~2x the loop below (one thread)
        grad = _array.xp(pre).nn.grad
        return grad.conv2d_weight(pre, (post.shape[1], ci, kh, kw), post, stride=(sy, sx), padding=(py, px))
    if py or px:
        padded = _array.zeros(pre, (n, ci, h + 2 * py, w + 2 * px))
        padded[:, :, py : py + h, px : px + w] = pre
        pre = padded
    xp = _array.xp(pre)
    out = _array.empty(pre, (post.shape[1], ci, kh, kw))
    for ky in range(kh):
        for kx in range(kw):
            patch = pre[:, :, ky : ky + (oh - 1) * sy + 1 : sy, kx : kx + (ow - 1) * sx + 1 : sx]
            out[:, :, ky, kx] = xp.tensordot(post, patch, ([0, 2, 3], [0, 2, 3]))
    return out


def ff_conv_hebbian_delta(
    prob: Probability,
    post: Tensor,
    pre: Tensor,
    y: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    goodness_kind: str = "sum_squares",
    over: str = "map",
) -> Tensor:
    """-dL/dW ``[C, I, KH, KW]`` of a ReLU conv FF layer with quadratic goodness, as a Hebbian
    correlation. ``post``: the layer's activity l ``[N, C, OH, OW]``; ``pre``: its input
    (after any normalisation) ``[N, I, H, W]``; ``y`` ``[N]``. Mean over goodness entries."""
    return ff_conv_hebbian_deltas(prob, post, pre, y, None, kernel_size, stride, padding, goodness_kind, over)[0]


def ff_conv_hebbian_deltas(
    prob: Probability,
    post: Tensor,
    pre: Tensor,
    y: Tensor,
    code: Tensor | None,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    goodness_kind: str = "sum_squares",
    over: str = "map",
) -> tuple[Tensor, Tensor | None]:
    """:func:`ff_conv_hebbian_delta` and, for a layer whose pre-activation also has a label
    term ``code @ B`` (B ``[L, C, OH, OW]``, one weight per unit and label), -dL/dB
    ``[L, C, OH, OW]``: the same modulated post-synaptic map correlated with the label code
    ``code`` ``[N, L]`` (a dense Hebbian product; None: no label term, returns None)."""
    n, c, oh, ow = post.shape
    if over == "location":
        width, entries = c, n * oh * ow
    else:  # map: one group of all channels
        k = goodness_groups(over, (c,), prob.split) or 1
        # a competitive loss is one cross-entropy per sample, not one BCE per entry
        width, entries = c // k * oh * ow, n if prob.competitive else n * k
    gain = hebbian_gain(goodness_kind, width, prob.split) / entries
    mod = conv_modulation(prob, post, y, goodness_kind, over) * post
    dw = conv_weight_correlation(mod, pre, kernel_size, stride, padding) * gain
    if code is None:
        return dw, None
    db = _array.xp(mod).tensordot(code, mod, ([0], [0])) * gain
    return dw, db


def normalize_region(over: str, prob: Probability) -> str:
    """The region over which a layer after the first length-normalises its input: the goodness
    region ``over``, so that no layer reads the previous one's goodness, except for a
    competitive ``prob``, whose class groups would each be scaled to the same length: there the
    whole map, so a layer still sees which class groups of the previous one were active."""
    return "map" if prob.competitive else over


def length_normalize_map(x: Tensor, over: str = "map", eps: float = 1e-8) -> Tensor:
    """``x / (||x|| + eps)`` for feature maps ``[..., C, H, W]``: the norm over each sample's
    whole map (``over="map"``), over the channels at each location (``"location"``) or over
    each channel group's units (``"group:K"``), so a layer cannot read the previous layer's
    goodness of that region."""
    k = goodness_groups(over, (x.shape[-3],))
    if k is not None:  # each group as a map of its own: [..., K, C / K, H, W]
        c, h, w = x.shape[-3:]
        return length_normalize_map(x.reshape(*x.shape[:-3], k, c // k, h, w), "map", eps).reshape(x.shape)
    axes = (-3, -2, -1) if over == "map" else (-3,)
    norm = _array.xp(x).sqrt((x * x).sum(axis=axes, keepdims=True))
    if _array.is_torch(x):
        return x / (norm + eps)
    return x / (norm + x.dtype.type(eps))
