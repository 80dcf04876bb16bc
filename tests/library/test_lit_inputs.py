"""runtime.lit_inputs: the first layer's product over the lit inputs only, same answers."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from spikingjelly_ff.export.onnx import analog_to_onnx
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.checkpoint import load_model
from spikingjelly_ff.runs.config import config_from_dict
from spikingjelly_ff.runs.data import load_split
from spikingjelly_ff.runtime import load_exported
from spikingjelly_ff.runtime.analog import LIT_MAX_ROWS
from spikingjelly_ff.runtime.lit_inputs import gather_lit_inputs


def _two_layers():
    """images [N, 6] -> Cast -> MatMul w0 [6, 4] -> Relu -> MatMul w1 [4, 3]."""
    inputs = [
        helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 6]),
        helper.make_tensor_value_info("w0", TensorProto.DOUBLE, [6, 4]),
        helper.make_tensor_value_info("w1", TensorProto.DOUBLE, [4, 3]),
    ]
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.DOUBLE),
        helper.make_node("MatMul", ["x", "w0"], ["z0"]),
        helper.make_node("Relu", ["z0"], ["h"]),
        helper.make_node("MatMul", ["h", "w1"], ["y"]),
    ]
    out = [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)]
    return helper.make_model(helper.make_graph(nodes, "g", inputs, out), opset_imports=[helper.make_opsetid("", 18)])


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_only_the_product_of_image_data_and_a_weight_is_rewritten():
    model = _two_layers()
    lit = gather_lit_inputs(model, ["w0", "w1"])
    ops = [n.op_type for n in lit.graph.node]
    assert ops.count("NonZero") == 1 and ops.count("MatMul") == 2  # the later layer reads weights: kept
    assert [n.op_type for n in model.graph.node] == ["Cast", "MatMul", "Relu", "MatMul"]  # not changed in place
    rng = np.random.default_rng(0)
    x = rng.random((5, 6), dtype=np.float32) * (rng.random((5, 6)) < 0.3)  # mostly unlit
    x[:, 2] = 0.0  # a column unlit in every row
    x[1] = -x[1]  # negative inputs count as lit
    w0, w1 = rng.standard_normal((6, 4)), rng.standard_normal((4, 3))
    feeds = {"images": x, "w0": w0, "w1": w1}
    np.testing.assert_allclose(_run(lit, feeds), _run(model, feeds), rtol=1e-12, atol=1e-12)
    zeros = {**feeds, "images": np.zeros((3, 6), np.float32)}  # nothing lit: the product of no columns
    np.testing.assert_array_equal(_run(lit, zeros), _run(model, zeros))
    # it reads the weight rows of lit inputs only: an unlit input's row may hold anything
    w0_bad = w0.copy()
    w0_bad[2] = np.nan
    assert np.isnan(_run(model, {**feeds, "w0": w0_bad})).all()
    np.testing.assert_allclose(_run(lit, {**feeds, "w0": w0_bad}), _run(model, feeds), rtol=1e-12, atol=1e-12)


def test_nothing_to_rewrite_returns_the_same_graph():
    model = _two_layers()
    assert gather_lit_inputs(model, ["w1"]) is model  # w0 not fed: a constant is onnxruntime's business
    assert gather_lit_inputs(model, []) is model


def _images(mini, n: int) -> np.ndarray:
    x = load_split(str(mini), "test").images[:n].astype(np.float32) / np.float32(255.0)
    return x.reshape(n, -1)


@pytest.fixture(scope="module")
def paper_like(tmp_path_factory):
    """An untrained 784 -> 30 -> 20 analog export with the separable float64 first layer."""
    cfg = config_from_dict({"model": {"kind": "analog", "layers": [30, 20]}})
    net = build_model(cfg.model, 784, 10, 0)
    return analog_to_onnx(net, tmp_path_factory.mktemp("lit") / "m.onnx", latent=True)


@pytest.mark.parametrize("which", ["paper_like", "normalized"])
def test_small_batches_run_the_lit_graph_with_the_full_graphs_answers(which, paper_like, analog_run, mini, tmp_path):
    if which == "paper_like":
        path = paper_like
    else:  # normalized input: the first layer sees every label's embedded image [C * N, D']
        net, _, _ = load_model(analog_run / "model")
        path = analog_to_onnx(net, tmp_path / "n.onnx", latent=True)
    model = load_exported(path)
    graph = model.graph
    assert graph.small is not graph.session
    assert graph.session_for(LIT_MAX_ROWS) is graph.small and graph.session_for(LIT_MAX_ROWS + 1) is graph.session
    x = _images(mini, 60)
    x[3] = 0.0  # a blank image
    feeds = model.weight_feeds()
    for batch in (1, 2, LIT_MAX_ROWS, 7, 60):
        for j in range(0, len(x) - batch + 1, batch):
            f = {"images": x[j : j + batch], **feeds}
            want = graph.session.run(None, f)
            got = graph.small.run(None, f)
            for name, a, b in zip(graph.output_names, got, want):
                if a.dtype.kind == "f":
                    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=name)
                else:
                    np.testing.assert_array_equal(a, b, err_msg=name)
    # AnalogModel.run picks by batch size and answers the same either way
    one_by_one = np.concatenate([model.run(x[i : i + 1])["scores"] for i in range(8)])
    np.testing.assert_allclose(one_by_one, model.run(x[:8])["scores"], rtol=1e-6, atol=1e-6)


def test_graph_run_calls_the_binding_or_else_the_public_api(paper_like, mini):
    """AnalogGraph.run calls onnxruntime's binding (``_sess``) where the session has one and
    the public ``run`` otherwise, with the same answers."""
    import dataclasses

    class PublicOnly:  # a session without the private binding
        def __init__(self, session) -> None:
            self._session, self.calls = session, 0

        def run(self, output_names, feeds, run_options=None):
            self.calls += 1
            return self._session.run(output_names, feeds, run_options)

    model = load_exported(paper_like)
    graph = model.graph
    public = dataclasses.replace(graph, small=PublicOnly(graph.small), session=PublicOnly(graph.session))
    names = list(graph.output_names)
    for n in (1, LIT_MAX_ROWS + 1):
        feeds = {"images": _images(mini, n), **model.weight_feeds()}
        for a, b in zip(graph.run(names, feeds), public.run(names, feeds)):
            np.testing.assert_array_equal(a, b)
    assert public.small.calls == 1 and public.session.calls == 1
