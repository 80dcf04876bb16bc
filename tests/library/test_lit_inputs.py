"""runtime.lit_inputs: the first layer's product over the lit inputs only, same answers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from spikingjelly_ff.export.onnx import analog_to_onnx
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.config import config_from_dict
from spikingjelly_ff.runs.data import load_split
from spikingjelly_ff.runtime import load_exported
from spikingjelly_ff.runtime.analog import LIT_MAX_ROWS
from spikingjelly_ff.runtime.lit_inputs import gather_lit_inputs


def _two_layers(opset: int = 18, dtype=TensorProto.DOUBLE, weights_as_initializers: bool = False, extra=()):
    """images [N, 6] -> Cast -> MatMul w0 [6, 4] -> Relu -> MatMul w1 [4, 3]; the weights are
    inputs, and with ``weights_as_initializers`` initializers too (as AnalogGraph.build has them)."""
    rng = np.random.default_rng(1)
    np_dtype = np.float64 if dtype == TensorProto.DOUBLE else np.float32
    inputs = [
        helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 6]),
        helper.make_tensor_value_info("w0", dtype, [6, 4]),
        helper.make_tensor_value_info("w1", dtype, [4, 3]),
    ]
    inits = []
    if weights_as_initializers:
        inits = [
            numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np_dtype), "w0"),
            numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np_dtype), "w1"),
        ]
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=dtype),
        helper.make_node("MatMul", ["x", "w0"], ["z0"]),
        helper.make_node("Relu", ["z0"], ["h"]),
        helper.make_node("MatMul", ["h", "w1"], ["y"]),
        *extra,
    ]
    out = [helper.make_tensor_value_info("y", dtype, ["N", 3])]
    graph = helper.make_graph(nodes, "g", inputs, out, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _sparse_images() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.random((5, 6), dtype=np.float32) * (rng.random((5, 6)) < 0.3)  # mostly unlit
    x[:, 2] = 0.0  # a column unlit in every row
    x[:, 4] = [0.0, -0.5, 0.0, -0.25, 0.0]  # lit by negative inputs only
    x[0, 5] = -0.0  # a negative zero is unlit
    return x


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("inits", [False, True], ids=["weights-inputs", "weights-also-initializers"])
def test_only_the_float64_product_of_image_data_and_a_weight_is_rewritten(opset, inits):
    model = _two_layers(opset, weights_as_initializers=inits)
    lit = gather_lit_inputs(model, ["w0", "w1"])
    ops = [n.op_type for n in lit.graph.node]
    assert ops.count("NonZero") == 1 and ops.count("MatMul") == 2  # the later layer reads weights: kept
    assert [n.op_type for n in model.graph.node] == ["Cast", "MatMul", "Relu", "MatMul"]  # not changed in place
    onnx.checker.check_model(lit, full_check=True)
    rng = np.random.default_rng(0)
    x = _sparse_images()
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
    # ... and every lit one, also where only negative inputs light it
    w0_bad = w0.copy()
    w0_bad[4] = np.nan
    assert np.isnan(_run(lit, {**feeds, "w0": w0_bad})[[1, 3]]).all()


def test_nothing_to_rewrite_returns_the_same_graph():
    model = _two_layers()
    assert gather_lit_inputs(model, ["w1"]) is model  # w0 not fed: a constant is onnxruntime's business
    assert gather_lit_inputs(model, []) is model
    float32 = _two_layers(dtype=TensorProto.FLOAT)  # a float32 sum in a new order may move its last bit
    assert gather_lit_inputs(float32, ["w0", "w1"]) is float32


def test_names_the_graph_already_uses_are_not_reused():
    taken = [helper.make_node("Identity", ["h"], [name]) for name in ("z0_lit_x", "z0_lit_idx", "lit_flat")]
    model = _two_layers(extra=taken)
    lit = gather_lit_inputs(model, ["w0", "w1"])
    onnx.checker.check_model(lit, full_check=True)
    rng = np.random.default_rng(2)
    feeds = {"images": _sparse_images(), "w0": rng.standard_normal((6, 4)), "w1": rng.standard_normal((4, 3))}
    np.testing.assert_allclose(_run(lit, feeds), _run(model, feeds), rtol=1e-12, atol=1e-12)


def _images(mini, n: int) -> np.ndarray:
    x = load_split(str(mini), "test").images[:n].astype(np.float32) / np.float32(255.0)
    return x.reshape(n, -1)


def _export(tmp_path_factory, normalize_first: bool = False, **model) -> str:
    cfg = config_from_dict({"model": {"kind": "analog", **model}})
    net = build_model(cfg.model, 784, 10, 0)
    net.image_shape = (28, 28)
    net.layers[0].normalize_input = normalize_first  # every label's embedded image, float32
    return analog_to_onnx(net, tmp_path_factory.mktemp("lit") / "m.onnx", latent=True)


@pytest.fixture(scope="module")
def paper_like(tmp_path_factory):
    """An untrained 784 -> 30 -> 20 analog export with the separable float64 first layer."""
    return _export(tmp_path_factory, layers=[30, 20])


@pytest.mark.parametrize("which", ["paper_like", "shift_views"])
def test_small_batches_run_the_lit_graph_with_the_full_graphs_answers(which, paper_like, mini, tmp_path_factory):
    path = paper_like if which == "paper_like" else _export(tmp_path_factory, layers=[30], shift_views=1)
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


def test_a_float32_first_layer_keeps_one_graph(tmp_path_factory):
    """A first layer that length-normalises its input multiplies every label's embedded image
    in float32; it is left as exported, so every batch size runs the same graph."""
    graph = load_exported(_export(tmp_path_factory, normalize_first=True, layers=[30, 20])).graph
    assert graph.small is graph.session


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
        for a, b in zip(graph.run(names, feeds), public.run(None, feeds)):
            np.testing.assert_array_equal(a, b)
    assert public.small.calls == 1 and public.session.calls == 1
