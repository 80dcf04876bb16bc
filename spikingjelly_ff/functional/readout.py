"""A linear softmax readout on FF activity, for torch tensors and numpy arrays alike: its input
(the latent of the chosen layers), its logits and the closed-form gradient of its loss.

The readout is one linear map ``z = h W^T + b`` from the latent ``h`` ``[N, F]`` to the class
logits ``z`` ``[N, C]``, trained on the mean cross-entropy of ``softmax(z)``. Its gradient
needs no autograd: with ``e = softmax(z) - onehot(y)`` it is ``dL/dW = e^T h / N`` and
``dL/db = mean(e)``, an error-modulated Hebbian product of the readout's input and its error
(the delta rule). The FF layers below it stay frozen.
"""

from __future__ import annotations

from typing import Any

from spikingjelly_ff.functional import _array

Array = Any  # torch tensor or numpy array

__all__ = ["fold_standardization", "map_latent", "readout_grid", "readout_grad", "readout_logits"]


def readout_grid(map_shapes: list[tuple[int, int, int]], layers: list[int], grid: int | None) -> int:
    """The side of the grid every chosen layer's map ``(C, OH, OW)`` is averaged onto: ``grid``,
    or by default the smallest side among the chosen maps. ValueError where a map's sides are not
    multiples of it (the windows tile each map exactly)."""
    if not layers:
        raise ValueError("the readout needs at least one layer")
    if any(not 0 <= i < len(map_shapes) for i in layers):
        raise ValueError(f"readout layers {layers} name a layer out of range (the net has {len(map_shapes)})")
    g = min(min(map_shapes[i][1:]) for i in layers) if grid is None else grid
    if isinstance(g, bool) or not isinstance(g, int) or g < 1:
        raise ValueError(f"the readout grid must be an integer >= 1, got {g!r}")
    for i in layers:
        _, oh, ow = map_shapes[i]
        if oh % g or ow % g:
            raise ValueError(f"layer {i}'s map is {oh} x {ow}: the readout grid {g} must divide both sides")
    return g


def map_latent(maps: list[Array], layers: list[int], grid: int) -> Array:
    """The readout's input from conv trace maps ``[N, C_l, OH_l, OW_l]``: each chosen layer's map
    averaged over the windows of a ``grid`` x ``grid`` tiling, flattened and concatenated,
    ``[N, sum_l C_l * grid * grid]``."""
    parts = []
    for i in layers:
        m = maps[i]
        n, c, oh, ow = m.shape
        tiles = m.reshape(n, c, grid, oh // grid, grid, ow // grid)
        parts.append(tiles.mean((3, 5)).reshape(n, c * grid * grid))
    return _array.concat(parts, 1)


def readout_logits(latent: Array, weight: Array, bias: Array) -> Array:
    """Class logits ``[N, C]`` of the latent ``[N, F]``; ``weight`` ``[C, F]``, ``bias`` ``[C]``."""
    return latent @ weight.T + bias


def readout_grad(latent: Array, logits: Array, labels: Array) -> tuple[Array, Array]:
    """Gradient of the mean cross-entropy of ``softmax(logits)`` against ``labels`` ``[N]``
    (class indices) with respect to the readout's weight ``[C, F]`` and bias ``[C]``, for the
    logits ``[N, C]`` it gave on ``latent`` ``[N, F]``."""
    err = _array.exp(_array.log_softmax(logits))  # softmax(z) - onehot(y), built in place
    n = latent.shape[0]
    err[_array.xp(err).arange(n), labels] -= 1.0
    return err.T @ latent / n, err.mean(0)


def fold_standardization(weight: Array, bias: Array, mean: Array, std: Array) -> tuple[Array, Array]:
    """A readout trained on standardised latents ``(h - mean) / std`` as one on raw latents:
    ``W' = W / std``, ``b' = b - W' mean`` (the same logits)."""
    w = weight / std
    return w, bias - w @ mean
