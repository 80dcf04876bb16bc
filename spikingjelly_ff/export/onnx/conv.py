"""ONNX graph of an analog conv FF network (``AnalogConvFFNet``): ``images [N, H*W]`` ->
``scores [N, C]``, ``probability [N, C]`` (sigmoid of the summed log-odds), ``goodness
[N, C, L]`` (each layer's goodness score: G, or G+ - G- when split, summed over the map's
locations for ``over="location"`` and over its channel groups for ``"group:K"``) and
``label [N]``, the outputs of the dense export.

Every label is written into the first C pixels (label-major ``[C * N, H*W]``, as
``embedding.all_labels``), the batch is reshaped to ``[C * N, 1, H, W]`` and each layer runs
x_hat -> Conv -> + code @ B -> Relu (the activity, scored per goodness entry as the net
does) -> pool (the next layer's input). The label term ``code @ B`` depends on the weights
alone, so the runtime computes it once per weight version (``runtime.weight_folding``).
Kernels ``[C, I, KH, KW]`` and label weights ``[L, C, OH, OW]`` are stored in torch's layout;
the ``conv`` metadata (``runtime.onnx_meta.OnnxConv``) names them. With ``shift_views`` the
graph scores the translated views too and ``scores``/``label`` sum over them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from spikingjelly_ff.export.onnx.analog import _embed_all_labels, _views
from spikingjelly_ff.export.onnx.graph import (
    OPSET,
    Graph,
    _goodness,
    layer_logit_and_goodness,
    save_model,
    set_meta,
)
from spikingjelly_ff.functional.conv import goodness_groups
from spikingjelly_ff.functional.params import HebbianParams
from spikingjelly_ff.functional.views import view_offsets
from spikingjelly_ff.nn.conv_models import AnalogConvFFNet
from spikingjelly_ff.runtime.onnx_meta import META_KEY, OnnxConv, OnnxConvLayer, OnnxMeta

__all__ = ["conv_to_onnx"]

_POOL_OPS = {"max": "MaxPool", "avg": "AveragePool"}


def _array(p) -> np.ndarray:
    return p.detach().cpu().numpy().astype(np.float32)


def _normalize(g: Graph, x: str, over: str, shape: tuple[int, int, int]) -> str:
    """``x / (||x|| + 1e-8)`` over each sample's map, each location's channels or each channel
    group of ``x`` ``[B, *shape]`` (``functional.conv.length_normalize_map``)."""
    k = goodness_groups(over, shape[:1])
    if k is not None:  # [B, K, C/K * H * W]: one norm per group, then back to maps
        x = g.op("Reshape", [x, g.const([-1, k, int(np.prod(shape)) // k], "shape", np.int64)])
    axes = [1, 2, 3] if over == "map" else [1] if over == "location" else [2]
    norm = g.op("Sqrt", [g.op("ReduceSumSquare", [x, g.const(axes, "axes", np.int64)], keepdims=1)])
    out = g.op("Div", [x, g.op("Add", [norm, g.const(1e-8)])])
    return out if k is None else g.op("Reshape", [out, g.const([-1, *shape], "shape", np.int64)])


def _label_term(g: Graph, net: AnalogConvFFNet, z: str, b: str, shape: tuple[int, int, int]) -> str:
    """``z [C*N, ch, OH, OW]`` plus every label's term ``code @ B`` (``b`` ``[L, ch, OH, OW]``);
    the ``[C, ch*OH*OW]`` terms depend on the weights alone."""
    c = net.num_classes
    codes = net.embedding.label_code.codes()  # [C, L], scale applied: the label pixels' values
    flat = g.op("Reshape", [b, g.const([codes.shape[1], int(np.prod(shape))], "shape", np.int64)])
    term = g.op("MatMul", [g.const(codes, "codes"), flat])  # [C, ch*OH*OW]
    term = g.op("Reshape", [term, g.const([c, 1, *shape], "shape", np.int64)])
    by_label = g.op("Reshape", [z, g.const([c, -1, *shape], "shape", np.int64)])
    return g.op("Reshape", [g.op("Add", [by_label, term]), g.const([-1, *shape], "shape", np.int64)])


def _entries_score(g: Graph, net: AnalogConvFFNet, act: str, shape: tuple[int, int, int]) -> tuple[str, str]:
    """(log-odds ``[B]``, goodness score ``[B]``) of the activity ``[B, ch, OH, OW]``: the
    dense nodes on each goodness entry's units (``conv_models.entry_units``), summed over the
    entries of a sample for ``over="location"`` and ``"group:K"``."""
    ch, oh, ow = shape
    settings = asdict(net.probability)
    if net.over == "map":  # channel-major units: a split's first half is the first ch // 2 channels
        units = g.op("Reshape", [act, g.const([-1, ch * oh * ow], "shape", np.int64)])
        return layer_logit_and_goodness(g, units, ch * oh * ow, settings, net.goodness_kind)
    k = goodness_groups(net.over, (ch,), net.probability.split)
    if k is None:  # location: each location's channels
        units = g.op("Reshape", [g.op("Transpose", [act], perm=[0, 2, 3, 1]), g.const([-1, ch], "shape", np.int64)])
        width, entries = ch, oh * ow
    else:  # consecutive channels, channel-major: a split's first half is a group's first ch // (2k)
        units = g.op("Reshape", [act, g.const([-1, ch // k * oh * ow], "shape", np.int64)])
        width, entries = ch // k * oh * ow, k
    logit, good = layer_logit_and_goodness(g, units, width, settings, net.goodness_kind)  # [B*entries] each
    axes = g.const([1], "axes", np.int64)

    def per_sample(t: str) -> str:  # [B*entries] -> [B]: summed over the sample's entries
        by_sample = g.op("Reshape", [t, g.const([-1, entries], "shape", np.int64)])
        return g.op("ReduceSum", [by_sample, axes], keepdims=0)

    return per_sample(logit), per_sample(good)


def _class_scores(g: Graph, net: AnalogConvFFNet, act: str, shape: tuple[int, int, int]) -> tuple[str, str]:
    """(class log-probabilities ``[B, C]``, class goodnesses ``[B, C]``) of a competitive
    net's activity ``[B, ch, OH, OW]``: log softmax of log(G_c + eps) / T over its channel
    groups (``functional.probability.competitive_log_probs``)."""
    ch, oh, ow = shape
    c, prob = net.num_classes, net.probability
    width = ch // c * oh * ow
    units = g.op("Reshape", [act, g.const([-1, c, width], "shape", np.int64)])
    good = _goodness(g, units, net.goodness_kind, width)  # [B, C]
    z = g.op("Div", [g.op("Log", [g.op("Add", [good, g.const(prob.eps)])]), g.const(prob.temperature)])
    return g.op("LogSoftmax", [z], axis=1), good


def conv_to_onnx(
    net: AnalogConvFFNet, out: str | os.PathLike, latent: bool = False, hebbian: HebbianParams | None = None
) -> Path:
    """Export an analog conv FF network (see the module docstring); ``hebbian`` (eta,
    eligibility_tau) sets the runtime's on-line learning defaults (None: the defaults). A conv
    net has no ``latent`` output (it has no linear readout)."""
    if latent:
        raise ValueError("a conv FF net has no latent output (no linear readout); export it without latent")
    g = Graph()
    c = net.num_classes
    views = view_offsets(net.shift_views)
    src = _views(g, net, "images", views) if len(views) > 1 else "images"  # [V * N, H*W]
    h, w = net._hw()
    embedded = src if net.competitive else _embed_all_labels(g, net, src)  # a competitive net sees no label
    x = g.op("Reshape", [embedded, g.const([-1, 1, h, w], "shape", np.int64)])
    shapes = net.map_shapes()
    in_shapes = [(1, h, w)]
    weight_names, logits, goods, conv_layers = [], [], [], []
    for i, (layer, spec, shape) in enumerate(zip(net.layers, net.specs, shapes)):
        if layer.normalize_input is not None:
            x = _normalize(g, x, layer.normalize_input, in_shapes[i])
        weight_names.append(g.const(_array(layer.weight), f"w{i}"))
        inputs = [x, weight_names[-1]]
        if layer.synapse.bias is not None:
            inputs.append(g.const(_array(layer.synapse.bias), f"b{i}"))
        z = g.op(
            "Conv",
            inputs,
            kernel_shape=[spec.kernel, spec.kernel],
            strides=[spec.stride, spec.stride],
            pads=[spec.padding] * 4,
        )
        label_name = None
        if layer.label_bias is not None:
            label_name = g.const(_array(layer.label_bias), f"label_w{i}")
            z = _label_term(g, net, z, label_name, shape)
        act = g.op("Relu", [z])
        lg, gd = (_class_scores if net.competitive else _entries_score)(g, net, act, shape)
        logits.append(lg)
        goods.append(gd)
        x = act
        ch, oh, ow = shape
        if spec.pool is not None:
            in_shapes.append((ch, oh // spec.pool_size, ow // spec.pool_size))
            if i + 1 < len(shapes):  # the last layer's pooled output feeds nothing
                k = [spec.pool_size, spec.pool_size]
                x = g.op(_POOL_OPS[spec.pool], [act], kernel_shape=k, strides=k)
        else:
            in_shapes.append(shape)
        conv_layers.append(
            OnnxConvLayer(
                spec.kernel, spec.stride, spec.padding, spec.pool, spec.pool_size, in_shapes[i], shape, label_name
            )
        )
    _outputs(g, net, views, logits, goods)
    graph = helper.make_graph(
        g.nodes,
        "spikingjelly_ff_analog_conv",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", net.in_features])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", c]),
            helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", c]),
            helper.make_tensor_value_info("goodness", TensorProto.FLOAT, ["N", c, len(goods)]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="spikingjelly-ff")
    model.ir_version = 8
    set_meta(model, net, "analog", weight_names, hebbian)
    # the dense settings plus the conv layers; the image shape the conv reads, always
    info = json.loads(next(p.value for p in model.metadata_props if p.key == META_KEY))
    info.update(image_shape=[h, w], conv=OnnxConv(net.over, tuple(conv_layers)).to_dict())
    helper.set_model_props(model, {META_KEY: OnnxMeta.from_dict(info).to_json()})  # checked as a load checks it
    return save_model(model, out)


def _outputs(g: Graph, net: AnalogConvFFNet, views: list, logits: list[str], goods: list[str]) -> None:
    """The graph outputs from each layer's log-odds and goodness score ``[C * V*N]`` (label-major),
    or, for a competitive net, its class log-probabilities and goodnesses ``[V*N, C]``; there
    ``probability`` is the softmax over the classes of the summed log-probabilities."""
    c, competitive = net.num_classes, net.competitive
    per_layer = logits if net.score_kind == "probability" else goods
    score, total_logit = per_layer[net.score_layers[0]], logits[net.score_layers[0]]
    for i in net.score_layers[1:]:
        score = g.op("Add", [score, per_layer[i]])
        total_logit = g.op("Add", [total_logit, logits[i]])

    def by_label(t: str, extra: list[int]) -> str:  # [C*N, *extra] -> [N, C, *extra]
        if competitive:  # already [N, C, *extra]
            return t
        r = g.op("Reshape", [t, g.const([c, -1, *extra], "shape", np.int64)])
        return g.op("Transpose", [r], perm=[1, 0, *range(2, 2 + len(extra))])

    per_view = by_label(score, [])  # [V*N, C]
    if len(views) > 1:  # summed over the views
        summed = g.op("Reshape", [per_view, g.const([len(views), -1, c], "shape", np.int64)])
        g.op("ReduceSum", [summed, g.const([0], "axes", np.int64)], keepdims=0, out="scores")
    else:
        g.op("Identity", [per_view], out="scores")

    def image_itself(t: str) -> str:  # [V*N, ...] -> [N, ...]: the untranslated view comes first
        if len(views) == 1:
            return t
        n = g.op("Shape", ["images"], start=0, end=1)
        return g.op("Slice", [t, g.const([0], "s", np.int64), n, g.const([0], "ax", np.int64)])

    if competitive:
        g.op("Softmax", [image_itself(total_logit)], axis=1, out="probability")
    else:
        g.op("Sigmoid", [image_itself(by_label(total_logit, []))], out="probability")
    axis = 2 if competitive else 1  # the layer axis after [V*N, C] or [C*V*N]
    stacked = g.op("Concat", [g.op("Unsqueeze", [gd, g.const([axis], "a", np.int64)]) for gd in goods], axis=axis)
    g.op("Identity", [image_itself(by_label(stacked, [len(goods)]))], out="goodness")
    g.op("ArgMax", ["scores"], out="label", axis=1, keepdims=0)
