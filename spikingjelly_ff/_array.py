"""Array-namespace helpers so that the pure math runs on torch tensors and numpy arrays.

The math modules (goodness, probability, hebbian, dynamics) call these instead of torch or
numpy directly, which lets the torch-free runtime share one implementation with training.
torch is never imported here: a tensor is recognised by its type's module.
"""

from __future__ import annotations

import numpy as np


def is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def xp(x):
    """``torch`` for tensors, ``numpy`` otherwise."""
    if is_torch(x):
        import torch

        return torch
    return np


def sigmoid(x):
    if is_torch(x):
        return x.sigmoid()
    return 1.0 / (1.0 + np.exp(-x))


def exp(x):
    return xp(x).exp(x)


def log(x):
    return xp(x).log(x)


def sign(x):
    return xp(x).sign(x)


def where(cond, a, b):
    """Elementwise choice; ``a`` or ``b`` may be Python scalars (dtype follows the array)."""
    if is_torch(cond):
        import torch

        return torch.where(cond, a, b)
    out = np.where(cond, a, b)
    ref = b if isinstance(b, np.ndarray) else a
    return out.astype(ref.dtype, copy=False) if isinstance(ref, np.ndarray) else out


def ones_bool(x):
    """All-true boolean array shaped like ``x``."""
    if is_torch(x):
        import torch

        return torch.ones_like(x, dtype=torch.bool)
    return np.ones(x.shape, dtype=bool)


def concat(parts, axis: int = -1):
    if is_torch(parts[0]):
        import torch

        return torch.cat(parts, dim=axis)
    return np.concatenate(parts, axis=axis)


def expand_last(v, width: int):
    """``[N]`` -> ``[N, width]`` repeating each value (a view where possible)."""
    if is_torch(v):
        return v.unsqueeze(-1).expand(*v.shape, width)
    return np.broadcast_to(v[..., None], (*v.shape, width))


def astype_like(x, ref):
    """``x`` (e.g. a boolean array) converted to ``ref``'s floating dtype."""
    if is_torch(x):
        return x.to(ref.dtype)
    return x.astype(ref.dtype)
