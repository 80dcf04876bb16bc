"""Array-namespace helpers so that the pure math runs on torch tensors and numpy arrays.

The math modules (goodness, probability, hebbian, dynamics) call these instead of torch or
numpy directly, which lets the torch-free runtime share one implementation with training.
torch is never imported here: a tensor is recognised by its type's module, and the torch
module is taken from ``sys.modules`` (a tensor cannot exist before torch is imported). So the
torch-free layers that use these helpers import no torch, which ``lint-imports`` checks.
"""

from __future__ import annotations

import sys

import numpy as np


def is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def xp(x):
    """``torch`` for tensors, ``numpy`` otherwise."""
    return sys.modules["torch"] if is_torch(x) else np


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


def clip01(x):
    """``x`` clipped to [0, 1] in place (``x`` is a fresh array the caller owns)."""
    if is_torch(x):
        return x.clamp_(0.0, 1.0)
    return np.clip(x, 0.0, 1.0, out=x)


def norm_last(x):
    """Euclidean norm over the last axis, kept as a length-1 axis."""
    if is_torch(x):
        return x.norm(dim=-1, keepdim=True)
    return np.linalg.norm(x, axis=-1, keepdims=True)


def relu(x):
    return x.relu() if is_torch(x) else np.maximum(x, 0.0)


def where(cond, a, b):
    """Elementwise choice; ``a`` or ``b`` may be Python scalars (dtype follows the array)."""
    if is_torch(cond):
        return xp(cond).where(cond, a, b)
    out = np.where(cond, a, b)
    ref = b if isinstance(b, np.ndarray) else a
    return out.astype(ref.dtype, copy=False) if isinstance(ref, np.ndarray) else out


def ones_bool(x):
    """All-true boolean array shaped like ``x``."""
    if is_torch(x):
        return xp(x).ones_like(x, dtype=xp(x).bool)
    return np.ones(x.shape, dtype=bool)


def log_softmax(z):
    """log softmax over the last axis."""
    if is_torch(z):
        return xp(z).log_softmax(z, -1)
    shifted = z - z.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def concat(parts, axis: int = -1):
    if is_torch(parts[0]):
        return xp(parts[0]).cat(parts, dim=axis)
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


def float64(x):
    """``x`` in float64 (a copy unless it already is)."""
    return x.double() if is_torch(x) else x.astype(np.float64)


def empty(like, shape: tuple):
    """Uninitialised array of ``shape`` with ``like``'s type, dtype and device."""
    if is_torch(like):
        return xp(like).empty(shape, dtype=like.dtype, device=like.device)
    return np.empty(shape, dtype=like.dtype)


def zeros(like, shape: tuple):
    """Zeros of ``shape`` with ``like``'s type, dtype and device."""
    if is_torch(like):
        return xp(like).zeros(shape, dtype=like.dtype, device=like.device)
    return np.zeros(shape, dtype=like.dtype)


def copy(x):
    return x.clone() if is_torch(x) else x.copy()


def swap01(x):
    """Swap the first two axes (a view)."""
    return x.transpose(0, 1) if is_torch(x) else np.swapaxes(x, 0, 1)


def contiguous(x):
    return x.contiguous() if is_torch(x) else np.ascontiguousarray(x)
