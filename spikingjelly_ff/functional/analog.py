"""The analog FF layer, for torch tensors and numpy arrays.

``a = ReLU(W x_hat)`` with ``x_hat = x / (||x|| + eps)`` when the layer length-normalises its
input (Hinton's normalisation between FF layers, so that a layer cannot read the previous
layer's goodness), else ``x_hat = x``. Shapes: ``x`` ``[..., D]``, ``W`` ``[H, D]``, ``a`` ``[..., H]``.
"""

from __future__ import annotations

from collections.abc import Callable

from spikingjelly_ff.functional import _array

__all__ = ["analog_layer", "length_normalize"]


def length_normalize(x, eps: float = 1e-8):
    """``x / (||x|| + eps)`` over the last axis (numpy or torch, as ``x``)."""
    if _array.is_torch(x):
        return x / (_array.norm_last(x) + eps)
    return x / (_array.norm_last(x) + x.dtype.type(eps))


def analog_layer(
    x,
    w=None,
    normalize_input: bool = False,
    *,
    synapse: Callable | None = None,
    act: Callable | None = None,
    eps: float = 1e-8,
):
    """Activity ``[..., H]`` of one analog FF layer for inputs ``x`` ``[..., D]``.

    ``synapse`` replaces ``x_hat @ w.T`` and ``act`` the ReLU: a torch module passes its own
    submodules, so hooks on them (the Hebbian learner's monitors) still see every call."""
    if normalize_input:
        x = length_normalize(x, eps)
    z = x @ w.T if synapse is None else synapse(x)
    return _array.relu(z) if act is None else act(z)
