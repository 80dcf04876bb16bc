"""What the two numpy spiking runtimes (``SpikeModel``, dense, and ``SpikeConvModel``) share: a
model is its immutable :class:`SpikeArtifact` (settings) plus its own weights and eligibility
traces, saved and copied together so that a model's config travels with its weights."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from spikingjelly_ff.functional.params import HebbianParams
from spikingjelly_ff.runtime.artifact import SpikeArtifact, read_artifact, write_artifact

__all__ = ["SpikeArtifactModel"]

M = TypeVar("M", bound="SpikeArtifactModel")


class SpikeArtifactModel:
    """Persistence and artefact settings of a spiking runtime. Subclasses take
    ``(art, weights=None, eligibility=None)`` and keep ``art``, ``weights`` and ``eligibility``
    (float32 arrays, one per weight of the artefact)."""

    kind = "spiking"
    art: SpikeArtifact
    weights: list[np.ndarray]
    eligibility: list[np.ndarray]

    # -- persistence ------------------------------------------------------------------------

    @classmethod
    def load(cls: type[M], path: str | os.PathLike) -> M:
        return cls(read_artifact(path))

    def to_artifact(self) -> SpikeArtifact:
        return replace(
            self.art,
            weights=[w.copy() for w in self.weights],
            eligibility=[e.copy() for e in self.eligibility],
            source_sha256=None,  # these weights are no file's yet
        )

    @property
    def source_sha256(self) -> str | None:
        """SHA-256 of the file's bytes this model was read from (None: not read from a file)."""
        return self.art.source_sha256

    def save(self, path: str | os.PathLike) -> Path:
        """Write weights, eligibility and settings atomically."""
        return write_artifact(path, self.to_artifact())

    def copy(self: M) -> M:
        """An independent model with copied weights and eligibility (for copy-on-write updates)."""
        return type(self)(self.art, self.weights, self.eligibility)

    def with_steps(self: M, steps: int) -> M:
        """A copy that presents every input for ``steps`` steps."""
        art = replace(self.art, encoder=replace(self.art.encoder, steps=int(steps)))
        return type(self)(art, self.weights, self.eligibility)

    def presentation_steps(self, steps: int | None = None) -> int:
        """``steps`` checked as the encoder checks its own (ValueError), None: the export's."""
        return self.steps if steps is None else replace(self.art.encoder, steps=steps).steps

    # -- settings -------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return self.art.num_classes

    @property
    def in_features(self) -> int:
        return self.art.in_features

    @property
    def steps(self) -> int:
        return self.art.encoder.steps

    @property
    def probability(self):
        return self.art.probability

    @property
    def eta(self) -> float:
        """Default learning rate of ``learn`` (the artefact's Hebbian settings)."""
        return float(self.art.hebbian.eta)

    @property
    def learn_spec(self) -> HebbianParams:
        h = self.art.hebbian
        return HebbianParams(float(h.eta), h.eligibility_tau, int(h.learn_after), update=h.update)
