"""The answers of ModelInfer: the serialised default answer (prepared bytes plus each request's
rows) parses to exactly the message the general builder makes, for every row range of a batch,
with and without a request id, across learning versions and batch sizes; and its failures are
answered as every other unary call's."""

from __future__ import annotations

import asyncio
import os

import grpc
import numpy as np
import pytest
import serving_utils as su
from sjff_client.pb import grpc_service_pb2 as pb
from sjff_server.errors import InvalidInput, ModelNotFound, ResourceExhausted
from sjff_server.inference.engine import InferOptions, InferPlan
from sjff_server.interrupt import WorkerPool
from sjff_server.learning.options import LearnOptions
from sjff_server.metrics import Metrics
from sjff_server.protocol.inference_service import InferenceService, ServerState
from sjff_server.protocol.messages import ModelMessages, stream_answer
from sjff_server.protocol.registration import Malformed
from sjff_server.protocol.rpc import status_of
from sjff_server.serving.models import load_served_model
from sjff_server.serving.repository import scan_repository


@pytest.fixture(scope="module", params=["analog", "spike"])
def served(request, sjff_models, tmp_path_factory):
    root = su.make_repository(tmp_path_factory.mktemp("repo"), {"m": sjff_models[request.param]})
    (spec,), _ = scan_repository(root)
    pool = WorkerPool(1)
    model, _ = load_served_model(spec, state_dir=None, ort_threads=1, learn_options=LearnOptions(), pool=pool)
    yield model
    pool.close()


def _request(id_: str = "") -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="m", id=id_)


def test_default_answer_bytes_equal_the_general_message(served, mnist_samples):
    images, _ = mnist_samples
    x = su.as_float(images[:5])
    outs, _ = served._run_batch(x, served.default_plan.opts)
    messages = ModelMessages(served)
    plan = served.default_plan
    for version in (0, 7, 2**40):
        for start, stop in ((0, 5), (0, 1), (1, 3), (4, 5)):
            for id_ in ("", "req-é-42"):
                request = _request(id_)
                got = messages.infer_answer(request, plan, (outs, version, start, stop))
                assert type(got) is bytes
                rows = {k: v[start:stop] for k, v in outs.items()}
                want = messages.infer_response(request, plan, rows, version)
                parsed = pb.ModelInferResponse.FromString(got)
                assert parsed == want
                assert [list(o.shape) for o in parsed.outputs][0][0] == stop - start
                assert parsed.parameters["sjff_version"].int64_param == version
    # a second batch (new outputs object) is encoded from its own data, not the cached one
    outs2, _ = served._run_batch(su.as_float(images[5:7]), served.default_plan.opts)
    got = pb.ModelInferResponse.FromString(messages.infer_answer(_request(), plan, (outs2, 3, 1, 2)))
    assert got == messages.infer_response(_request(), plan, {k: v[1:2] for k, v in outs2.items()}, 3)


def test_other_plans_and_streams(served, mnist_samples):
    images, _ = mnist_samples
    x = su.as_float(images[:3])
    messages = ModelMessages(served)
    typed = InferPlan(InferOptions(), served.default_plan.outputs, None, True)
    outs, _ = served._run_batch(x, typed.opts)
    got = messages.infer_answer(_request("t"), typed, (outs, 2, 1, 3))
    assert isinstance(got, pb.ModelInferResponse) and not got.raw_output_contents
    assert got == messages.infer_response(_request("t"), typed, {k: v[1:3] for k, v in outs.items()}, 2)
    # a stream carries either form as the same ModelStreamInferResponse
    raw = messages.infer_answer(_request("s"), served.default_plan, (outs, 2, 0, 3))
    from_bytes = pb.ModelStreamInferResponse.FromString(stream_answer(raw))
    from_message = stream_answer(pb.ModelInferResponse.FromString(raw))
    assert from_bytes == from_message and from_bytes.infer_response.id == "s"
    assert np.array_equal(
        np.frombuffer(from_bytes.infer_response.raw_output_contents[0], dtype=np.float32),
        outs[served.default_plan.outputs[0]].ravel(),
    )


def test_an_output_that_is_not_c_contiguous_is_answered_with_its_rows_bytes(served, mnist_samples):
    """A lone call's answer joins the arrays' own buffers; one whose output is not C-contiguous
    (a transposed view, as an engine may return) goes through tobytes and encodes the same."""
    images, _ = mnist_samples
    outs, _ = served._run_batch(su.as_float(images[:3]), served.default_plan.opts)
    first = served.default_plan.outputs[0]
    fortran = np.asfortranarray(np.tile(outs[first].reshape(3, -1), (1, 2)))  # [3, 2k], not C-contiguous
    assert not fortran.flags.c_contiguous
    odd = {**outs, first: fortran}
    plan, messages = served.default_plan, ModelMessages(served)
    for start, stop in ((0, 3), (1, 2)):  # the whole batch, then part of it
        got = messages.infer_answer(_request("y"), plan, (odd, 4, start, stop))
        assert type(got) is bytes
        want = messages.infer_response(_request("y"), plan, {k: v[start:stop] for k, v in odd.items()}, 4)
        assert pb.ModelInferResponse.FromString(got) == want


def test_outputs_without_one_row_per_image_are_answered_as_a_message(served, mnist_samples):
    """Rows are sliced as bytes only when every default output holds one row per image."""
    images, _ = mnist_samples
    outs, _ = served._run_batch(su.as_float(images[:3]), served.default_plan.opts)
    first = served.default_plan.outputs[0]
    odd = {**outs, first: outs[first][:2]}  # one output a row short
    messages = ModelMessages(served)
    got = messages.infer_answer(_request("x"), served.default_plan, (odd, 1, 0, 2))
    assert isinstance(got, pb.ModelInferResponse)
    assert got == messages.infer_response(_request("x"), served.default_plan, {k: v[0:2] for k, v in odd.items()}, 1)
    # the next, regular batch is bytes again
    assert type(messages.infer_answer(_request(), served.default_plan, (outs, 1, 0, 3))) is bytes


def test_a_one_layer_export_scores_small_batches_compiled(mnist_samples, tmp_path):
    """A one-layer analog export (the paper's net's shape) is served through the compiled
    scoring (runtime.analog_compiled), warmed at load: a request's read-only images are answered
    as the graph answers them, to float32 rounding."""
    from spikingjelly_ff.export.onnx import analog_to_onnx
    from spikingjelly_ff.kernels import numba_online
    from spikingjelly_ff.runs.build import build_model
    from spikingjelly_ff.runs.config import config_from_dict

    if not numba_online.AVAILABLE and os.environ.get("SJFF_REQUIRE_NUMBA") != "1":  # CI requires it
        pytest.skip("numba not installed (extra [fast])")
    net = build_model(config_from_dict({"model": {"kind": "analog", "layers": [40]}}).model, 784, 10, 0)
    net.image_shape = (28, 28)
    root = su.make_repository(tmp_path / "repo", {"m": analog_to_onnx(net, tmp_path / "m.onnx")})
    (spec,), _ = scan_repository(root)
    pool = WorkerPool(1)
    served, notes = load_served_model(spec, state_dir=None, ort_threads=1, learn_options=LearnOptions(), pool=pool)
    pool.close()
    assert "compiled scoring of small batches: on" in notes
    model = served.published.model
    images, _ = mnist_samples
    x = np.frombuffer(su.as_float(images[:3]).tobytes(), dtype=np.float32).reshape(3, -1)  # as decoded
    got, _ = served._run_batch(x, served.default_plan.opts)
    feeds = {"images": x, **model.weight_feeds()}
    want = dict(zip(model.graph.output_names, model.graph.run(None, feeds)))
    for name in ("scores", "probability", "goodness"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(got["label"], want["label"])


def test_small_analog_batches_run_the_lit_input_graph(sjff_models, mnist_samples, tmp_path):
    """The engine runs a batch of at most LIT_MAX_ROWS images on the graph whose first layer
    reads only the lit inputs' weight rows (runtime.lit_inputs), a larger one on the full
    graph: with NaN in the weight row of a pixel no image lights, only the full graph's
    answers are NaN."""
    from spikingjelly_ff.runtime.analog import LIT_MAX_ROWS

    root = su.make_repository(tmp_path, {"m": sjff_models["analog"]})
    (spec,), _ = scan_repository(root)
    pool = WorkerPool(1)
    served, _ = load_served_model(spec, state_dir=None, ort_threads=1, learn_options=LearnOptions(), pool=pool)
    pool.close()
    images, _ = mnist_samples
    x = su.as_float(images[: LIT_MAX_ROWS + 1])
    opts = served.default_plan.opts
    small, _ = served._run_batch(x[:LIT_MAX_ROWS], opts)
    full, _ = served._run_batch(x, opts)
    for name in small:
        np.testing.assert_allclose(small[name], full[name][:LIT_MAX_ROWS], rtol=1e-6, atol=1e-6)
    feeds = served.published.feeds
    (name,) = [k for k, v in feeds.items() if v.ndim == 2 and v.shape[0] == x.shape[1]]  # image rows [D, H]
    unlit = int(np.flatnonzero((x == 0).all(axis=0))[0])
    poisoned = feeds[name].copy()
    poisoned[unlit] = np.nan
    feeds[name] = poisoned
    assert np.isfinite(served._run_batch(x[:LIT_MAX_ROWS], opts)[0]["scores"]).all()
    assert np.isnan(served._run_batch(x, opts)[0]["scores"]).all()


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self) -> None:
        self.status = None

    def time_remaining(self):
        return None

    def invocation_metadata(self):
        return ()

    async def abort(self, code, details):
        self.status = (code, details)
        raise _Aborted


@pytest.mark.parametrize(
    "exc",
    [InvalidInput("bad images"), ModelNotFound("no such model"), ResourceExhausted("full"), RuntimeError("boom")],
    ids=lambda e: type(e).__name__,
)
def test_model_infer_answers_failures_like_every_unary_call(exc):
    """ModelInfer writes RpcService._unary's steps out: the same status, message and metrics
    code for the same failure (and a malformed request is INVALID_ARGUMENT with its reason)."""

    class Registry:
        def get(self, name, version):
            raise exc

    metrics = Metrics("")
    state = ServerState()
    service = InferenceService(Registry(), state, metrics)

    async def fail():
        raise exc

    async def both():
        a, b = _Context(), _Context()
        with pytest.raises(_Aborted):
            await service.ModelInfer(pb.ModelInferRequest(model_name="m"), a)
        with pytest.raises(_Aborted):
            await service._unary("Other", b, fail, "m")
        return a.status, b.status

    got, want = asyncio.run(both())
    assert got == want and got[0] == status_of(exc)[0]
    calls = metrics.calls.calls
    assert calls[("ModelInfer", got[0].name)] == calls[("Other", got[0].name)] == 1

    async def malformed():
        ctx = _Context()
        with pytest.raises(_Aborted):
            await service.ModelInfer(Malformed("inference.ModelInferRequest", "truncated"), ctx)
        return ctx.status

    code, message = asyncio.run(malformed())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid inference.ModelInferRequest" in message
