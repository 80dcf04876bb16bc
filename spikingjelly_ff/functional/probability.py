"""Probability functions P(positive | G) and their Hebbian modulation.

The FF loss of a layer is the binary cross-entropy L = -y log P - (1 - y) log(1 - P)
with y = 1 for a positive sample (correct label) and y = 0 for a negative one.
The *modulation* is M = -dL/dG: the scalar (or one scalar per half for a split layer)
that multiplies the Hebbian product in the weight update dW = M * dG/dl * x^T.

Shapes: goodness ``g`` (or ``g_pos``/``g_neg``) and targets ``y`` are ``[N]``; every
function returns ``[N]`` (or a pair of ``[N]`` tensors for the split functions). They work
on torch tensors and numpy arrays; only ``Probability.loss`` (for autograd) needs torch.

The ``competitive`` kind is not a P(positive | G): a layer's channels form one group per
class, the class goodnesses ``g`` ``[N, C]`` compete through a softmax of log(G_c + eps) / T,
and the loss is the cross-entropy against the true class ``labels`` ``[N]`` (channel-wise
competitive FF, Papachristodoulou et al., AAAI 2024; no negative samples, no label input).
Its modulation M_c = -dL/dG_c = (1[c = label] - p_c) / (T (G_c + eps)) is again one scalar
per goodness entry, so the Hebbian rule and the theorem hold unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from spikingjelly_ff.functional import _array

Tensor = Any  # a torch tensor or a numpy array

__all__ = [
    "KINDS",
    "Probability",
    "competitive_log_probs",
    "competitive_modulation",
    "polar_logit",
    "polar_modulation",
    "polar_probability",
    "sigmoid_logit",
    "sigmoid_modulation",
    "sigmoid_probability",
    "symmetric_logit",
    "symmetric_modulation",
    "symmetric_probability",
]

KINDS = ("sigmoid", "symmetric", "polar", "competitive")


def sigmoid_logit(g: Tensor, alpha: float, theta: float) -> Tensor:
    """logit P = alpha (G - theta)."""
    return alpha * (g - theta)


def sigmoid_probability(g: Tensor, alpha: float, theta: float) -> Tensor:
    """P = sigma(alpha (G - theta))."""
    return _array.sigmoid(sigmoid_logit(g, alpha, theta))


def sigmoid_modulation(g: Tensor, y: Tensor, alpha: float, theta: float) -> Tensor:
    """M = -dL/dG = alpha (y - P)."""
    return alpha * (y - sigmoid_probability(g, alpha, theta))


def symmetric_logit(g_pos: Tensor, g_neg: Tensor, eps: float) -> Tensor:
    """logit P = log(G+ + eps) - log(G- + eps)."""
    return _array.log(g_pos + eps) - _array.log(g_neg + eps)


def symmetric_probability(g_pos: Tensor, g_neg: Tensor, eps: float) -> Tensor:
    """P = (G+ + eps) / (G+ + G- + 2 eps)."""
    return (g_pos + eps) / (g_pos + g_neg + 2 * eps)


def symmetric_modulation(g_pos: Tensor, g_neg: Tensor, y: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(M+, M-) = (y / (G+ + eps) - 1/S, (1 - y) / (G- + eps) - 1/S), S = G+ + G- + 2 eps."""
    inv_s = 1.0 / (g_pos + g_neg + 2 * eps)
    return y / (g_pos + eps) - inv_s, (1 - y) / (g_neg + eps) - inv_s


def polar_logit(g_pos: Tensor, g_neg: Tensor, alpha: float, theta: float) -> Tensor:
    """logit P = alpha (G+ - G- - theta)."""
    return alpha * (g_pos - g_neg - theta)


def polar_probability(g_pos: Tensor, g_neg: Tensor, alpha: float, theta: float) -> Tensor:
    """P = sigma(alpha (G+ - G- - theta))."""
    return _array.sigmoid(polar_logit(g_pos, g_neg, alpha, theta))


def polar_modulation(g_pos: Tensor, g_neg: Tensor, y: Tensor, alpha: float, theta: float) -> tuple[Tensor, Tensor]:
    """(M+, M-) = (alpha (y - P), -alpha (y - P))."""
    m = alpha * (y - polar_probability(g_pos, g_neg, alpha, theta))
    return m, -m


def competitive_log_probs(g: Tensor, temperature: float, eps: float) -> Tensor:
    """log p_c = log softmax_c(log(G_c + eps) / T) of class goodnesses ``g`` ``[N, C]``."""
    _check_classes(g)
    return _array.log_softmax(_array.log(g + eps) / temperature)


def _check_classes(g: Tensor, labels: Tensor | None = None) -> None:
    """``ValueError`` unless ``g`` is ``[N, C]`` and ``labels`` (when given) ``[N]`` integers in
    [0, C): a competitive probability reads one goodness per class."""
    if g.ndim != 2:
        raise ValueError(f"competitive probability needs class goodnesses [N, C], got shape {list(g.shape)}")
    if labels is None:
        return
    if tuple(labels.shape) != (g.shape[0],):
        raise ValueError(f"class labels must have shape [{g.shape[0]}], got {list(labels.shape)}")
    kind = str(labels.dtype)
    if "int" not in kind or "uint8" in kind:  # uint8/bool index as masks
        raise ValueError(f"class labels must be integers, got {kind}")
    if labels.shape[0] and (int(labels.min()) < 0 or int(labels.max()) >= g.shape[1]):
        raise ValueError(f"class labels must lie in [0, {g.shape[1]}), got [{int(labels.min())}, {int(labels.max())}]")


def competitive_modulation(g: Tensor, labels: Tensor, temperature: float, eps: float) -> Tensor:
    """M = -dL/dG = (onehot(label) - p) / (T (G + eps)), ``[N, C]``, L the cross-entropy of
    :func:`competitive_log_probs` against class ``labels`` ``[N]``."""
    _check_classes(g, labels)
    p = _array.exp(competitive_log_probs(g, temperature, eps))
    onehot = _array.zeros(g, g.shape)
    rows = _array.xp(g).arange(g.shape[0])
    onehot[rows, labels] = 1
    return (onehot - p) / (temperature * (g + eps))


@dataclass(frozen=True)
class Probability:
    """A probability function with its parameters; ``G`` is a tensor or a ``(G+, G-)`` pair.

    ``kind``: ``sigmoid`` (uses ``alpha``, ``theta``), ``symmetric`` (uses ``eps``) or
    ``polar`` (uses ``alpha``, ``theta``). The last two need a split goodness.
    ``competitive`` (uses ``temperature``, ``eps``) reads class goodnesses ``[N, C]`` and class
    labels instead of ``[N]`` goodnesses and positive/negative targets (module docstring).
    ``clip`` > 0 computes the loss on P clamped to [clip, 1 - clip], as the paper's code
    does: samples whose P saturates beyond the clamp contribute no gradient (M = 0).
    """

    kind: str = "sigmoid"
    alpha: float = 1.0
    theta: float = 0.0
    eps: float = 0.01
    clip: float = 0.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown probability {self.kind!r}; choose one of {list(KINDS)}")
        for name in ("alpha", "theta", "eps", "clip", "temperature"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.kind == "symmetric" and not self.eps > 0:
            raise ValueError("symmetric probability needs eps > 0")
        if self.kind == "competitive" and not (self.eps > 0 and self.temperature > 0):
            raise ValueError("competitive probability needs eps > 0 and temperature > 0")
        if self.kind == "competitive" and self.clip:
            raise ValueError("competitive probability has no clamp: set clip=0")
        if not 0.0 <= self.clip < 0.5:
            raise ValueError("clip must lie in [0, 0.5)")

    def to_dict(self) -> dict:
        """The settings as exports record them: ``temperature`` only for the competitive kind,
        so the other kinds' records stay as earlier versions wrote and read them."""
        d = asdict(self)
        if not self.competitive:
            del d["temperature"]
        return d

    @property
    def split(self) -> bool:
        """Whether this function reads a positive and a negative half of the layer."""
        return self.kind in ("symmetric", "polar")

    @property
    def competitive(self) -> bool:
        """Whether goodnesses are per class ``[N, C]`` and targets class labels."""
        return self.kind == "competitive"

    def _pair(self, g: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        if not isinstance(g, tuple):
            raise TypeError(f"{self.kind} probability needs a (G+, G-) pair")
        return g

    def logit(self, g: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        """log(P / (1 - P)), ``[N]``; numerically safer than ``P`` for losses and scores.
        Competitive: the class log-probabilities ``[N, C]``."""
        if self.competitive:
            return competitive_log_probs(g, self.temperature, self.eps)
        if self.kind == "sigmoid":
            if isinstance(g, tuple):
                raise TypeError("sigmoid probability needs a single goodness tensor")
            return sigmoid_logit(g, self.alpha, self.theta)
        gp, gn = self._pair(g)
        if self.kind == "symmetric":
            return symmetric_logit(gp, gn, self.eps)
        return polar_logit(gp, gn, self.alpha, self.theta)

    def __call__(self, g: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        """P, ``[N]`` (competitive: class probabilities ``[N, C]``)."""
        if self.competitive:
            return _array.exp(self.logit(g))
        if self.kind == "symmetric":
            gp, gn = self._pair(g)
            return symmetric_probability(gp, gn, self.eps)
        return _array.sigmoid(self.logit(g))

    def loss(self, g: Tensor | tuple[Tensor, Tensor], y: Tensor) -> Tensor:
        """Mean binary cross-entropy of P against targets ``y`` (1 positive, 0 negative); torch only.
        Competitive: mean cross-entropy against class labels ``y`` ``[N]``."""
        F = _array.xp(y).nn.functional
        if self.competitive:
            _check_classes(g, y)
            return F.nll_loss(self.logit(g), y)

        if self.clip > 0:
            p = self(g)
            return F.binary_cross_entropy(p.clamp(self.clip, 1.0 - self.clip), y.to(p.dtype))
        z = self.logit(g)
        return F.binary_cross_entropy_with_logits(z, y.to(z.dtype))

    def _gate(self, g, m):
        """Zero the modulation of samples whose P lies outside the clamp."""
        if self.clip <= 0:
            return m
        p = self(g)
        keep = _array.astype_like((p >= self.clip) & (p <= 1.0 - self.clip), p)
        return tuple(x * keep for x in m) if isinstance(m, tuple) else m * keep

    def modulation(self, g: Tensor | tuple[Tensor, Tensor], y: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """M = -dL/dG per sample: ``[N]``, or ``([N], [N])`` for split functions (competitive:
        ``[N, C]`` from class goodnesses ``[N, C]`` and labels ``y`` ``[N]``)."""
        if self.competitive:
            return competitive_modulation(g, y, self.temperature, self.eps)
        if self.kind == "sigmoid":
            if isinstance(g, tuple):
                raise TypeError("sigmoid probability needs a single goodness tensor")
            return self._gate(g, sigmoid_modulation(g, y, self.alpha, self.theta))
        gp, gn = self._pair(g)
        if self.kind == "symmetric":
            return self._gate(g, symmetric_modulation(gp, gn, y, self.eps))
        return self._gate(g, polar_modulation(gp, gn, y, self.alpha, self.theta))
