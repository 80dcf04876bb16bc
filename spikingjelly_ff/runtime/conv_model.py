"""``SpikeConvModel``: all-label scoring and on-line Hebbian learning of an exported spiking
conv FF network (``SpikingConvFFNet``), with numpy only. A channel-wise competitive net sees no
label: one presentation scores every class, and it learns from true labels only.

It runs the same simulation code as training (``simulation.conv``) and draws its spikes in the
same order as ``learning.conv_engine`` (with numpy's generator): given the same input spikes
it produces the same spikes as the torch trainer and scorer, and weights and scores equal up
to float rounding (tests/library/test_spiking_conv_runtime.py).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from spikingjelly_ff.functional.labels import spike_rates
from spikingjelly_ff.functional.readout import map_latent, readout_logits
from spikingjelly_ff.functional.scores import class_margin
from spikingjelly_ff.functional.views import translate, view_offsets
from spikingjelly_ff.runtime.artifact import ArtifactError, SpikeArtifact
from spikingjelly_ff.runtime.protocol import check_eta, check_images, check_spikes, check_targets, competitive_targets
from spikingjelly_ff.runtime.spike_base import SpikeArtifactModel
from spikingjelly_ff.runtime.work_memory import WorkMemory, conv_work
from spikingjelly_ff.simulation import ConvLayout, Dynamics, conv_score, encode_spikes, present_conv, score_conv_labels
from spikingjelly_ff.simulation.conv import CONV_PASS, SCORE_CHUNK

__all__ = ["SpikeConvModel"]


def _no_label_spikes(image: np.ndarray) -> np.ndarray:
    """A competitive net's label input for image spikes ``[T, N, ...]``: ``[T, N, 0]`` (as the
    torch net's ``no_label_spikes``)."""
    return np.zeros((*image.shape[:2], 0), np.float32)


class SpikeConvModel(SpikeArtifactModel):
    """A loaded spiking conv artefact. Arrays are float32; images are ``[N, H * W]`` in [0, 1].

    ``weights`` (the conv weights ``[C, I, KH, KW]`` of every layer, then its label weights
    ``[L, C, OH, OW]``) and ``eligibility`` (same shapes) are this model's own arrays, by
    default copies of the artefact's; everything else is read from the (immutable) artefact.
    """

    chunk = SCORE_CHUNK  # images per internal batch of scoring (and label draw), as the torch scorer's

    def __init__(
        self,
        art: SpikeArtifact,
        weights: list[np.ndarray] | None = None,
        eligibility: list[np.ndarray] | None = None,
    ) -> None:
        if art.conv is None:
            raise ArtifactError("not a spiking conv artefact (load dense ones with SpikeModel)")
        if weights is None:
            art.validate()
            weights, eligibility = art.weights, art.eligibility
        elif [np.shape(w) for w in weights] != [w.shape for w in art.weights]:
            raise ValueError("weights do not match the artefact's layer shapes")
        self.art = art
        self.label_code = art.label_code()
        self.weights = [np.array(w, dtype=np.float32, order="C") for w in weights]
        self.eligibility = [
            np.array(e, dtype=np.float32, order="C") for e in (eligibility or [np.zeros_like(w) for w in self.weights])
        ]
        self.dynamics = Dynamics(art.neuron, art.trace, art.probability, art.goodness)
        self.layouts = [ConvLayout(la.stride, la.padding, la.pool, la.pool_size) for la in art.conv.layers]
        self._score = partial(conv_score, over=art.conv.over, score_layers=art.score_layers, prob=art.probability,
                              goodness_kind=art.goodness)  # fmt: skip

    # -- properties ---------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.layouts)

    @property
    def kernels(self) -> list[np.ndarray]:
        """The conv weights ``[C, I, KH, KW]`` per layer (the arrays themselves)."""
        return self.weights[: self.num_layers]

    @property
    def label_weights(self) -> list[np.ndarray]:
        """The label weights ``[L, C, OH, OW]`` per layer (the arrays themselves)."""
        return self.weights[self.num_layers :]

    @property
    def latent_width(self) -> int:
        """Width of :meth:`latent`: every unit of every layer's map."""
        return int(sum(np.prod(la.map_shape) for la in self.art.conv.layers))

    # -- inputs -------------------------------------------------------------------------------

    def image_rates(self, x: np.ndarray) -> np.ndarray:
        """Spike probabilities of images ``[N, H * W]`` as maps ``[N, 1, H, W]``."""
        return spike_rates(x, self.art.encoder.gain).reshape(x.shape[0], *self.art.conv.layers[0].in_shape)

    @property
    def competitive(self) -> bool:
        """Channel-wise competitive: no label input, class scores from one presentation."""
        return self.art.probability.competitive

    def draw(self, x: np.ndarray, labels: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        """Image spikes ``[T, N, 1, H, W]`` and label spikes ``[T, N, L]`` (image first, as the
        torch trainer draws them; a competitive net's label spikes are ``[T, N, 0]``)."""
        x = check_images(x, self.in_features)
        labels = self.label_code.check_labels(labels, x.shape[0])
        enc = self.art.encoder
        image = encode_spikes(self.image_rates(x), enc.steps, rng, enc.coding)
        if self.competitive:  # no label, no draws
            return image, _no_label_spikes(image)
        return image, encode_spikes(self.label_code.label_rates(enc.gain)[labels], enc.steps, rng, enc.coding)

    # -- inference ----------------------------------------------------------------------------

    def scores(self, x: np.ndarray, seed: int | None = 0, repeats: int | None = None) -> np.ndarray:
        """Score of every label, ``[N, C]`` (higher is more likely), summed over ``repeats``
        presentations (default: the export's setting) and the export's shifted views;
        ``SpikingConvScorer``'s algorithm."""
        x = check_images(x, self.in_features)
        repeats = self.art.evaluation.repeats if repeats is None else int(repeats)
        if repeats < 1:
            raise ValueError("repeats must be >= 1")
        rng = np.random.default_rng(seed)
        shape, offsets = tuple(self.art.image_shape), view_offsets(self.art.conv.shift_views)
        parts = []
        for i in range(0, x.shape[0], self.chunk):
            xb = x[i : i + self.chunk]
            total = self._scores(xb, rng, repeats)
            for dy, dx in offsets[1:]:  # the export's test-time views, in the torch scorer's order
                total += self._scores(translate(xb, shape, dy, dx), rng, repeats)
            parts.append(total)
        return np.concatenate(parts) if parts else np.zeros((0, self.num_classes), np.float32)

    def _scores(self, x: np.ndarray, rng, repeats: int) -> np.ndarray:
        enc = self.art.encoder
        rates = self.label_code.label_rates(enc.gain)  # [C, L]
        total = np.zeros((x.shape[0], self.num_classes), np.float32)
        for _ in range(repeats):
            image = encode_spikes(self.image_rates(x), enc.steps, rng, enc.coding)
            if self.competitive:  # no label: one presentation scores every class
                total += self.class_scores_from_spikes(image)
                continue
            # one label draw per chunk, shared by its images (common random numbers)
            if enc.coding == "bernoulli":
                uniform = rng.random((enc.steps, 1, rates.shape[1]), dtype=np.float32)
                codes = [(uniform < rates[k]).astype(np.float32) for k in range(self.num_classes)]
            else:
                codes = [encode_spikes(rates[k : k + 1], enc.steps, rng, enc.coding) for k in range(self.num_classes)]
            total += self.scores_from_spikes(image, codes)
        return total

    def class_scores_from_spikes(self, image: np.ndarray) -> np.ndarray:
        """A competitive net's class scores ``[N, C]`` (summed log-probabilities of the voting
        layers, or the readout's logits where the artefact has one) of image spikes
        ``[T, N, 1, H, W]``, one presentation."""
        if not self.competitive:
            raise TypeError("a label-scored net shows every label: use scores_from_spikes")
        image = np.asarray(image, dtype=np.float32)
        acts = present_conv(
            image, _no_label_spikes(image), self.kernels, self.label_weights, self.layouts,
            self.dynamics, self.art.conv.over, "numpy",
        )  # fmt: skip
        return self._class_scores(acts, self.art.score)

    def _class_scores(self, acts: list[np.ndarray], score: str | None = None) -> np.ndarray:
        """Class scores ``[N, C]`` of a competitive net's trace maps: the readout's logits, else
        the voting layers' summed log-probabilities (``score``: the artefact's score kind)."""
        spec = self.art.conv.readout
        if spec is None:
            return self._score(acts) if score is None else self._score(acts, score=score)
        weight, bias = self.art.readout
        return readout_logits(map_latent(acts, list(spec.layers), spec.grid), weight, bias)

    def scores_from_spikes(self, image: np.ndarray, codes: list[np.ndarray]) -> np.ndarray:
        """Scores ``[N, C]`` of image spikes ``[T, N, 1, H, W]`` shown with each label's spikes
        ``codes[k]`` ``[T, N or 1, L]``."""
        if self.competitive:
            raise TypeError("a competitive net sees no label: use class_scores_from_spikes")
        image = np.asarray(image, dtype=np.float32)
        codes = [np.asarray(c, dtype=np.float32) for c in codes]
        return score_conv_labels(
            image, codes, self.kernels, self.label_weights, self.layouts, self.dynamics,
            partial(self._score, score=self.art.score), self.art.conv.over, "numpy",
        )  # fmt: skip

    def working_memory(self, steps: int | None = None, latent: bool = False) -> WorkMemory:
        """Bytes :meth:`scores` (and, with ``latent``, :meth:`latent`) hold at their peak on a
        batch besides its images, at ``steps`` time steps (default: the export's); scoring
        runs :attr:`chunk` images at a time, so its part stops growing there."""
        layers = self.art.conv.layers
        return conv_work(
            self.presentation_steps(steps),
            self.in_features,
            0 if self.competitive else self.label_code.width,
            [int(np.prod(la.map_shape)) for la in layers],
            [int(np.prod(la.out_shape)) for la in layers],
            [int(np.prod(la.weight_shape()[1:]) * la.map_shape[1] * la.map_shape[2]) for la in layers],
            self.chunk,
            CONV_PASS,
            not self.competitive,
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
        """Spike counts of every unit of every layer with ``labels`` shown, ``[N, latent_width]``."""
        image, code = self.draw(x, labels, np.random.default_rng(seed))
        counts = present_conv(
            image, code, self.kernels, self.label_weights, self.layouts, self.dynamics, self.art.conv.over, "numpy",
            counts=True,
        )  # fmt: skip
        return np.concatenate([c.reshape(c.shape[0], -1) for c in counts], axis=1)

    # -- learning -----------------------------------------------------------------------------

    def learn(
        self, x: np.ndarray, labels: np.ndarray, positive: np.ndarray, seed: int | None = 0, eta: float | None = None
    ) -> np.ndarray:
        """One Hebbian update from images ``[N, H * W]`` shown with ``labels`` ``[N]``;
        ``positive`` ``[N]`` says whether each label is the true one. Returns the summed
        log-odds of the presentation (its activities while learning). A competitive net
        learns from true labels only (``positive`` all 1, else ``ValueError``) and returns the
        margin of each label's summed log-probability over the best other class."""
        x = check_images(x, self.in_features)
        y = check_targets(positive, x.shape[0])
        if self.competitive:  # checked before any draw: a refused update changes nothing
            y = competitive_targets(self.label_code, labels, y)
        image, code = self.draw(x, labels, np.random.default_rng(seed))
        return self._learn(image, code, y, eta)

    def learn_spikes(self, image: np.ndarray, code: np.ndarray, y: np.ndarray, eta: float | None = None) -> np.ndarray:
        """Present image spikes ``[T, N, 1, H, W]`` and label spikes ``[T, N, L]`` and learn
        towards ``y`` ``[N]`` (1 positive; a competitive net: the true classes, with label
        spikes ``[T, N, 0]``), as ``SpikingConvTrainer.train_batch`` does: the weights and
        eligibility change in place. Returns the summed log-odds ``[N]`` (competitive: the
        class margin, > 0 where the true class scored highest)."""
        image = np.asarray(image, dtype=np.float32)
        code = np.asarray(code, dtype=np.float32)
        in_shape = tuple(self.art.conv.layers[0].in_shape)
        if image.ndim != 5 or image.shape[2:] != in_shape:
            raise ValueError(
                f"image spikes must have shape [T, N, {', '.join(map(str, in_shape))}], got {list(image.shape)}"
            )
        t, n = image.shape[:2]
        width = self.label_weights[0].shape[0]
        if code.shape != (t, n, width):
            # one label draw per image: learning has no [T, 1, L] shared draw, as scoring has
            raise ValueError(f"label spikes must have shape [{t}, {n}, {width}] (T, N, L), got {list(code.shape)}")
        if n == 0:
            raise ValueError("learning needs at least one sample, got none")
        if self.competitive:
            # y holds classes here, not 0/1 targets: a float array would be taken for classes
            if not np.issubdtype(np.asarray(y).dtype, np.integer):
                raise ValueError("a competitive model learns towards classes: y must be integer class labels")
            y = self.label_code.check_labels(y, n)
        else:
            y = check_targets(y, n)
        return self._learn(check_spikes(image, "image spikes"), check_spikes(code, "label spikes"), y, eta)

    def _learn(self, image: np.ndarray, code: np.ndarray, y: np.ndarray, eta: float | None) -> np.ndarray:
        """:meth:`learn_spikes` for checked spikes and targets (classes, for a competitive net)."""
        t = image.shape[0]
        self.art.check_learning(t)
        spec = self.learn_spec
        eta = check_eta(eta, spec.eta)
        n = self.num_layers
        learns = [(y, spec, eta, e_w, e_b) for e_w, e_b in zip(self.eligibility[:n], self.eligibility[n:])]
        acts = present_conv(
            image, code, self.kernels, self.label_weights, self.layouts, self.dynamics, self.art.conv.over, "numpy",
            learns,
        )  # fmt: skip
        if self.competitive:
            return class_margin(self._class_scores(acts), y)
        return self._score(acts)
