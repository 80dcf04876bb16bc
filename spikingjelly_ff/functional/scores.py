"""A network's score of a labelled input: the sum over its voting layers of each layer's
log-odds that the input is positive (or of its goodness). Torch or numpy, no torch import.

    score = sum_{l in layers} logit P(G(a_l))      (``score='probability'``)
    score = sum_{l in layers} G(a_l)               (``score='goodness'``; G+ - G- when split)

Shapes: each activity ``a_l`` ``[N, H_l]``; scores ``[N]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spikingjelly_ff.functional import _array
from spikingjelly_ff.functional.goodness import check_goodness, goodness
from spikingjelly_ff.functional.probability import Probability

Tensor = Any  # a torch tensor or a numpy array

__all__ = ["SCORES", "check_scoring", "class_margin", "layer_score", "summed_score"]

SCORES = ("probability", "goodness")


def check_scoring(score: str, goodness_kind: str, score_layers, num_layers: int) -> tuple[int, ...]:
    """The voting layers as a tuple after checking a model's scoring settings (a stored
    file's, so that a bad one fails on load, not at its first prediction): ``score`` one of
    :data:`SCORES`, a known goodness, and voting layers among the ``num_layers`` (a layer named
    twice votes twice, as in the library's nets).
    ValueError otherwise."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    check_goodness(goodness_kind)
    if isinstance(score_layers, (str, bytes)) or not hasattr(score_layers, "__iter__"):
        raise ValueError(f"score_layers must be a list of layer indices, got {score_layers!r}")
    layers = tuple(score_layers)
    if not layers:
        raise ValueError("score_layers must name at least one layer")
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in layers):
        raise ValueError(f"score_layers must hold layer indices, got {list(layers)}")
    if any(not 0 <= i < num_layers for i in layers):
        raise ValueError(f"score_layers {list(layers)} names a layer that does not exist ({num_layers} layers)")
    return tuple(int(i) for i in layers)


def layer_score(act: Tensor, prob: Probability, goodness_kind: str = "sum_squares", score: str = "probability"):
    """Score ``[N]`` of one layer's activity ``[N, H]``: the log-odds of P, or the goodness."""
    g = goodness(act, goodness_kind, split=prob.split)
    if score == "probability":
        return prob.logit(g)
    if score != "goodness":
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    return g[0] - g[1] if isinstance(g, tuple) else g


def summed_score(
    acts: list[Tensor],
    layers: list[int],
    prob: Probability,
    goodness_kind: str = "sum_squares",
    score: str = "probability",
):
    """Sum of :func:`layer_score` over the voting ``layers`` of ``acts``, ``[N]``.

    Torch tensors are stacked and summed; numpy arrays add one layer at a time into a float32
    total (the orders the trained models' recorded scores were computed in)."""
    parts = [layer_score(acts[i], prob, goodness_kind, score) for i in layers]
    if acts and _array.is_torch(acts[0]):
        return _array.xp(acts[0]).stack(parts).sum(0)
    total = np.zeros(acts[0].shape[0], dtype=np.float32)
    for p in parts:
        total += p
    return total


def class_margin(scores: Tensor, labels: Tensor) -> Tensor:
    """``scores[n, label] - max_{c != label} scores[n, c]``, ``[N]``, of class scores ``[N, C]``
    (a competitive net's summed log-probabilities): > 0 exactly when the label wins, the role
    the summed log-odds play for a labelled sample of an FF net."""
    rows = _array.xp(scores).arange(scores.shape[0])
    own = scores[rows, labels]
    others = _array.copy(scores)
    others[rows, labels] = -float("inf")
    return own - others.max(1) if not _array.is_torch(scores) else own - others.max(1).values
