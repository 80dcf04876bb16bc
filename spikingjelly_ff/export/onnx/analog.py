"""ONNX graph of an analog FF network: ``images [N, D]`` -> ``scores [N, C]`` (summed
per-layer log-odds or goodness), ``probability [N, C]`` (sigmoid of the summed log-odds),
``goodness [N, C, L]``, ``label [N]`` and, optionally, ``latent [N, C, sum H]``. The batch
dimension is dynamic; all C labels run in one pass. With ``shift_views`` the graph also makes
the translated views of each image: ``scores`` and ``label`` sum over them, the other outputs
describe the image itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from spikingjelly_ff.export.onnx.graph import OPSET, Graph, layer_logit_and_goodness, save_model, set_meta
from spikingjelly_ff.functional.params import HebbianParams
from spikingjelly_ff.functional.views import view_offsets
from spikingjelly_ff.nn.models import AnalogFFNet

__all__ = ["analog_to_onnx"]


def _embed_all_labels(g: Graph, net, images: str) -> str:
    """``images [N, D]`` -> ``[C * N, D']`` with every label embedded (label-major)."""
    c = net.num_classes
    code = net.embedding.label_code
    n = g.op("Shape", [images], start=0, end=1)  # [1] = N
    if code.kind == "pattern":
        bits = code.width
        pat = code.codes()  # [C, bits]
        pat_n = g.op(
            "Expand",
            [
                g.const(pat[:, None, :]),
                g.op("Concat", [g.const([c], "c", np.int64), n, g.const([bits], "b", np.int64)], axis=0),
            ],
        )
        img = g.op(
            "Expand",
            [
                g.op("Unsqueeze", [images, g.const([0], "a", np.int64)]),
                g.op("Concat", [g.const([c], "c", np.int64), n, g.const([net.in_features], "d", np.int64)], axis=0),
            ],
        )
        full = g.op("Concat", [img, pat_n], axis=2)
    else:
        onehot = code.codes()[:, None, :]  # [C, 1, C]
        rest = g.op(
            "Slice",
            [
                images,
                g.const([c], "s", np.int64),
                g.const([net.in_features], "e", np.int64),
                g.const([1], "ax", np.int64),
            ],
        )
        rest = g.op(
            "Expand",
            [
                g.op("Unsqueeze", [rest, g.const([0], "a", np.int64)]),
                g.op("Concat", [g.const([c], "c", np.int64), n, g.const([net.in_features - c], "d", np.int64)], axis=0),
            ],
        )
        code_n = g.op(
            "Expand",
            [g.const(onehot), g.op("Concat", [g.const([c], "c", np.int64), n, g.const([c], "cc", np.int64)], axis=0)],
        )
        full = g.op("Concat", [code_n, rest], axis=2)
    return g.op("Reshape", [full, g.const([-1, net.input_width], "shape", np.int64)])


def _separable_current(g: Graph, net, images: str, w: str, bias: np.ndarray | None) -> str:
    """First-layer current of every label, ``[C * N, H]`` float32 (label-major), as the image
    term ``[N, H]`` (computed once) plus a per-label term ``[C, H]``, accumulated in float64
    and rounded once; mirrors ``AnalogFFNet.all_label_activities``. The weight ``w``
    ``[D', H]`` is float64 and may be fed at run time; its slices depend on the weights alone,
    so onnxruntime (or ``runtime.weight_folding``) computes them once per weight version."""
    code, d = net.embedding.label_code, net.in_features
    img, lab = code.image_slice(d), code.label_slice(d)
    width = net.input_width
    x = g.op("Cast", [images], to=TensorProto.DOUBLE)
    if img.start == 0 and img.stop == d and lab.start == d:  # label code appended
        w_img = g.op("Slice", [w, g.const([0], "s", np.int64), g.const([d], "e", np.int64)])
        image_term = g.op("MatMul", [x, w_img])  # [N, H]
    else:  # label code written over the first inputs
        mask = np.zeros(width)
        mask[img] = 1.0
        x = g.op("Mul", [x, g.const(mask, "mask", np.float64)])
        image_term = g.op("MatMul", [x, w])  # [N, H]
    codes = code.codes().astype(np.float64)  # [C, L]
    w_lab = g.op("Slice", [w, g.const([lab.start], "s", np.int64), g.const([lab.stop], "e", np.int64)])
    label_term = g.op("MatMul", [g.const(codes, "codes", np.float64), w_lab])  # [C, H]
    if bias is not None:
        label_term = g.op("Add", [label_term, g.const(bias, "b0", np.float64)])
    z = g.op(
        "Add",
        [
            g.op("Unsqueeze", [image_term, g.const([0], "a", np.int64)]),
            g.op("Unsqueeze", [label_term, g.const([1], "a", np.int64)]),
        ],
    )
    z = g.op("Cast", [z], to=TensorProto.FLOAT)
    return g.op("Reshape", [z, g.const([-1, net.widths[0]], "shape", np.int64)])


def _views(g: Graph, net, images: str, offsets: list[tuple[int, int]]) -> str:
    """``images [N, H*W]`` -> ``[V * N, H*W]``: each translated view (zero-filled), view-major,
    as ``functional.views.translate`` makes them."""
    if net.image_shape is None:
        raise ValueError("a model with shift_views needs its image shape to be exported")
    h, w = net.image_shape
    k = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    grid = g.op("Reshape", [images, g.const([-1, h, w], "shape", np.int64)])
    padded = g.op("Pad", [grid, g.const([0, k, k, 0, k, k], "pads", np.int64)])
    parts = []
    for dy, dx in offsets:
        crop = g.op(
            "Slice",
            [
                padded,
                g.const([k - dy, k - dx], "s", np.int64),
                g.const([k - dy + h, k - dx + w], "e", np.int64),
                g.const([1, 2], "ax", np.int64),
            ],
        )
        parts.append(g.op("Reshape", [crop, g.const([-1, h * w], "shape", np.int64)]))
    return g.op("Concat", parts, axis=0)


def analog_to_onnx(
    net: AnalogFFNet, out: str | os.PathLike, latent: bool = False, hebbian: HebbianParams | None = None
) -> Path:
    """Export an analog FF network (see module docstring for inputs/outputs). Weight ``i`` is
    the initializer named in the ``spikingjelly_ff`` metadata, stored transposed ``[D, H]``;
    ``hebbian`` (eta, eligibility_tau) sets defaults for on-line learning (None: the defaults).
    A conv net (``AnalogConvFFNet``) is exported by :func:`~spikingjelly_ff.export.onnx.conv.conv_to_onnx`."""
    from dataclasses import asdict

    from spikingjelly_ff.nn.conv_models import AnalogConvFFNet

    if net.readout is not None:  # the graph classifies by goodness: it would answer other classes
        raise ValueError(
            "this model classifies with its linear readout, which the ONNX export does not hold: "
            "export a model trained without train.readout"
        )
    if isinstance(net, AnalogConvFFNet):
        from spikingjelly_ff.export.onnx.conv import conv_to_onnx

        return conv_to_onnx(net, out, latent, hebbian)

    g = Graph()
    c = net.num_classes
    views = view_offsets(net.shift_views)
    src = _views(g, net, "images", views) if len(views) > 1 else "images"  # [V * N, D]
    separable = not net.layers[0].normalize_input
    x = src if separable else _embed_all_labels(g, net, src)
    prob = asdict(net.probability)
    acts, logits, goods, weight_names = [], [], [], []
    for i, layer in enumerate(net.layers):
        if layer.normalize_input:
            norm = g.op("Sqrt", [g.op("ReduceSumSquare", [x, g.const([-1], "axes", np.int64)], keepdims=1)])
            x = g.op("Div", [x, g.op("Add", [norm, g.const(1e-8)])])
        w = layer.synapse.weight.detach().cpu().numpy().astype(np.float32)
        bias = None if layer.synapse.bias is None else layer.synapse.bias.detach().cpu().numpy()
        if i == 0 and separable:
            # float64 storage holds the float32 weights exactly; see _separable_current
            weight_names.append(g.const(w.T.copy(), f"w{i}", np.float64))
            z = _separable_current(g, net, src, weight_names[-1], bias)
        else:
            weight_names.append(g.const(w.T.copy(), f"w{i}"))
            z = g.op("MatMul", [x, weight_names[-1]])
            if bias is not None:
                z = g.op("Add", [z, g.const(bias, f"b{i}")])
        x = g.op("Relu", [z])
        acts.append(x)
        lg, gd = layer_logit_and_goodness(g, x, w.shape[0], prob, net.goodness_kind)
        logits.append(lg)
        goods.append(gd)
    per_layer = logits if net.score_kind == "probability" else goods
    score = per_layer[net.score_layers[0]]
    for i in net.score_layers[1:]:
        score = g.op("Add", [score, per_layer[i]])
    total_logit = logits[net.score_layers[0]]
    for i in net.score_layers[1:]:
        total_logit = g.op("Add", [total_logit, logits[i]])

    def by_label(t: str, extra: list[int]) -> str:  # [C*N, *extra] -> [N, C, *extra]
        r = g.op("Reshape", [t, g.const([c, -1, *extra], "shape", np.int64)])
        return g.op("Transpose", [r], perm=[1, 0, *range(2, 2 + len(extra))])

    per_view = g.op("Transpose", [g.op("Reshape", [score, g.const([c, -1], "shape", np.int64)])], perm=[1, 0])
    if len(views) > 1:  # [V*N, C] -> [N, C]: summed over the views
        summed = g.op("Reshape", [per_view, g.const([len(views), -1, c], "shape", np.int64)])
        g.op("ReduceSum", [summed, g.const([0], "axes", np.int64)], keepdims=0, out="scores")
    else:
        g.op("Identity", [per_view], out="scores")
    n = g.op("Shape", ["images"], start=0, end=1) if len(views) > 1 else ""

    def image_itself(t: str) -> str:  # [V*N, ...] -> [N, ...]: the untranslated view comes first
        if len(views) == 1:
            return t
        return g.op("Slice", [t, g.const([0], "s", np.int64), n, g.const([0], "ax", np.int64)])

    g.op("Sigmoid", [image_itself(by_label(total_logit, []))], out="probability")
    stacked = g.op("Concat", [g.op("Unsqueeze", [gd, g.const([1], "a", np.int64)]) for gd in goods], axis=1)
    g.op("Identity", [image_itself(by_label(stacked, [len(goods)]))], out="goodness")
    g.op("ArgMax", ["scores"], out="label", axis=1, keepdims=0)
    outputs = [
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", c]),
        helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", c]),
        helper.make_tensor_value_info("goodness", TensorProto.FLOAT, ["N", c, len(goods)]),
        helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
    ]
    if latent:
        cat = g.op("Concat", acts, axis=1) if len(acts) > 1 else acts[0]
        width = sum(net.widths)
        g.op("Identity", [image_itself(by_label(cat, [width]))], out="latent")
        outputs.append(helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["N", c, width]))
    graph = helper.make_graph(
        g.nodes,
        "spikingjelly_ff_analog",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", net.in_features])],
        outputs,
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="spikingjelly-ff")
    model.ir_version = 8
    set_meta(model, net, "analog", weight_names, hebbian)
    return save_model(model, out)
