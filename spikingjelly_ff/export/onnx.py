"""ONNX export, built node by node with ``onnx.helper`` (opset 18).

* Analog models: ``images [N, D]`` -> ``scores [N, C]`` (summed per-layer log-odds or
  goodness), ``probability [N, C]`` (sigmoid of the summed log-odds), ``goodness [N, C, L]``,
  ``label [N]`` and, optionally, ``latent [N, C, sum H]``. The batch dimension is dynamic;
  all C labels run in one pass. With ``shift_views`` the graph also makes the translated
  views of each image: ``scores`` and ``label`` sum over them, the other outputs describe
  the image itself.
* Spiking models: one presentation of given input spikes ``spikes [T, N, D']`` with the
  membranes ``v_i [N, H_i]`` as explicit inputs; an ONNX ``Scan`` runs the T steps (the
  step body carries each layer's membrane and trace as Scan state), and the graph returns
  each layer's spikes ``spikes_i [T, N, H_i]``, final ``trace_i`` and ``v_i_out`` (after the
  rest steps), and the per-sample log-odds ``logit [N]``.

Writing the graph by hand keeps the arithmetic identical to ``dynamics.py`` (Mul, then Add;
no fused ops), which is what lets onnxruntime reproduce the torch spikes exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from spikingjelly_ff.functional.params import HebbianParams
from spikingjelly_ff.nn.augment import view_offsets
from spikingjelly_ff.nn.models import AnalogFFNet, SpikingFFNet

__all__ = ["analog_to_onnx", "spiking_to_onnx"]

OPSET = 18


class _Graph:
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


def _goodness(g: _Graph, act: str, kind: str, width: int) -> str:
    """``[B, H]`` -> ``[B]``."""
    axes = g.const([-1], "axes", np.int64)
    if kind == "sum_squares":
        return g.op("ReduceSumSquare", [act, axes], keepdims=0)
    if kind == "mean_squares":
        return g.op("Div", [g.op("ReduceSumSquare", [act, axes], keepdims=0), g.const(float(width))])
    return g.op("ReduceL1", [act, axes], keepdims=0)


def _halves(g: _Graph, act: str, width: int) -> tuple[str, str]:
    half = width // 2
    ax = g.const([1], "ax", np.int64)
    pos = g.op("Slice", [act, g.const([0], "s", np.int64), g.const([half], "e", np.int64), ax])
    neg = g.op("Slice", [act, g.const([half], "s", np.int64), g.const([width], "e", np.int64), ax])
    return pos, neg


def _layer_logit_and_goodness(g: _Graph, act: str, width: int, prob: dict, goodness: str) -> tuple[str, str]:
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


def _save(model: onnx.ModelProto, out: str | os.PathLike) -> Path:
    onnx.checker.check_model(model, full_check=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    onnx.save(model, str(tmp))
    os.replace(tmp, out)
    return out


def _embed_all_labels(g: _Graph, net, images: str) -> str:
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


def _separable_current(g: _Graph, net, images: str, w: str, bias: np.ndarray | None) -> str:
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


def _views(g: _Graph, net, images: str, offsets: list[tuple[int, int]]) -> str:
    """``images [N, H*W]`` -> ``[V * N, H*W]``: each translated view (zero-filled), view-major,
    as ``augment.translate`` makes them."""
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
    net: AnalogFFNet, out: str | os.PathLike, latent: bool = False, hebbian: HebbianParams | dict | None = None
) -> Path:
    """Export an analog FF network (see module docstring for inputs/outputs). Weight ``i`` is
    the initializer named in the ``spikingjelly_ff`` metadata, stored transposed ``[D, H]``;
    ``hebbian`` (eta, eligibility_tau) sets defaults for on-line learning."""
    from dataclasses import asdict

    g = _Graph()
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
        lg, gd = _layer_logit_and_goodness(g, x, w.shape[0], prob, net.goodness_kind)
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
    _meta(model, net, "analog", weight_names, hebbian)
    return _save(model, out)


def _hebbian(hebbian: HebbianParams | dict | None) -> HebbianParams:
    """On-line learning settings (a mapping of some of their fields is accepted)."""
    if isinstance(hebbian, HebbianParams):
        return hebbian
    return HebbianParams(**(hebbian or {}))


def _meta(
    model: onnx.ModelProto,
    net,
    kind: str,
    weight_names: list[str] | None = None,
    hebbian: HebbianParams | dict | None = None,
) -> None:
    """Settings a runtime needs to keep learning travel with the graph (model property
    ``spikingjelly_ff``, JSON)."""
    import json
    from dataclasses import asdict

    from spikingjelly_ff import __version__

    code = net.embedding.label_code
    info = {
        "format": "spikingjelly-ff/onnx",
        "format_version": 1,
        "kind": kind,
        "num_classes": net.num_classes,
        "in_features": net.in_features,
        "score": net.score_kind,
        "score_layers": net.score_layers,
        "goodness": net.goodness_kind,
        "probability": asdict(net.probability),
        "embedding": {
            "kind": code.kind,
            "bits": code.width if code.kind == "pattern" else 0,
            "scale": code.scale,
            "patterns": None if code.patterns is None else code.patterns.astype(int).tolist(),
        },
        "library_version": __version__,
    }
    if kind == "analog":
        info["layers"] = [
            {"weight": name, "normalize_input": bool(layer.normalize_input), "bias": layer.synapse.bias is not None}
            for name, layer in zip(weight_names or [], net.layers)
        ]
        info["hebbian"] = _hebbian(hebbian).to_dict()
        info["shift_views"] = net.shift_views  # scores and label sum 4 * shift_views + 1 views
        info["image_shape"] = list(net.image_shape) if net.image_shape else None
    helper.set_model_props(model, {"spikingjelly_ff": json.dumps(info)})


def _neuron_step(g: _Graph, v: str, current: str, net: SpikingFFNet) -> tuple[str, str, str]:
    """Charge, fire, reset: returns (spike float ``[N, H]``, spike bool, new v)."""
    p = net.neuron_params
    if p.form == "beta":
        v = g.op("Add", [g.op("Mul", [v, g.const(p.beta)]), current])
    elif p.decay_input:
        v = g.op(
            "Add", [v, g.op("Div", [g.op("Sub", [current, g.op("Sub", [v, g.const(p.v_reset)])]), g.const(p.tau)])]
        )
    else:
        v = g.op(
            "Add", [g.op("Sub", [v, g.op("Div", [g.op("Sub", [v, g.const(p.v_reset)]), g.const(p.tau)])]), current]
        )
    th = g.const(p.v_threshold)
    fired = g.op("Greater" if p.fire == ">" else "GreaterOrEqual", [v, th])
    if p.kwta is not None:
        kth_vals, _ = g.op("TopK", [v, g.const([p.kwta], "k", np.int64)], outputs=2, axis=-1)
        kth = g.op(
            "Slice",
            [
                kth_vals,
                g.const([p.kwta - 1], "s", np.int64),
                g.const([p.kwta], "e", np.int64),
                g.const([-1], "ax", np.int64),
            ],
        )
        fired = g.op("And", [fired, g.op("GreaterOrEqual", [v, kth])])
    v = g.op("Where", [fired, g.const(p.v_reset), v])
    spike = g.op("Cast", [fired], to=TensorProto.FLOAT)
    return spike, fired, v


def _trace_step(g: _Graph, tr: str, spike: str, fired: str, net: SpikingFFNet) -> str:
    tp = net.trace_params
    if tp.kind == "count":
        return g.op("Add", [tr, g.op("Mul", [spike, g.const(tp.increment)])])
    if tp.kind == "leaky":
        return g.op("Add", [g.op("Mul", [tr, g.const(tp.decay)]), g.op("Mul", [spike, g.const(tp.one_minus_decay)])])
    if tp.kind == "hard":
        return g.op("Where", [fired, g.const(1.0), g.op("Mul", [tr, g.const(tp.decay)])])
    return spike


def spiking_to_onnx(net: SpikingFFNet, out: str | os.PathLike) -> Path:
    """Export one presentation of a spiking FF network (see module docstring)."""
    from dataclasses import asdict

    layers = len(net.layers)
    widths = net.widths
    body = _Graph("step_")
    state_in = []
    for i in range(layers):
        state_in += [f"v{i}_in", f"tr{i}_in"]
    x = "x_t"
    state_out, scan_out = [], []
    for i, layer in enumerate(net.layers):
        w = layer.weight.detach().cpu().numpy().astype(np.float32)
        current = body.op("MatMul", [x, body.const(w.T.copy(), f"w{i}")])
        spike, fired, v = _neuron_step(body, f"v{i}_in", current, net)
        tr = _trace_step(body, f"tr{i}_in", spike, fired, net)
        body.op("Identity", [v], out=f"v{i}_next")
        body.op("Identity", [tr], out=f"tr{i}_next")
        body.op("Identity", [spike], out=f"s{i}_t")
        state_out += [f"v{i}_next", f"tr{i}_next"]
        scan_out.append(f"s{i}_t")
        x = spike

    def vi(name, width):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width])

    body_graph = helper.make_graph(
        body.nodes,
        "step",
        [vi(n, widths[k // 2]) for k, n in enumerate(state_in)] + [vi("x_t", net.input_width)],
        [vi(n, widths[k // 2]) for k, n in enumerate(state_out)] + [vi(n, widths[k]) for k, n in enumerate(scan_out)],
        body.inits,
    )
    g = _Graph()
    scan_inputs = []
    for i in range(layers):
        scan_inputs += [f"v{i}", g.op("Mul", [f"v{i}", g.const(0.0)])]  # trace starts at 0
    outs = g.op(
        "Scan",
        [*scan_inputs, "spikes"],
        outputs=2 * layers + layers,
        body=body_graph,
        num_scan_inputs=1,
    )
    prob = asdict(net.probability)
    total = None
    graph_outputs = []
    for i in range(layers):
        v_end, tr_end, s_seq = outs[2 * i], outs[2 * i + 1], outs[2 * layers + i]
        g.op("Identity", [s_seq], out=f"spikes_{i}")
        g.op("Identity", [tr_end], out=f"trace_{i}")
        v = v_end
        p = net.neuron_params
        if net.encoder.carry_membrane:
            # Rest steps: no input. Without k-WTA no spike is possible, so only the decay is
            # written out; with k-WTA a neuron held back at the last step may still fire.
            silent = p.kwta is None and p.v_reset <= p.v_threshold and (p.form == "lif" or p.v_threshold >= 0)
            zero = g.const(0.0)
            for _ in range(net.encoder.rest_steps):
                if silent:
                    v = (
                        g.op("Add", [g.op("Mul", [v, g.const(p.beta)]), zero])
                        if p.form == "beta"
                        else g.op(
                            "Add",
                            [
                                g.op("Sub", [v, g.op("Div", [g.op("Sub", [v, g.const(p.v_reset)]), g.const(p.tau)])]),
                                zero,
                            ],
                        )
                    )
                else:
                    _, _, v = _neuron_step(g, v, zero, net)
        g.op("Identity", [v], out=f"v{i}_out")
        lg, _ = _layer_logit_and_goodness(g, tr_end, widths[i], prob, net.goodness_kind)
        if i in net.score_layers:
            total = lg if total is None else g.op("Add", [total, lg])
        graph_outputs += [
            helper.make_tensor_value_info(f"spikes_{i}", TensorProto.FLOAT, ["T", "N", widths[i]]),
            helper.make_tensor_value_info(f"trace_{i}", TensorProto.FLOAT, ["N", widths[i]]),
            helper.make_tensor_value_info(f"v{i}_out", TensorProto.FLOAT, ["N", widths[i]]),
        ]
    g.op("Identity", [total], out="logit")
    graph_outputs.append(helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N"]))
    inputs = [helper.make_tensor_value_info("spikes", TensorProto.FLOAT, ["T", "N", net.input_width])]
    inputs += [helper.make_tensor_value_info(f"v{i}", TensorProto.FLOAT, ["N", widths[i]]) for i in range(layers)]
    graph = helper.make_graph(g.nodes, "spikingjelly_ff_spiking", inputs, graph_outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="spikingjelly-ff")
    model.ir_version = 8
    _meta(model, net, "spiking")
    return _save(model, out)
