"""Settings an ONNX export carries (model property ``spikingjelly_ff``, JSON), typed.

Written by ``export/onnx`` and read by the torch-free :class:`~spikingjelly_ff.runtime.analog.AnalogModel`.
The JSON keys are those of every export so far, so older files load unchanged:
``format``, ``format_version``, ``kind``, ``num_classes``, ``in_features``, ``score``,
``score_layers``, ``goodness``, ``probability``, ``embedding`` (kind, bits, scale, patterns),
``library_version``; analog exports add ``layers``, ``hebbian``, ``shift_views``, ``image_shape``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from spikingjelly_ff.functional.labels import LabelCode
from spikingjelly_ff.functional.params import HebbianParams
from spikingjelly_ff.functional.probability import Probability

__all__ = ["META_KEY", "OnnxLayer", "OnnxMeta", "load_onnx_meta"]

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
class OnnxMeta:
    """An export's settings. ``layers``, ``shift_views`` and ``image_shape`` are analog-only
    (``layers`` None for a spiking export); ``hebbian`` is the default on-line learning."""

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
            "probability": asdict(self.probability),
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
        return cls(
            kind=meta["kind"],
            num_classes=int(meta["num_classes"]),
            in_features=int(meta["in_features"]),
            score=meta["score"],
            score_layers=tuple(meta["score_layers"]),
            goodness=meta["goodness"],
            probability=Probability(**meta["probability"]),
            label_code=code,
            library_version=str(meta.get("library_version", "")),
            layers=None if layers is None else tuple(OnnxLayer(**layer) for layer in layers),
            hebbian=HebbianParams(**(meta.get("hebbian") or {})),
            shift_views=int(meta.get("shift_views") or 0),
            image_shape=None if not shape else tuple(shape),
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
    raw = json.loads(props[META_KEY])
    if raw.get("kind") != kind:
        raise ValueError(f"expected an {kind} model, the file holds a {raw.get('kind')!r} model")
    return OnnxMeta.from_dict(raw)
