"""runtime.weight_folding on small hand-made graphs: what moves, what stays, same answers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from spikingjelly_ff.runtime.weight_folding import split_weight_only


def _model(nodes, outputs, inits=()):
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3]),
        ],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        list(inits),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})


def test_weight_only_chain_moves_and_answers_stay_equal():
    scale = onnx.numpy_helper.from_array(np.full((4, 3), 2.0, np.float32), "scale")
    nodes = [
        helper.make_node("Mul", ["w", "scale"], ["w2"]),  # weight-only
        helper.make_node("Relu", ["w2"], ["w3"]),  # weight-only, on a weight-only tensor
        helper.make_node("MatMul", ["x", "w3"], ["y"]),  # per call
        helper.make_node("MatMul", ["x", "w"], ["z"]),  # per call, reads the weight itself
    ]
    model = _model(nodes, ["y", "z"], [scale])
    split = split_weight_only(model, ["w"])
    assert [n.op_type for n in split.derive.graph.node] == ["Mul", "Relu"]
    assert [n.op_type for n in split.per_call.graph.node] == ["MatMul", "MatMul"]
    assert split.derived == ["w3"] and split.direct == ["w"]
    assert not split.per_call.graph.initializer  # "scale" went with the nodes that use it
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((5, 4), dtype=np.float32), rng.standard_normal((4, 3), dtype=np.float32)
    (w3,) = _run(split.derive, {"w": w})
    got = _run(split.per_call, {"x": x, "w": w, "w3": w3})
    want = _run(model, {"x": x, "w": w})
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_nothing_to_move_or_a_weight_only_output_keeps_the_graph_whole():
    per_call_only = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], ["y"])
    split = split_weight_only(per_call_only, ["w"])
    assert split.derive is None and split.per_call is per_call_only and split.derived == []
    # a graph output computed from the weights alone stays where it is
    with_output = _model(
        [helper.make_node("Neg", ["w"], ["nw"]), helper.make_node("MatMul", ["x", "nw"], ["y"])], ["y", "nw"]
    )
    split = split_weight_only(with_output, ["w"])
    assert split.derive is None and split.per_call is with_output
    # random draws are not functions of their inputs: they run on every call
    noisy = _model(
        [helper.make_node("RandomUniformLike", ["w"], ["r"]), helper.make_node("MatMul", ["x", "r"], ["y"])], ["y"]
    )
    assert split_weight_only(noisy, ["w"]).derive is None
