"""The contract of a loaded runtime model (``SpikeModel``, ``AnalogModel``): all that code
serving or learning with a model (the gRPC server, for one) may rely on.

Images are ``[N, in_features]`` float32 in [0, 1]; labels ``[N]`` int64 in
``[0, num_classes)``; ``positive`` ``[N]`` float32, 1 where the label shown is the true one.
Torch-free: this module imports nothing but typing, numpy and the standard library.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # a dataclass of the standard library only; imported for the annotation
    from spikingjelly_ff.runtime.work_memory import WorkMemory

__all__ = ["RuntimeModel", "check_eta", "check_images", "check_spikes", "check_targets", "competitive_targets"]


def check_images(x, in_features: int, unit_range: bool = True) -> np.ndarray:
    """``x`` as float32 ``[N, in_features]``, finite (and in [0, 1] with ``unit_range``);
    raises ``ValueError`` saying what is wrong otherwise."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != in_features:
        raise ValueError(f"images must have shape [N, {in_features}], got {list(x.shape)}")
    if not np.all(np.isfinite(x)):
        raise ValueError("images contain NaN or Inf")
    if unit_range and (x.min(initial=0.0) < 0.0 or x.max(initial=0.0) > 1.0):
        raise ValueError("image values must lie in [0, 1]")
    return x


def check_spikes(spikes: np.ndarray, name: str = "spikes") -> np.ndarray:
    """``spikes`` (float32, any shape) unchanged where every value is 0 or 1; ``ValueError``
    otherwise. The layers take any current, but a learner given a NaN would spread it into
    every weight it touches, and a graded "spike" is no presentation the encoder makes."""
    if spikes.size and np.count_nonzero(spikes) != np.count_nonzero(spikes == 1.0):
        bad = spikes[(spikes != 0.0) & (spikes != 1.0)]
        raise ValueError(f"{name} must be 0 or 1, got {bad.size} other values (the first: {bad.flat[0]!r})")
    return spikes


def check_eta(eta, default: float) -> float:
    """The learning rate of one update: ``default`` (the model's) where ``eta`` is None, else
    ``eta`` as a finite float >= 0 (0: nothing changes); raises ``ValueError`` otherwise (a
    NaN rate would turn every weight into NaN)."""
    if eta is None:
        return float(default)
    if isinstance(eta, (bool, np.bool_, str, bytes)):
        raise ValueError(f"eta must be a number, got {type(eta).__name__} {eta!r}")
    try:
        eta = float(eta)  # a Python or numpy number, or a 0-d array
    except (TypeError, ValueError) as exc:
        raise ValueError(f"eta must be a number, got {type(eta).__name__}") from exc
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    return eta


def check_targets(positive, n: int) -> np.ndarray:
    """``positive`` as float32 ``[n]``: the learning target of each of ``n`` samples, 1 where
    the label shown is the true one, 0 where it is not (a soft target in between is allowed);
    raises ``ValueError`` saying what is wrong otherwise (no broadcasting: one per sample; no
    empty batch: learning from nothing is a caller's mistake)."""
    try:
        y = np.asarray(positive, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"positive must be numbers (one target per sample): {exc}") from exc
    if y.shape != (n,):
        raise ValueError(f"positive must have shape [{n}] (one target per sample), got {list(y.shape)}")
    if n == 0:
        raise ValueError("learning needs at least one sample, got none")
    if not np.all(np.isfinite(y)):
        raise ValueError("positive targets must be finite, got NaN or Inf")
    if y.size and (y.min() < 0.0 or y.max() > 1.0):
        raise ValueError(f"positive targets must lie in [0, 1], got values in [{y.min():g}, {y.max():g}]")
    return y


def competitive_targets(label_code, labels, positive: np.ndarray) -> np.ndarray:
    """The class targets ``[N]`` int64 of a competitive net's update: ``labels`` checked as
    any label is (``label_code.check_labels``), each shown as the true one (``positive`` 1):
    a competitive net has no negative samples, so a 0 target is refused (``ValueError``)."""
    labels = label_code.check_labels(labels, positive.shape[0])
    if np.any(positive != 1.0):
        raise ValueError("a competitive model learns from true labels only: every positive target must be 1")
    return np.asarray(labels, dtype=np.int64)


@runtime_checkable
class RuntimeModel(Protocol):
    """A model that scores images and learns on line, in place."""

    #: "spiking" (spiking simulation, stochastic) or "analog" (rate network, deterministic)
    kind: Literal["spiking", "analog"]
    #: weights ``[H_l, D_l]`` float32 per layer (``D_0`` = the embedded input width)
    weights: list[np.ndarray]
    #: eligibility traces, one per weight and of its shape (zeros when learning uses none)
    eligibility: list[np.ndarray]

    @property
    def in_features(self) -> int:
        """Image features ``D`` a row of ``x`` holds."""
        ...

    @property
    def num_classes(self) -> int:
        """Labels ``C`` the model tells apart."""
        ...

    @property
    def eta(self) -> float:
        """Learning rate :meth:`learn` uses when it is given none."""
        ...

    @property
    def source_sha256(self) -> str | None:
        """SHA-256 of the file's bytes the model was read from, the bytes it was parsed from
        (None: not read from a file)."""
        ...

    def scores(self, x: np.ndarray, seed: int | None = None) -> np.ndarray:
        """Score of every label, ``[N, C]`` float32 (higher: more likely); ``seed`` seeds
        the spike encoding of a spiking model and is ignored by an analog one."""
        ...

    def predict(self, x: np.ndarray, seed: int | None = None) -> np.ndarray:
        """The best-scoring label per image, ``[N]`` int64."""
        ...

    def working_memory(self, steps: int | None = None, latent: bool = False) -> WorkMemory:
        """An upper estimate of what scoring a batch holds besides its images
        (``runtime.work_memory``), at ``steps`` time steps and with the ``latent`` output
        (a spiking model's options; an analog one ignores them)."""
        ...

    def learn(
        self,
        x: np.ndarray,
        labels: np.ndarray,
        positive: np.ndarray,
        seed: int | None = None,
        eta: float | None = None,
    ) -> np.ndarray:
        """One Hebbian update from images ``[N, D]`` shown with ``labels`` ``[N]``;
        ``positive`` ``[N]`` says which labels are true. Changes :attr:`weights` and
        :attr:`eligibility` in place; returns the summed log-odds this update learnt from,
        ``[N]`` (analog: before it; spiking: of the presentation's traces, during which the
        weights already learn from the window's steps).
        Deterministic given ``seed``. ``eta`` None: :attr:`eta`."""
        ...

    def copy(self) -> RuntimeModel:
        """An independent model: learning on the copy leaves this one unchanged."""
        ...

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model with its current weights (atomically); returns the path."""
        ...
