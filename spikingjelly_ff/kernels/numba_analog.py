"""One compiled call scores a batch of images on every label: an analog export's one layer (numba).

An analog export whose label code is appended to the image computes its first layer as an
image term plus a label term (``export.onnx.analog._separable_current``):

    z[n, c] = float32(x[n] @ W_img + T[c])      W_img [D, H], T = codes @ W_label [C, H], float64
    a = relu(z)                                  then goodness, log-odds, probability, label

onnxruntime runs that as some thirty graph nodes, whose fixed cost is most of what a small
batch takes, and more so on a server core whose caches the calls in between have emptied.
Here it is one call: the image term over the lit inputs only (nonzero entries; each weight
row is read once per batch), then per image and label the activity, the goodness of each
half (split probabilities) or of the whole layer, the log-odds, the probability and the
arg-max. The same ops as the graph in the same order; sums (the image term's in float64,
the goodness's) are accumulated in float64 and rounded once, and log and exp are taken in
float64, so outputs agree with onnxruntime's to float32 rounding (a few ulp), not bit for
bit (so where two labels' scores tie to within that, the label may differ): the runtime picks
one path per batch (``runtime.analog_compiled``).

Optional, like ``numba_online`` (whose :func:`~numba_online.enabled` switch it shares):
without numba the graph runs.
"""

from __future__ import annotations

import numpy as np

from spikingjelly_ff.kernels import numba_online

__all__ = ["GOODNESS", "PROBABILITY", "score_separable", "warm_up"]

#: the kernel's codes for a probability function and a goodness (``functional``'s names)
PROBABILITY = {"sigmoid": 0, "symmetric": 1, "polar": 2}
GOODNESS = {"sum_squares": 0, "mean_squares": 1, "l1": 2}


def _image_term_impl(x, w_img, out):
    """``out [N, H] = x [N, D] @ w_img [D, H]`` in float64 over the nonzero entries of ``x``
    (the input index outermost: each weight row is read once for the whole batch). The
    weights are float32, widened exactly: the graph's float64 product, at half the bytes."""
    n, d = x.shape
    h = w_img.shape[1]
    out[:] = 0.0
    for k in range(d):
        for i in range(n):
            v = x[i, k]
            if v != 0.0:
                vv = np.float64(v)
                for j in range(h):
                    out[i, j] += vv * np.float64(w_img[k, j])


def _goodness_impl(img, term, lo, hi, goodness, width):
    """Goodness (float32) of the activity ``relu(float32(img + term))`` over units ``lo:hi``;
    a mean divides by ``width`` (the graph's: half the layer for either half of a split one)."""
    total = 0.0
    for j in range(lo, hi):
        a = np.float32(img[j] + term[j])
        if a > 0:  # relu: what is not above zero adds nothing
            af = np.float64(a)
            total += af * af if goodness != 2 else af
    g = np.float32(total)
    if goodness == 1:
        g = g / np.float32(width)
    return g


def _score_impl(x, w_img, label_term, prob_kind, goodness, alpha, theta, eps, by_goodness, scores, prob, good, label):
    n = x.shape[0]
    c, h = label_term.shape
    img = np.empty((n, h), np.float64)
    _image_term(x, w_img, img)
    half = h // 2
    for i in range(n):
        best = 0
        for lab in range(c):
            if prob_kind == 0:  # sigmoid: the whole layer's goodness
                g = _goodness(img[i], label_term[lab], 0, h, goodness, h)
                logit = (g - theta) * alpha
            else:  # symmetric, polar: positive half, negative half
                gp = _goodness(img[i], label_term[lab], 0, half, goodness, half)
                gn = _goodness(img[i], label_term[lab], half, h, goodness, half)
                g = gp - gn
                if prob_kind == 1:
                    logit = np.float32(np.log(np.float64(gp + eps))) - np.float32(np.log(np.float64(gn + eps)))
                else:
                    logit = (g - theta) * alpha
            s = g if by_goodness else logit
            scores[i, lab] = s
            prob[i, lab] = np.float32(1.0 / (1.0 + np.exp(-np.float64(logit))))
            good[i, lab, 0] = g
            if s > scores[i, best]:
                best = lab  # the first largest, as onnxruntime's ArgMax
        label[i] = best


def score_separable(
    x: np.ndarray,
    w_img: np.ndarray,
    label_term: np.ndarray,
    prob_kind: int,
    goodness: int,
    alpha: float,
    theta: float,
    eps: float,
    by_goodness: bool,
) -> dict[str, np.ndarray]:
    """The graph's outputs for images ``x`` ``[N, D]`` float32: ``scores``, ``probability``
    ``[N, C]`` float32, ``goodness`` ``[N, C, 1]`` float32 and ``label`` ``[N]`` int64, from the
    image weights ``w_img`` ``[D, H]`` (float32) and the label term ``label_term`` ``[C, H]``
    (float64), both C-contiguous. ``prob_kind``, ``goodness``: :data:`PROBABILITY`, :data:`GOODNESS` codes;
    ``by_goodness``: the score is the goodness (else the log-odds)."""
    x = np.ascontiguousarray(x, dtype=np.float32)  # one layout, one compiled version
    n, c = x.shape[0], label_term.shape[0]
    scores = np.empty((n, c), np.float32)
    prob = np.empty((n, c), np.float32)
    good = np.empty((n, c, 1), np.float32)
    label = np.empty(n, np.int64)
    f32 = np.float32
    _score(
        x, w_img, label_term, prob_kind, goodness, f32(alpha), f32(theta), f32(eps), by_goodness, scores, prob, good,
        label,
    )  # fmt: skip
    return {"scores": scores, "probability": prob, "goodness": good, "label": label}


def warm_up() -> bool:
    """Compile (or load from the disk cache) the kernel now, so that the first inference does
    not wait for it: for writable images and for read-only ones (a request's own bytes, which
    numba types apart). Returns whether it is in use."""
    if not numba_online.enabled():
        return False
    x = np.ones((1, 2), np.float32)
    for writable in (True, False):
        x.setflags(write=writable)
        score_separable(x, np.zeros((2, 2), np.float32), np.zeros((1, 2)), 1, 0, 1.0, 0.0, 0.01, False)
    return True


if numba_online.AVAILABLE:
    # nogil: a batch too costly for the event loop runs on a worker thread beside it
    _image_term = numba_online.jit(_image_term_impl, nogil=True)
    _goodness = numba_online.jit(_goodness_impl, inline="always")
    _score = numba_online.jit(_score_impl, nogil=True)
else:  # pragma: no cover - the runtime keeps the graph without numba
    _image_term, _goodness, _score = _image_term_impl, _goodness_impl, _score_impl
