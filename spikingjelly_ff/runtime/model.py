"""``SpikeModel``: inference and on-line Hebbian learning of an exported spiking FF network,
with numpy only.

It runs the same simulation code as training (``spikingjelly_ff.simulate``), so given the
same input spikes it produces the same spikes as the torch implementation and weights equal
up to float rounding (tests/test_runtime.py checks this against golden vectors).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..probability import Probability
from ..simulate import (
    Dynamics,
    LearnSpec,
    encode_spikes,
    input_major,
    label_currents,
    online_layer,
    run_layer,
    score_labels,
)
from .artifact import SpikeArtifact, read_artifact, write_artifact

__all__ = ["SpikeModel"]


class SpikeModel:
    """A loaded spike artefact. Arrays are float32; images are ``[N, in_features]`` in [0, 1]."""

    def __init__(self, art: SpikeArtifact) -> None:
        self.art = art.validate()
        # input-major memory (w.T contiguous), as the torch layers keep it: see simulate.input_major
        self.weights = [input_major(np.asarray(w, dtype=np.float32)) for w in art.weights]
        self.eligibility = [
            input_major(np.asarray(e, dtype=np.float32))
            for e in (art.eligibility or [np.zeros_like(w) for w in art.weights])
        ]
        self.probability = Probability(**art.probability)
        self.dynamics = Dynamics(art.neuron, art.trace, self.probability, art.goodness)
        h = art.hebbian
        self.learn_spec = LearnSpec(
            float(h.get("eta", 0.1)),
            h.get("eligibility_tau", 0.1),
            int(h.get("learn_after", art.encoder["steps"] // 2)),
        )
        scale = np.float32(art.embedding.get("scale", 1.0))
        self.patterns = None if art.label_patterns is None else np.asarray(art.label_patterns, dtype=np.float32) * scale

    # -- persistence ------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike) -> SpikeModel:
        return cls(read_artifact(path))

    def to_artifact(self) -> SpikeArtifact:
        return replace(
            self.art, weights=[w.copy() for w in self.weights], eligibility=[e.copy() for e in self.eligibility]
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write weights, eligibility and settings atomically."""
        return write_artifact(path, self.to_artifact())

    # -- properties ---------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return self.art.num_classes

    @property
    def in_features(self) -> int:
        return self.art.in_features

    @property
    def steps(self) -> int:
        return int(self.art.encoder["steps"])

    def copy(self) -> SpikeModel:
        """An independent model with copied weights and eligibility (for copy-on-write updates)."""
        clone = SpikeModel.__new__(SpikeModel)
        clone.__dict__.update(self.__dict__)
        clone.weights = [input_major(w) for w in self.weights]
        clone.eligibility = [input_major(e) for e in self.eligibility]
        return clone

    # -- inputs -------------------------------------------------------------------------------

    def _check_images(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"images must have shape [N, {self.in_features}], got {list(x.shape)}")
        if not np.all(np.isfinite(x)):
            raise ValueError("images contain NaN or Inf")
        if x.min(initial=0.0) < 0.0 or x.max(initial=0.0) > 1.0:
            raise ValueError("image values must lie in [0, 1]")
        return x

    def embed(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Embedded inputs ``[N, D']`` for images ``[N, D]`` and labels ``[N]``."""
        emb = self.art.embedding
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (x.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) >= self.num_classes:
            raise ValueError(f"labels must be {x.shape[0]} integers in [0, {self.num_classes})")
        if emb["kind"] == "pattern":
            return np.concatenate((x, self.patterns[labels]), axis=1)
        out = x.copy()
        out[:, : self.num_classes] = 0.0
        out[np.arange(len(x)), labels] = float(emb.get("scale", 1.0))
        return out

    def _all_label_rates(self, x: np.ndarray) -> np.ndarray:
        c = self.num_classes
        rates = np.stack([self.embed(x, np.full(len(x), k)) for k in range(c)])
        return np.clip(rates * np.float32(self.art.encoder["gain"]), 0.0, 1.0).astype(np.float32)

    def _label_slice(self) -> slice:
        if self.art.embedding["kind"] == "pattern":
            return slice(self.in_features, self.in_features + int(self.art.embedding["bits"]))
        return slice(0, self.num_classes)

    # -- inference ----------------------------------------------------------------------------

    def layer_outputs(
        self,
        x: np.ndarray,
        seed: int | None = 0,
        share_image_spikes: bool | None = None,
        counts: bool = False,
        rng=None,
    ):
        """Every layer's final trace (or spike count) for every label, each ``[C, N, H]``.
        Each call starts from resting membranes, so equal inputs and seeds give equal results."""
        x = self._check_images(x)
        rng = np.random.default_rng(seed) if rng is None else rng
        if share_image_spikes is None:
            share_image_spikes = bool(self.art.evaluation.get("share_image_spikes", True))
        enc = self.art.encoder
        rates = self._all_label_rates(x)
        coding = enc.get("coding", "bernoulli")
        current = label_currents(
            rates, self._label_slice(), self.weights[0], int(enc["steps"]), rng, share_image_spikes, coding
        )
        return self._score(current, len(rates), counts, bool(enc["carry_membrane"]))

    def _score(self, current, num_labels: int, counts: bool = False, carry: bool = True) -> list[np.ndarray]:
        enc = self.art.encoder
        outs, _ = score_labels(
            current,
            num_labels,
            self.weights,
            self.dynamics,
            [None] * len(self.weights),
            carry,
            int(enc["rest_steps"]),
            "numpy",
            counts,
        )
        return outs

    @staticmethod
    def _spike_current(spikes: np.ndarray, w: np.ndarray):
        c, t, n, _ = spikes.shape
        return lambda k: (spikes[k].reshape(t * n, -1) @ w.T).reshape(t, n, -1)

    def layer_outputs_from_spikes(self, spikes: np.ndarray) -> list[np.ndarray]:
        """Final traces ``[C, N, H]`` per layer for given input spikes ``[C, T, N, D']``."""
        spikes = np.asarray(spikes, dtype=np.float32)
        return self._score(
            self._spike_current(spikes, self.weights[0]),
            spikes.shape[0],
            carry=bool(self.art.encoder["carry_membrane"]),
        )

    def scores_from_outputs(self, outs: list[np.ndarray]) -> np.ndarray:
        """Summed layer scores ``[N, C]`` from per-layer traces ``[C, N, H]``."""
        from ..goodness import goodness

        c, n, _ = outs[0].shape
        total = np.zeros((c * n,), dtype=np.float32)
        for i in self.art.score_layers:
            g = goodness(outs[i].reshape(c * n, -1), self.art.goodness, split=self.probability.split)
            if self.art.score == "probability":
                total += self.probability.logit(g)
            else:
                total += g[0] - g[1] if isinstance(g, tuple) else g
        return total.reshape(c, n).T

    def scores(self, x: np.ndarray, seed: int | None = 0, repeats: int | None = None) -> np.ndarray:
        """Score of every label, ``[N, C]`` (higher is more likely), summed over ``repeats``
        presentations (default: the export's setting)."""
        repeats = int(self.art.evaluation.get("repeats", 1)) if repeats is None else int(repeats)
        if repeats < 1:
            raise ValueError("repeats must be >= 1")
        rng = np.random.default_rng(seed)
        total = self.scores_from_outputs(self.layer_outputs(x, rng=rng))
        for _ in range(repeats - 1):
            total += self.scores_from_outputs(self.layer_outputs(x, rng=rng))
        return total

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Softmax over labels of the summed log-odds (a normalised confidence), ``[N, C]``."""
        z = scores - scores.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray, seed: int | None = 0) -> np.ndarray:
        return self.scores(x, seed).argmax(axis=1)

    def latent(self, x: np.ndarray, labels: np.ndarray, seed: int | None = 0) -> np.ndarray:
        """Spike counts of every layer with ``labels`` shown, ``[N, sum H]``."""
        x = self._check_images(x)
        rng = np.random.default_rng(seed)
        rates = np.clip(self.embed(x, labels) * np.float32(self.art.encoder["gain"]), 0.0, 1.0).astype(np.float32)
        spikes = encode_spikes(rates, self.steps, rng, self.art.encoder.get("coding", "bernoulli"))[None]
        outs = self._score(self._spike_current(spikes, self.weights[0]), 1, counts=True, carry=False)
        return np.concatenate([o[0] for o in outs], axis=1)

    # -- learning -----------------------------------------------------------------------------

    def learn(
        self, x: np.ndarray, labels: np.ndarray, positive: np.ndarray, seed: int | None = 0, eta: float | None = None
    ) -> np.ndarray:
        """One Hebbian update from images ``[N, D]`` shown with ``labels`` ``[N]``; ``positive``
        ``[N]`` says whether each label is the true one. Returns the log-odds before learning."""
        x = self._check_images(x)
        rates = np.clip(self.embed(x, labels) * np.float32(self.art.encoder["gain"]), 0.0, 1.0).astype(np.float32)
        coding = self.art.encoder.get("coding", "bernoulli")
        spikes = encode_spikes(rates, self.steps, np.random.default_rng(seed), coding)
        return self.learn_spikes(spikes, np.asarray(positive, dtype=np.float32), eta)

    def learn_spikes(self, spikes: np.ndarray, y: np.ndarray, eta: float | None = None) -> np.ndarray:
        """Present ``[T, N, D']`` spikes and learn towards ``y`` ``[N]`` (1 positive); the weights
        and eligibility change in place. Membranes start at rest."""
        spikes = np.asarray(spikes, dtype=np.float32)
        y = np.asarray(y, dtype=np.float32)
        eta = self.learn_spec.eta if eta is None else float(eta)
        n = spikes.shape[1]
        pre = spikes
        acts = []
        for w, e in zip(self.weights, self.eligibility):
            v = np.zeros((n, w.shape[0]), dtype=np.float32)
            if n == 1 and self.learn_spec.eligibility_tau is not None and self.dynamics.neuron.kwta is None:
                pre, tr = online_layer(pre, w, v, self.dynamics, float(y[0]), self.learn_spec, eta, e)
            else:
                pre, tr = run_layer(pre, w, v, self.dynamics, "numpy", (y, self.learn_spec, eta, e))
            acts.append(tr)
        total = np.zeros(n, dtype=np.float32)
        for i in self.art.score_layers:
            from ..goodness import goodness

            total += self.probability.logit(goodness(acts[i], self.art.goodness, split=self.probability.split))
        return total
