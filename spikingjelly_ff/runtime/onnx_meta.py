"""Settings an ONNX export carries (model property ``spikingjelly_ff``, JSON), typed.

Written by ``export/onnx`` and read by the torch-free :class:`~spikingjelly_ff.runtime.analog.AnalogModel`.
The JSON keys are those of every export so far, so older files load unchanged:
``format``, ``format_version``, ``kind``, ``num_classes``, ``in_features``, ``score``,
``score_layers``, ``goodness``, ``probability``, ``embedding`` (kind, bits, scale, patterns),
``library_version``; analog exports add ``layers``, ``hebbian``, ``shift_views``, ``image_shape``,
and conv exports (``export/onnx/conv.py``) ``conv``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from spikingjelly_ff.functional.conv import (
    check_conv_settings,
    check_map_shape,
    conv_output_size,
    goodness_groups,
    pooled_shape,
)
from spikingjelly_ff.functional.labels import LabelCode
from spikingjelly_ff.functional.params import HebbianParams
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.functional.scores import check_scoring

__all__ = ["META_KEY", "OnnxConv", "OnnxConvLayer", "OnnxLayer", "OnnxMeta", "load_onnx_meta"]

META_KEY = "spikingjelly_ff"  # the ONNX model property holding the JSON
FORMAT = "spikingjelly-ff/onnx"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class OnnxLayer:
    """One analog layer of the graph: its weight initializer (``[D, H]``), whether its input is
    length-normalised, whether it has a bias."""

    weight: str
    normalize_input: bool
    bias: bool = False


@dataclass(frozen=True)
class OnnxConvLayer:
    """One conv layer of a conv export (the matching :class:`OnnxLayer` names its kernel
    ``[C, I, KH, KW]``, stored in torch's layout): square ``kernel``, ``stride`` and zero
    ``padding``; ``pool`` None, "max" or "avg" over ``pool_size`` windows (stride = window)
    after the layer; ``in_shape`` ``(I, H, W)`` and ``map_shape`` ``(C, OH, OW)`` (before the
    pooling); ``label_weight`` the initializer of the label weights ``[L, C, OH, OW]`` (None
    without label maps)."""

    kernel: int
    stride: int
    padding: int
    pool: str | None
    pool_size: int
    in_shape: tuple[int, int, int]
    map_shape: tuple[int, int, int]
    label_weight: str | None = None

    def __post_init__(self) -> None:
        # bad settings in a file's metadata fail on load, naming the setting (not in the
        # runtime's convolution or the server's cost estimate)
        check_conv_settings(self.kernel, self.stride, self.padding, self.pool, self.pool_size)
        object.__setattr__(self, "in_shape", check_map_shape(self.in_shape, "in_shape"))
        object.__setattr__(self, "map_shape", check_map_shape(self.map_shape, "map_shape"))


@dataclass(frozen=True)
class OnnxConv:
    """What a conv export adds: the goodness region ``over`` ("map", "location" or "group:K";
    layers after the first length-normalise their input over it) and the conv layers."""

    over: str
    layers: tuple[OnnxConvLayer, ...]

    def to_dict(self) -> dict:
        return {"over": self.over, "layers": [asdict(layer) for layer in self.layers]}

    @classmethod
    def from_dict(cls, d: dict, split: bool = False) -> OnnxConv:
        """``split``: the probability splits each goodness entry (a channel group must then
        hold an even number of channels)."""
        goodness_groups(d["over"])
        try:
            conv = cls(over=d["over"], layers=tuple(OnnxConvLayer(**layer) for layer in d["layers"]))
        except TypeError as exc:  # a setting missing, unknown, or layers not a list of objects
            raise ValueError(f"invalid conv layer settings: {exc}") from exc
        # a channel-group region must split every layer's channels (fails on load, not in a reshape)
        goodness_groups(conv.over, [layer.map_shape[0] for layer in conv.layers], split)
        return conv


@dataclass(frozen=True)
class OnnxMeta:
    """An export's settings. ``layers``, ``shift_views`` and ``image_shape`` are analog-only
    (``layers`` None for a spiking export); ``hebbian`` is the default on-line learning;
    ``conv`` is set for a conv export (its ``layers`` then name the conv kernels)."""

    kind: str
    num_classes: int
    in_features: int
    score: str
    score_layers: tuple[int, ...]
    goodness: str
    probability: Probability
    label_code: LabelCode
    library_version: str = ""
    layers: tuple[OnnxLayer, ...] | None = None
    hebbian: HebbianParams = field(default_factory=HebbianParams)
    shift_views: int = 0
    image_shape: tuple[int, int] | None = None
    conv: OnnxConv | None = None

    def __post_init__(self) -> None:
        self.hebbian.require_step("an ONNX model (one delta per batch)")
        if self.layers is not None and self.conv is not None and len(self.layers) != len(self.conv.layers):
            raise ValueError(f"{len(self.layers)} weights name {len(self.conv.layers)} conv layers")
        count = len(self.conv.layers) if self.conv is not None else len(self.layers or ())
        if count:  # a spiking export names no layers here: its artefact checks its own
            object.__setattr__(self, "score_layers", check_scoring(self.score, self.goodness, self.score_layers, count))

    def weight_names(self) -> tuple[str, ...]:
        """The initializers a runtime learns, in the order of its ``weights``: every layer's
        weight, then (conv exports) every layer's label weights."""
        names = tuple(layer.weight for layer in self.layers or ())
        if self.conv is not None:
            names += tuple(c.label_weight for c in self.conv.layers if c.label_weight is not None)
        return names

    def check_weights(self, shapes: list[tuple[int, ...]]) -> None:
        """ValueError unless weights of ``shapes`` (in the order of :meth:`weight_names`, in the
        runtime's layout: dense ``[H, D]``, conv kernels ``[C, I, K, K]``, label weights
        ``[L, C, OH, OW]``) fit these settings: a file whose weights and metadata disagree
        fails on load, not in its first update (the graph itself may not read every shape)."""
        shapes = [tuple(int(v) for v in s) for s in shapes]
        if self.conv is None:
            width = self.label_code.input_width(self.in_features)
            for i, shape in enumerate(shapes):
                if len(shape) != 2 or shape[1] != width or shape[0] < 1:
                    raise ValueError(f"layer {i}: weight of shape {list(shape)}, expected [H, {width}]")
                width = shape[0]
            return
        competitive = self.probability.competitive
        width = self.in_features if competitive else self.label_code.input_width(self.in_features)
        label_width = 0 if competitive else self.label_code.width
        kernels, labels = shapes[: len(self.conv.layers)], iter(shapes[len(self.conv.layers) :])
        layers = self.conv.layers
        if int(np.prod(layers[0].in_shape)) != width:
            raise ValueError(f"conv layer 0 reads {layers[0].in_shape}, the embedded image has {width} values")
        shape = layers[0].in_shape
        for i, (spec, kernel) in enumerate(zip(layers, kernels)):
            if spec.in_shape != shape:
                raise ValueError(f"conv layer {i} reads {spec.in_shape}, the previous layer gives {shape}")
            hw = tuple(conv_output_size(v, spec.kernel, spec.stride, spec.padding) for v in shape[1:])
            if spec.map_shape[1:] != hw:
                raise ValueError(f"conv layer {i}: map shape {spec.map_shape} does not follow from its input {shape}")
            want = (spec.map_shape[0], shape[0], spec.kernel, spec.kernel)
            if kernel != want:
                raise ValueError(f"conv layer {i}: kernel of shape {list(kernel)}, expected {list(want)}")
            if spec.label_weight is not None and next(labels) != (label_width, *spec.map_shape):
                raise ValueError(f"conv layer {i}: label weight of shape other than {[label_width, *spec.map_shape]}")
            shape = pooled_shape(spec.map_shape, spec.pool, spec.pool_size)

    def to_dict(self) -> dict:
        """The JSON object, keys in the order exports have always written them."""
        code = self.label_code
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "num_classes": self.num_classes,
            "in_features": self.in_features,
            "score": self.score,
            "score_layers": list(self.score_layers),
            "goodness": self.goodness,
            "probability": self.probability.to_dict(),
            "embedding": {
                "kind": code.kind,
                "bits": code.width if code.kind == "pattern" else 0,
                "scale": code.scale,
                "patterns": None if code.patterns is None else code.patterns.astype(int).tolist(),
            },
            "library_version": self.library_version,
        }
        if self.layers is not None:
            info["layers"] = [asdict(layer) for layer in self.layers]
            info["hebbian"] = self.hebbian.to_dict()
            info["shift_views"] = self.shift_views  # scores and label sum 4 * shift_views + 1 views
            info["image_shape"] = list(self.image_shape) if self.image_shape else None
        if self.conv is not None:
            info["conv"] = self.conv.to_dict()
        return info

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, meta: dict) -> OnnxMeta:
        emb = meta["embedding"]
        patterns = emb.get("patterns")
        code = LabelCode(
            emb["kind"], int(meta["num_classes"]), None if patterns is None else np.asarray(patterns), emb["scale"]
        )
        layers = meta.get("layers")
        shape = meta.get("image_shape")
        prob = Probability(**meta["probability"])
        conv = None if meta.get("conv") is None else OnnxConv.from_dict(meta["conv"], prob.split)
        if prob.competitive and (conv is None or conv.over != f"group:{int(meta['num_classes'])}"):
            raise ValueError(
                "a competitive probability needs conv layers with one channel group per class "
                f"(over 'group:{int(meta['num_classes'])}')"
            )
        if prob.competitive and any(layer.label_weight is not None for layer in conv.layers):
            raise ValueError("a competitive conv net has no label weights")
        return cls(
            kind=meta["kind"],
            num_classes=int(meta["num_classes"]),
            in_features=int(meta["in_features"]),
            score=meta["score"],
            score_layers=tuple(meta["score_layers"]),
            goodness=meta["goodness"],
            probability=prob,
            label_code=code,
            library_version=str(meta.get("library_version", "")),
            layers=None if layers is None else tuple(OnnxLayer(**layer) for layer in layers),
            hebbian=HebbianParams(**(meta.get("hebbian") or {})),
            shift_views=int(meta.get("shift_views") or 0),
            image_shape=None if not shape else tuple(shape),
            conv=conv,
        )

    @classmethod
    def from_json(cls, text: str) -> OnnxMeta:
        return cls.from_dict(json.loads(text))


def load_onnx_meta(model, kind: str = "analog") -> OnnxMeta:
    """The settings of a loaded ``onnx.ModelProto``, or a ValueError if it holds none or a
    model of another ``kind``."""
    props = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in props:
        raise ValueError(f"this ONNX file was not exported by spikingjelly-ff (no {META_KEY} metadata)")
    try:
        raw = json.loads(props[META_KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(f"the export's {META_KEY} metadata is not JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"the export's {META_KEY} metadata is not a JSON object")
    if raw.get("kind") != kind:
        raise ValueError(f"expected an {kind} model, the file holds a {raw.get('kind')!r} model")
    try:
        meta = OnnxMeta.from_dict(raw)
    except (KeyError, TypeError, AttributeError) as exc:  # a field missing or of another type
        raise ValueError(f"the export's {META_KEY} metadata is damaged ({type(exc).__name__}: {exc})") from exc
    if meta.conv is None and not meta.layers:
        raise ValueError(f"the export's {META_KEY} metadata names no layers")
    return meta
