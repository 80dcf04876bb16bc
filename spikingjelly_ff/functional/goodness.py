"""Goodness functions G(l) of a layer's activity l.

Every function maps activity ``act`` (l) of shape ``[..., H]`` to goodness of shape ``[...]``.
A *split* goodness treats the first ``H // 2`` neurons as the positive half and the rest
as the negative half and returns ``(G_pos, G_neg)``; the symmetric and polar probability
functions need it.

``grad`` returns dG/dl, which turns the FF loss gradient into a local learning rule:
for a quadratic goodness dG/dl is proportional to l, so the rule is Hebbian
(post-synaptic activity times pre-synaptic input); for others it is not.
Works on torch tensors and numpy arrays alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spikingjelly_ff.functional import _array

Tensor = Any  # a torch tensor or a numpy array

__all__ = [
    "GOODNESS",
    "check_goodness",
    "goodness",
    "goodness_grad",
    "hebbian_gain",
    "is_quadratic",
    "l1",
    "mean_squares",
    "split_halves",
    "sum_squares",
]


def sum_squares(act: Tensor) -> Tensor:
    """G = sum_j l_j^2. ``[..., H] -> [...]``."""
    return (act * act).sum(-1)


def mean_squares(act: Tensor) -> Tensor:
    """G = mean_j l_j^2. ``[..., H] -> [...]``."""
    return (act * act).mean(-1)


def l1(act: Tensor) -> Tensor:
    """G = sum_j |l_j| (non-quadratic). ``[..., H] -> [...]``."""
    return abs(act).sum(-1)


GOODNESS: dict[str, Callable[[Tensor], Tensor]] = {
    "sum_squares": sum_squares,
    "mean_squares": mean_squares,
    "l1": l1,
}


def check_goodness(kind: str) -> None:
    """ValueError naming the known kinds when ``kind`` is not one of :data:`GOODNESS`."""
    if not isinstance(kind, str) or kind not in GOODNESS:
        raise ValueError(f"unknown goodness {kind!r}; choose one of {sorted(GOODNESS)}")


def split_halves(act: Tensor) -> tuple[Tensor, Tensor]:
    """Split ``[..., H]`` into the positive half ``[..., H//2]`` and negative half."""
    h = act.shape[-1]
    if h < 2 or h % 2:
        raise ValueError(f"a split goodness needs an even number of neurons, got {h}")
    return act[..., : h // 2], act[..., h // 2 :]


def goodness(act: Tensor, kind: str = "sum_squares", split: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Goodness of ``act`` ``[..., H]``: ``[...]``, or ``([...], [...])`` when ``split``."""
    check_goodness(kind)
    fn = GOODNESS[kind]
    if split:
        pos, neg = split_halves(act)
        return fn(pos), fn(neg)
    return fn(act)


def goodness_grad(act: Tensor, kind: str = "sum_squares", split: bool = False) -> Tensor:
    """dG/dl, shape ``[..., H]`` (for a split goodness each half w.r.t. its own G)."""
    check_goodness(kind)
    if kind == "sum_squares":
        return 2.0 * act
    if kind == "mean_squares":
        n = act.shape[-1] // 2 if split else act.shape[-1]
        return 2.0 * act / n
    return _array.sign(act)


def is_quadratic(kind: str) -> bool:
    """True when dG/dl = c * act, i.e. when the FF gradient is a Hebbian product."""
    check_goodness(kind)
    return kind in ("sum_squares", "mean_squares")


def hebbian_gain(kind: str, width: int, split: bool = False) -> float:
    """The constant c in dG/dl = c * act for a quadratic goodness over ``width`` neurons."""
    if not is_quadratic(kind):
        raise ValueError(f"goodness {kind!r} is not quadratic: its gradient is not Hebbian")
    if kind == "sum_squares":
        return 2.0
    n = width // 2 if split else width
    return 2.0 / n
