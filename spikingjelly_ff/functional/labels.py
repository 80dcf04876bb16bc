"""Label codes: how a candidate label is written into an FF network's input (numpy only).

* ``pattern`` appends a fixed random binary pattern per class (the paper: 100 bits, each
  on with probability 0.3), so ``D' = D + bits``.
* ``onehot`` overwrites the first ``C`` inputs with a one-hot code (Hinton's choice), so
  ``D' = D``.

Either way the embedded input ``[N, D']`` holds the image at ``image_slice`` (the same
positions of ``x``) and ``scale * code[label]`` at ``label_slice``. Spike encoders use
``rates`` = embedded input × gain, clipped to [0, 1] (:func:`spike_rates`). The torch module
of ``nn/embedding.py`` wraps this one object, and every runtime and export reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from spikingjelly_ff.functional import _array

__all__ = ["LABEL_KINDS", "LabelCode", "spike_rates"]

LABEL_KINDS = ("pattern", "onehot")


def spike_rates(values, gain: float):
    """Spike probabilities: ``values`` (numpy or torch) times ``gain``, clipped to [0, 1]."""
    if _array.is_torch(values):
        return _array.clip01(values * gain)
    return _array.clip01(values * np.float32(gain))


@dataclass(frozen=True, eq=False)
class LabelCode:
    """One label embedding: ``kind`` 'pattern' (``patterns`` ``[C, bits]`` of 0/1) or 'onehot'
    (``patterns`` None); an active label position holds ``scale``."""

    kind: str
    num_classes: int
    patterns: np.ndarray | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in LABEL_KINDS:
            raise ValueError(f"label embedding must be one of {LABEL_KINDS}, got {self.kind!r}")
        if self.num_classes < 1:
            raise ValueError(f"a label code needs at least one class, got num_classes={self.num_classes}")
        if self.kind == "onehot":
            if self.patterns is not None:
                raise ValueError("a one-hot label code takes no patterns; pass patterns=None")
            return
        p = None if self.patterns is None else np.asarray(self.patterns, dtype=np.float32)
        if p is None or p.ndim != 2 or p.shape[0] != self.num_classes or p.shape[1] < 1:
            shape = None if p is None else list(p.shape)
            raise ValueError(f"label patterns must have shape [{self.num_classes}, bits >= 1], got {shape}")
        if not np.all((p == 0) | (p == 1)):
            raise ValueError("label patterns must hold 0 and 1 only")
        object.__setattr__(self, "patterns", p)

    @property
    def width(self) -> int:
        """Number of label positions L: the pattern bits, or C for one-hot."""
        return self.patterns.shape[1] if self.kind == "pattern" else self.num_classes

    def input_width(self, in_features: int) -> int:
        """Width ``D'`` of the embedded input for images of ``in_features`` values."""
        if self.kind == "pattern":
            return in_features + self.width
        if in_features < self.num_classes:
            raise ValueError(
                f"one-hot overlay needs at least as many inputs as classes, got {in_features} < {self.num_classes}"
            )
        return in_features

    def label_slice(self, in_features: int) -> slice:
        """Positions of the embedded input that depend on the label."""
        if self.kind == "pattern":
            return slice(in_features, in_features + self.width)
        return slice(0, self.num_classes)

    def image_slice(self, in_features: int) -> slice:
        """Positions of the embedded input copied from the same positions of the image."""
        if self.kind == "pattern":
            return slice(0, in_features)
        return slice(self.num_classes, in_features)

    def codes(self) -> np.ndarray:
        """Label part of every class, ``[C, L]`` float32 with ``scale`` applied (read-only)."""
        return self._codes

    @cached_property
    def _codes(self) -> np.ndarray:
        base = self.patterns if self.kind == "pattern" else np.eye(self.num_classes, dtype=np.float32)
        out = base * np.float32(self.scale)
        out.setflags(write=False)
        return out

    def neutral(self) -> np.ndarray:
        """Label part of the "no label" input, ``[L]`` float32: the mean of all patterns, or
        ``scale / C`` at every one-hot position (what the linear readout is fed)."""
        return self._neutral

    @cached_property
    def _neutral(self) -> np.ndarray:
        if self.kind == "pattern":
            out = self.patterns.mean(0) * np.float32(self.scale)
        else:
            out = np.full(self.num_classes, self.scale / self.num_classes, dtype=np.float32)
        out.setflags(write=False)
        return out

    def check_labels(self, labels, n: int) -> np.ndarray:
        """``labels`` as ``[n]`` int64, or a ValueError saying what is wrong (a fractional or
        non-finite label is refused, not rounded)."""
        raw = np.asarray(labels)
        if raw.dtype.kind not in "iuf" or (
            raw.dtype.kind == "f" and not np.all(np.isfinite(raw) & (raw == np.round(raw)))
        ):
            shown = raw.ravel()[:4].tolist()
            raise ValueError(f"labels must be {n} integers in [0, {self.num_classes}), got {raw.dtype} values {shown}")
        labels = raw.astype(np.int64)
        if labels.shape != (n,):
            raise ValueError(f"labels must be {n} integers in [0, {self.num_classes}), got shape {list(labels.shape)}")
        if labels.min(initial=0) < 0 or labels.max(initial=0) >= self.num_classes:
            raise ValueError(
                f"labels must be {n} integers in [0, {self.num_classes}), got values in "
                f"[{labels.min()}, {labels.max()}]"
            )
        return labels

    def embed(self, x: np.ndarray, labels) -> np.ndarray:
        """Embedded inputs ``[N, D']`` for images ``x`` ``[N, D]`` and ``labels`` ``[N]``."""
        labels = self.check_labels(labels, x.shape[0])
        code = self.codes()[labels]
        if self.kind == "pattern":
            return np.concatenate((x, code.astype(x.dtype, copy=False)), axis=1)
        out = x.copy()
        out[:, : self.num_classes] = code
        return out

    def rates(self, x: np.ndarray, labels, gain: float) -> np.ndarray:
        """Spike probabilities ``[N, D']``: the embedded input times ``gain``, clipped to [0, 1]."""
        return spike_rates(self.embed(x, labels), gain)

    def image_rates(self, x, gain: float):
        """Spike probabilities of the images themselves, ``[N, D]`` (numpy or torch, as ``x``);
        the embedded input holds ``image_slice`` of them."""
        return spike_rates(x, gain)

    def label_rates(self, gain: float) -> np.ndarray:
        """Spike probabilities of every class's label positions, ``[C, L]`` float32."""
        return spike_rates(self.codes(), gain)
