"""What both ONNX graphs share: a small node builder, the goodness and log-odds nodes of a
layer, the ``spikingjelly_ff`` metadata a runtime reads, and the checked, atomic save.

Writing the graph by hand keeps the arithmetic identical to ``dynamics.py`` (Mul, then Add;
no fused ops), which is what lets onnxruntime reproduce the torch spikes exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from spikingjelly_ff.functional.params import HebbianParams
from spikingjelly_ff.runtime.files import write_atomic
from spikingjelly_ff.runtime.onnx_checksum import stamp_digest
from spikingjelly_ff.runtime.onnx_meta import META_KEY, OnnxLayer, OnnxMeta

__all__ = ["OPSET", "Graph", "layer_logit_and_goodness", "save_model", "set_meta"]

OPSET = 18


class Graph:
    """Small builder: unique names, constants, nodes."""

    def __init__(self, prefix: str = "") -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0
        self.prefix = prefix  # keeps a Scan body's names apart from the outer graph's

    def name(self, base: str) -> str:
        self.count += 1
        return f"{self.prefix}{base}_{self.count}"

    def const(self, value, base: str = "c", dtype=np.float32) -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), n))
        return n

    def op(
        self,
        op_type: str,
        inputs: list[str],
        base: str | None = None,
        outputs: int = 1,
        out: str | None = None,
        **attrs,
    ):
        names = [out] if out else [self.name(base or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, **attrs))
        return names[0] if outputs == 1 else names


def _goodness(g: Graph, act: str, kind: str, width: int) -> str:
    """``[B, H]`` -> ``[B]``."""
    axes = g.const([-1], "axes", np.int64)
    if kind == "sum_squares":
        return g.op("ReduceSumSquare", [act, axes], keepdims=0)
    if kind == "mean_squares":
        return g.op("Div", [g.op("ReduceSumSquare", [act, axes], keepdims=0), g.const(float(width))])
    return g.op("ReduceL1", [act, axes], keepdims=0)


def _halves(g: Graph, act: str, width: int) -> tuple[str, str]:
    half = width // 2
    ax = g.const([1], "ax", np.int64)
    pos = g.op("Slice", [act, g.const([0], "s", np.int64), g.const([half], "e", np.int64), ax])
    neg = g.op("Slice", [act, g.const([half], "s", np.int64), g.const([width], "e", np.int64), ax])
    return pos, neg


def layer_logit_and_goodness(g: Graph, act: str, width: int, prob: dict, goodness: str) -> tuple[str, str]:
    """(log-odds ``[B]``, goodness score ``[B]``) of one layer's activity ``[B, H]``."""
    kind = prob["kind"]
    if kind == "sigmoid":
        gg = _goodness(g, act, goodness, width)
        logit = g.op("Mul", [g.op("Sub", [gg, g.const(prob["theta"])]), g.const(prob["alpha"])])
        return logit, gg
    pos, neg = _halves(g, act, width)
    gp = _goodness(g, pos, goodness, width // 2)
    gn = _goodness(g, neg, goodness, width // 2)
    diff = g.op("Sub", [gp, gn])
    if kind == "symmetric":
        eps = g.const(prob["eps"])
        logit = g.op("Sub", [g.op("Log", [g.op("Add", [gp, eps])]), g.op("Log", [g.op("Add", [gn, eps])])])
    else:
        logit = g.op("Mul", [g.op("Sub", [diff, g.const(prob["theta"])]), g.const(prob["alpha"])])
    return logit, diff


def save_model(model: onnx.ModelProto, out: str | os.PathLike) -> Path:
    """Check ``model``, stamp its checksum (``runtime.onnx_checksum``) and write it atomically."""
    onnx.checker.check_model(model, full_check=True)
    stamp_digest(model)
    return write_atomic(out, lambda tmp: onnx.save(model, str(tmp)))


def set_meta(
    model: onnx.ModelProto,
    net,
    kind: str,
    weight_names: list[str] | None = None,
    hebbian: HebbianParams | None = None,
) -> None:
    """Settings a runtime needs to keep learning travel with the graph (model property
    ``spikingjelly_ff``, JSON: :class:`~spikingjelly_ff.runtime.onnx_meta.OnnxMeta`);
    ``hebbian`` None: the default learning settings."""
    from spikingjelly_ff import __version__

    analog = kind == "analog"
    layers = None
    if analog:
        layers = tuple(
            OnnxLayer(name, bool(layer.normalize_input), layer.synapse.bias is not None)
            for name, layer in zip(weight_names or [], net.layers)
        )
    meta = OnnxMeta(
        kind=kind,
        num_classes=net.num_classes,
        in_features=net.in_features,
        score=net.score_kind,
        score_layers=tuple(net.score_layers),
        goodness=net.goodness_kind,
        probability=net.probability,
        label_code=net.embedding.label_code,
        library_version=__version__,
        layers=layers,
        hebbian=hebbian or HebbianParams(),
        shift_views=net.shift_views if analog else 0,
        image_shape=tuple(net.image_shape) if analog and net.image_shape else None,
    )
    helper.set_model_props(model, {META_KEY: meta.to_json()})
