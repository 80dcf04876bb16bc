"""ONNX graph of one presentation of a spiking FF network: given input spikes
``spikes [T, N, D']`` and the membranes ``v_i [N, H_i]`` as explicit inputs, an ONNX ``Scan``
runs the T steps (the step body carries each layer's membrane and trace as Scan state); the
graph returns each layer's spikes ``spikes_i [T, N, H_i]``, final ``trace_i`` and ``v_i_out``
(after the rest steps), and the per-sample log-odds ``logit [N]``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from spikingjelly_ff.export.onnx.graph import OPSET, Graph, layer_logit_and_goodness, save_model, set_meta
from spikingjelly_ff.nn.models import SpikingFFNet

__all__ = ["spiking_to_onnx"]


def _neuron_step(g: Graph, v: str, current: str, net: SpikingFFNet) -> tuple[str, str, str]:
    """Charge, fire, reset: returns (spike float ``[N, H]``, spike bool, new v)."""
    p = net.neuron_params
    if p.form == "beta":
        v = g.op("Add", [g.op("Mul", [v, g.const(p.beta)]), current])
    elif p.decay_input:
        v = g.op("Add", [v, g.op("Div", [g.op("Sub", [current, g.op("Sub", [v, g.const(p.v_rest)])]), g.const(p.tau)])])
    else:
        v = g.op("Add", [g.op("Sub", [v, g.op("Div", [g.op("Sub", [v, g.const(p.v_rest)]), g.const(p.tau)])]), current])
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
    v = g.op("Where", [fired, g.op("Sub", [v, th]) if p.soft_reset else g.const(p.v_reset), v])
    spike = g.op("Cast", [fired], to=TensorProto.FLOAT)
    return spike, fired, v


def _trace_step(g: Graph, tr: str, spike: str, fired: str, net: SpikingFFNet) -> str:
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
    body = Graph("step_")
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
    g = Graph()
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
            silent = p.silent_at_rest
            zero = g.const(0.0)
            for _ in range(net.encoder.rest_steps):
                if silent:
                    v = (
                        g.op("Add", [g.op("Mul", [v, g.const(p.beta)]), zero])
                        if p.form == "beta"
                        else g.op(
                            "Add",
                            [
                                g.op("Sub", [v, g.op("Div", [g.op("Sub", [v, g.const(p.v_rest)]), g.const(p.tau)])]),
                                zero,
                            ],
                        )
                    )
                else:
                    _, _, v = _neuron_step(g, v, zero, net)
        g.op("Identity", [v], out=f"v{i}_out")
        lg, _ = layer_logit_and_goodness(g, tr_end, widths[i], prob, net.goodness_kind)
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
    set_meta(model, net, "spiking")
    return save_model(model, out)
