"""Inference engines: run a batch of images through one published version of a model.

A :class:`Published` version is immutable once inference can see it (learning works on a
copy and publishes a new object), so a batch always runs on one whole weight set.

- :class:`AnalogEngine`: the exported ONNX graph in onnxruntime (the weights of each version
  fed as graph inputs, prepared once per version), or for a small batch of a one-layer
  export the compiled kernel that computes the same outputs (``runtime.analog_compiled``).
- :class:`SpikeEngine`: the torch-free spiking runtime (numpy: ``SpikeModel`` or
  ``SpikeConvModel``), with per-request ``seed`` and ``steps``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from spikingjelly_ff.runtime.protocol import RuntimeModel

if TYPE_CHECKING:
    from spikingjelly_ff.runtime import AnalogModel, SpikeModel

__all__ = [
    "AnalogEngine",
    "Engine",
    "InferOptions",
    "InferPlan",
    "OutputSpec",
    "Published",
    "SpikeEngine",
    "make_engine",
]


@dataclass(frozen=True, slots=True)
class Published:
    """One version of a model's weights as inference sees it. ``version`` counts accepted
    learning updates (0 = the artefact); ``model`` is never mutated after publication;
    ``feeds`` are engine-specific prepared inputs."""

    version: int
    model: RuntimeModel
    feeds: Any = None


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """An output tensor: protocol datatype and shape (-1 = the batch dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class InferOptions:
    """Per-request knobs. ``seed``/``steps`` only matter for spiking models; ``latent`` asks
    for the ``latent`` output. Requests with equal options may share a batch."""

    seed: int | None = None
    steps: int | None = None
    latent: bool = False


@dataclass(frozen=True, slots=True)
class InferPlan:
    """What one inference request asks for: ``outputs`` names in response order,
    ``classify`` output name -> top-k (classification extension), ``typed`` contents."""

    opts: InferOptions
    outputs: tuple[str, ...]
    classify: dict | None = None
    typed: bool = False


class Engine:
    """Common interface of the engines. ``kind`` is the runtime model's: "analog" | "spiking"."""

    kind: str = ""
    platform: str = ""
    outputs: dict[str, OutputSpec]
    #: whether requests may be batched by default, and the default largest batch
    default_max_batch: int = 1
    #: every batch runs on worker threads (True), or small ones inline on the event loop (False)
    threaded: bool = False
    #: estimated multiply-accumulates per image (what an inline batch costs the event loop)
    row_macs: int = 0
    #: time steps a spiking model runs unless a request asks for others (0: not spiking)
    default_steps: int = 0

    def __init__(self, model: RuntimeModel) -> None:
        self.num_classes = int(model.num_classes)
        self.in_features = int(model.in_features)

    def inline_rows(self, max_macs: int | None) -> int:
        """Largest batch (images) that may run on the event loop: the batches whose estimated
        cost, images x :attr:`row_macs`, is at most ``max_macs`` (None: every batch)."""
        if self.threaded:
            return 0
        if max_macs is None or self.row_macs <= 0:
            return sys.maxsize
        return max(0, int(max_macs) // self.row_macs)

    def prepare(self, model: RuntimeModel) -> Any:
        """Engine-specific per-version data (computed when a version is published)."""
        return None

    def publish(self, version: int, model: RuntimeModel) -> Published:
        return Published(version, model, self.prepare(model))

    def run(self, pub: Published, x: np.ndarray, opts: InferOptions) -> dict[str, np.ndarray]:
        """Outputs for images ``x`` ``[N, in_features]`` float32 in [0, 1] (already validated)."""
        raise NotImplementedError

    def image_shape(self) -> tuple[int, ...] | None:
        return None


_ORT_TYPES = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(double)": "FP64", "tensor(int32)": "INT32"}


class AnalogEngine(Engine):
    """An exported analog model: its graph in onnxruntime, or the compiled scoring for a small
    batch of a one-layer export (``AnalogModel.forward`` picks)."""

    kind = "analog"
    platform = "onnxruntime_onnx"
    default_max_batch = 64
    threaded = False

    def __init__(self, model: AnalogModel) -> None:
        super().__init__(model)
        self.outputs = {}
        for o in model.graph.session.get_outputs():
            shape = tuple(d if isinstance(d, int) else -1 for d in o.shape)
            self.outputs[o.name] = OutputSpec(o.name, _ORT_TYPES.get(o.type, "FP32"), shape)
        self.row_macs = analog_row_macs(model)

    def prepare(self, model: AnalogModel) -> dict[str, np.ndarray]:
        # what the weights alone decide (the graph's weight feeds, the compiled kernel's
        # terms) is computed once per version, when it is published, not on a call; the
        # feeds are kept with the version for inspection (the model runs on these arrays)
        model.prepare()
        return model.weight_feeds()

    def run(self, pub: Published, x: np.ndarray, opts: InferOptions) -> dict[str, np.ndarray]:
        return pub.model.forward(x)


def analog_row_macs(model: AnalogModel) -> int:
    """Multiply-accumulates per image of an analog export, over ``4 * shift_views + 1`` views.
    Dense (weights ``[H, D]`` per layer): the first layer once per view, each later layer once
    per label and view (every label is scored). Conv (:func:`conv_row_macs`): every layer once
    per label and view (once per view for a competitive net, which sees no label). An estimate
    (elementwise work is left out) that orders models by cost: 0.2 M for the tests' 784 -> 128
    -> 64 net, 208 M for the shipped config analog-deep (two 2000-unit layers, five views)."""
    settings = model.settings
    views = 4 * settings.shift_views + 1
    if settings.conv is not None:
        # every label is a pass, but a competitive net's one pass scores every class
        passes = 1 if settings.probability.competitive else int(model.num_classes)
        return views * passes * conv_row_macs(settings.conv.layers)
    weights = list(model.weights)
    first = int(weights[0].size) if weights else 0
    later = sum(int(w.size) for w in weights[1:]) * int(model.num_classes)
    return views * (first + later)


def conv_row_macs(layers) -> int:
    """Multiply-accumulates of one pass of one embedded image through conv layers (the
    metadata's ``OnnxConvLayer``): each output location of a ``[C, OH, OW]`` map takes
    ``I * K^2`` per channel, and each unit one add of its label term (``code @ B`` depends on
    the weights alone: the graph computes it once per weight version, not per image)."""
    total = 0
    for layer in layers:
        c, oh, ow = layer.map_shape
        units = c * oh * ow
        total += units * layer.in_shape[0] * layer.kernel**2
        if layer.label_weight is not None:
            total += units
    return total


class SpikeEngine(Engine):
    """The numpy spiking runtime; stochastic spike encoding seeded per request."""

    kind = "spiking"
    platform = "spikingjelly_ff_spike"
    default_max_batch = 1  # a batch shares one random stream: only batch when asked to
    threaded = True

    def __init__(self, model: SpikeModel) -> None:
        super().__init__(model)
        self.default_steps = int(model.steps)
        c = self.num_classes
        # a conv model's weights are kernels and label weights: it states its latent width
        latent = int(getattr(model, "latent_width", 0)) or int(sum(w.shape[0] for w in model.weights))
        self.outputs = {
            "scores": OutputSpec("scores", "FP32", (-1, c)),
            "probability": OutputSpec("probability", "FP32", (-1, c)),
            "label": OutputSpec("label", "INT64", (-1,)),
            "latent": OutputSpec("latent", "FP32", (-1, latent)),
        }
        self._image_shape = tuple(model.art.image_shape) if model.art.image_shape else None

    def image_shape(self) -> tuple[int, ...] | None:
        return self._image_shape

    def run(self, pub: Published, x: np.ndarray, opts: InferOptions) -> dict[str, np.ndarray]:
        model = pub.model
        if opts.steps is not None and opts.steps != self.default_steps:
            # a private copy that runs another number of steps (the published model is shared);
            # copying the weights costs far less than the steps x labels presentations it runs
            model = model.with_steps(opts.steps)
        seed = 0 if opts.seed is None else opts.seed
        scores = model.scores(x, seed=seed)
        label = scores.argmax(axis=1).astype(np.int64)
        out = {
            "scores": scores.astype(np.float32, copy=False),
            "probability": model.probabilities(scores).astype(np.float32),
            "label": label,
        }
        if opts.latent:
            out["latent"] = model.latent(x, label, seed=seed).astype(np.float32, copy=False)
        return out


_ENGINES: dict[str, type[Engine]] = {"analog": AnalogEngine, "spiking": SpikeEngine}


def make_engine(model: RuntimeModel) -> Engine:
    """The engine for a loaded runtime model, by its :attr:`~RuntimeModel.kind`."""
    engine = _ENGINES.get(model.kind)
    if engine is None:
        raise ValueError(f"no engine for models of kind {model.kind!r} (kinds: {', '.join(_ENGINES)})")
    return engine(model)
