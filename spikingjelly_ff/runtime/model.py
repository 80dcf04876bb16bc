"""``SpikeModel``: inference and on-line Hebbian learning of an exported spiking FF network,
with numpy only.

It runs the same simulation code as training (``spikingjelly_ff.simulation``), so given the
same input spikes it produces the same spikes as the torch implementation and weights equal
up to float rounding (tests/test_runtime.py checks this against golden vectors).
"""

from __future__ import annotations

import numpy as np

from spikingjelly_ff.functional.scores import summed_score
from spikingjelly_ff.runtime.artifact import SpikeArtifact
from spikingjelly_ff.runtime.protocol import check_eta, check_images, check_spikes, check_targets
from spikingjelly_ff.runtime.spike_base import SpikeArtifactModel
from spikingjelly_ff.runtime.work_memory import WorkMemory, dense_work
from spikingjelly_ff.simulation import (
    Dynamics,
    encode_spikes,
    input_major,
    label_currents,
    learns_online,
    online_layer,
    run_layer,
    score_labels,
    spike_currents,
)

__all__ = ["SpikeModel"]


class SpikeModel(SpikeArtifactModel):
    """A loaded spike artefact. Arrays are float32; images are ``[N, in_features]`` in [0, 1].

    ``weights`` and ``eligibility`` (``[H, D]`` per layer) are this model's own arrays, by
    default copies of the artefact's; everything else is read from the (immutable) artefact.
    """

    def __init__(
        self,
        art: SpikeArtifact,
        weights: list[np.ndarray] | None = None,
        eligibility: list[np.ndarray] | None = None,
    ) -> None:
        if art.conv is not None:
            raise ValueError("a spiking conv artefact runs in runtime.SpikeConvModel: open it with load_exported()")
        if weights is None:
            art.validate()
            weights = art.weights
            eligibility = art.eligibility
        elif [np.shape(w) for w in weights] != [w.shape for w in art.weights]:
            raise ValueError("weights do not match the artefact's layer shapes")
        if eligibility is not None and [np.shape(e) for e in eligibility] != [w.shape for w in art.weights]:
            raise ValueError("eligibility traces do not match the artefact's layer shapes")
        self.art = art
        self.label_code = art.label_code()
        # input-major memory (w.T contiguous), as the torch layers keep it: see simulate.input_major
        self.weights = [input_major(np.asarray(w, dtype=np.float32)) for w in weights]
        self.eligibility = [
            input_major(np.asarray(e, dtype=np.float32)) for e in (eligibility or [np.zeros_like(w) for w in weights])
        ]
        self.dynamics = Dynamics(art.neuron, art.trace, art.probability, art.goodness)

    # -- inputs -------------------------------------------------------------------------------

    def _check_images(self, x: np.ndarray) -> np.ndarray:
        return check_images(x, self.in_features)

    def embed(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Embedded inputs ``[N, D']`` for images ``[N, D]`` and labels ``[N]``."""
        return self.label_code.embed(x, labels)

    def _rates(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return self.label_code.rates(x, labels, self.art.encoder.gain)

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
            share_image_spikes = self.art.evaluation.share_image_spikes
        enc, code = self.art.encoder, self.label_code
        current = label_currents(
            code.image_rates(x, enc.gain),
            code.label_rates(enc.gain),
            code.image_slice(self.in_features),
            code.label_slice(self.in_features),
            self.weights[0],
            enc.steps,
            rng,
            share_image_spikes,
            enc.coding,
        )
        return self._score(current, code.num_classes, counts, enc.carry_membrane)

    def _score(self, current, num_labels: int, counts: bool = False, carry: bool = True) -> list[np.ndarray]:
        outs, _ = score_labels(
            current,
            num_labels,
            self.weights,
            self.dynamics,
            [None] * len(self.weights),
            carry,
            self.art.encoder.rest_steps,
            "numpy",
            counts,
        )
        return outs

    def layer_outputs_from_spikes(self, spikes: np.ndarray) -> list[np.ndarray]:
        """Final traces ``[C, N, H]`` per layer for given input spikes ``[C, T, N, D']``."""
        spikes = np.asarray(spikes, dtype=np.float32)
        return self._score(
            spike_currents(spikes, self.weights[0]), spikes.shape[0], carry=self.art.encoder.carry_membrane
        )

    def scores_from_outputs(self, outs: list[np.ndarray]) -> np.ndarray:
        """Summed layer scores ``[N, C]`` from per-layer traces ``[C, N, H]``."""
        c, n, _ = outs[0].shape
        a = self.art
        total = summed_score([o.reshape(c * n, -1) for o in outs], a.score_layers, a.probability, a.goodness, a.score)
        return total.reshape(c, n).T

    def scores(self, x: np.ndarray, seed: int | None = 0, repeats: int | None = None) -> np.ndarray:
        """Score of every label, ``[N, C]`` (higher is more likely), summed over ``repeats``
        presentations (default: the export's setting)."""
        repeats = self.art.evaluation.repeats if repeats is None else int(repeats)
        if repeats < 1:
            raise ValueError("repeats must be >= 1")
        x = self._check_images(x)
        if x.shape[0] == 0:  # nothing to present (the scorer's reshapes need a batch)
            return np.zeros((0, self.num_classes), np.float32)
        rng = np.random.default_rng(seed)
        total = self.scores_from_outputs(self.layer_outputs(x, rng=rng))
        for _ in range(repeats - 1):
            total += self.scores_from_outputs(self.layer_outputs(x, rng=rng))
        return total

    def working_memory(self, steps: int | None = None, latent: bool = False) -> WorkMemory:
        """Bytes :meth:`scores` (and, with ``latent``, :meth:`latent`) hold at their peak on a
        batch besides its images, at ``steps`` time steps (default: the export's)."""
        return dense_work(
            self.presentation_steps(steps),
            self.in_features,
            self.weights[0].shape[1],
            self.label_code.width,
            [w.shape[0] for w in self.weights],
            self.num_classes,
            self.art.evaluation.share_image_spikes,
            self.art.encoder.coding,
            latent,
        )

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
        spikes = encode_spikes(self._rates(x, labels), self.steps, rng, self.art.encoder.coding)[None]
        outs = self._score(spike_currents(spikes, self.weights[0]), 1, counts=True, carry=False)
        return np.concatenate([o[0] for o in outs], axis=1)

    # -- learning -----------------------------------------------------------------------------

    def learn(
        self, x: np.ndarray, labels: np.ndarray, positive: np.ndarray, seed: int | None = 0, eta: float | None = None
    ) -> np.ndarray:
        """One Hebbian update from images ``[N, D]`` shown with ``labels`` ``[N]``; ``positive``
        ``[N]`` says whether each label is the true one. Returns the presentation's log-odds,
        from traces during which the weights already learn (so they depend on ``eta``)."""
        x = self._check_images(x)
        y = check_targets(positive, x.shape[0])
        spikes = encode_spikes(self._rates(x, labels), self.steps, np.random.default_rng(seed), self.art.encoder.coding)
        return self._learn(spikes, y, eta)

    def learn_spikes(self, spikes: np.ndarray, y: np.ndarray, eta: float | None = None) -> np.ndarray:
        """Present ``[T, N, D']`` spikes (0 or 1) and learn towards ``y`` ``[N]`` (1 positive);
        the weights and eligibility change in place. Membranes start at rest."""
        spikes = np.asarray(spikes, dtype=np.float32)
        if spikes.ndim != 3:
            raise ValueError(f"spikes must have shape [T, N, D'], got {list(spikes.shape)}")
        if spikes.shape[2] != self.weights[0].shape[1]:  # the compiled one-sample path reads by this width
            raise ValueError(f"spikes must have {self.weights[0].shape[1]} inputs per step, got {spikes.shape[2]}")
        return self._learn(check_spikes(spikes), check_targets(y, spikes.shape[1]), eta)

    def _learn(self, spikes: np.ndarray, y: np.ndarray, eta: float | None) -> np.ndarray:
        """:meth:`learn_spikes` for checked spikes ``[T, N, D']`` and targets ``[N]``."""
        self.art.check_learning(spikes.shape[0])
        spec = self.learn_spec
        eta = check_eta(eta, spec.eta)
        n = spikes.shape[1]
        online = learns_online(n, spec, self.dynamics.neuron)
        pre = spikes
        acts = []
        for w, e in zip(self.weights, self.eligibility):
            v = np.zeros((n, w.shape[0]), dtype=np.float32)
            if online:
                pre, tr = online_layer(pre, w, v, self.dynamics, float(y[0]), spec, eta, e)
            else:
                pre, tr = run_layer(pre, w, v, self.dynamics, "numpy", (y, spec, eta, e))
            acts.append(tr)
        a = self.art
        return summed_score(acts, a.score_layers, a.probability, a.goodness)
