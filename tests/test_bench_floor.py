"""benchmarks/serve_floor.py's server variants are what its table says: ``sjff serve`` whose
ModelInfer returns the request bytes (at once, or one event-loop turn later), parses the
request and answers an empty response, or runs the shipped handler without the model (alone,
or with the model on a blank image, or with a one-node onnxruntime graph: ``--model-split``);
and the server as shipped."""

from __future__ import annotations

import sys

import grpc
import numpy as np
import pytest
import serving_utils as su
from sjff_client.pb import grpc_service_pb2 as pb

sys.path.insert(0, str(su.ROOT / "benchmarks"))
import serve_floor  # noqa: E402
import serve_measure  # noqa: E402
import serve_workers as workers  # noqa: E402


def _request(half: int = 0) -> bytes:
    """One image whose upper (0) or lower (1) half is lit."""
    req = pb.ModelInferRequest(model_name="mnist", id="floor")
    req.inputs.add(name="images", datatype="FP32", shape=[1, 784])
    image = np.zeros((1, 784), np.float32)
    image[0, half * 392 : (half + 1) * 392] = 0.25
    req.raw_input_contents.append(image.tobytes())
    return req.SerializeToString()


@pytest.mark.parametrize("variant", sorted(serve_floor.ALL_VARIANTS))
def test_variant_answers_as_described(variant, sjff_models, tmp_path):
    root = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    payload = _request()
    with serve_floor.variant_server(variant, root) as srv, grpc.insecure_channel(srv.target) as channel:
        call = channel.unary_unary(workers.INFER)  # bytes in, bytes out
        answer = call(payload, timeout=30)
        ready = pb.ServerReadyResponse.FromString(
            channel.unary_unary("/inference.GRPCInferenceService/ServerReady")(b"", timeout=30)
        )
    assert ready.ready  # the other methods are the server's own
    if variant in ("server", "no-model", *serve_floor.MODEL_SPLIT):
        out = pb.ModelInferResponse.FromString(answer)
        assert out.model_name == "mnist" and out.id == "floor"
        assert [o.name for o in out.outputs] and len(out.raw_output_contents) == len(out.outputs)
    elif variant == "parse":
        assert pb.ModelInferResponse.FromString(answer) == pb.ModelInferResponse(model_name="mnist", id="floor")
    else:
        assert answer == payload


@pytest.mark.parametrize("variant", ["server", "no-model", *serve_floor.MODEL_SPLIT])
def test_no_model_variant_answers_the_first_outputs_again(variant, sjff_models, tmp_path):
    root = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    with serve_floor.variant_server(variant, root) as srv, grpc.insecure_channel(srv.target) as channel:
        call = channel.unary_unary(workers.INFER)
        first, second, again = (pb.ModelInferResponse.FromString(call(_request(h), timeout=30)) for h in (0, 1, 0))
    assert first.raw_output_contents == again.raw_output_contents  # the same image: the same outputs
    same = first.raw_output_contents == second.raw_output_contents
    assert same == (variant != "server")  # another image: other scores, unless the model does not run


def test_model_split_variants_run_their_part_of_the_model(monkeypatch):
    """``blank`` runs the engine once more per batch, on zeros of the batch's shape;
    ``one-node`` an Identity graph; both answer the first batch's outputs."""
    from sjff_server.inference.engine import AnalogEngine

    seen: list[np.ndarray] = []

    def shipped(self, pub, x, opts):
        seen.append(x.copy())
        return {"scores": x.sum(axis=1)}

    x = np.full((2, 784), 0.5, np.float32)
    monkeypatch.setattr(AnalogEngine, "run", shipped)
    serve_floor._reuse_model_outputs("blank")
    assert AnalogEngine.run(None, None, x, None)["scores"].tolist() == [392.0, 392.0]
    assert AnalogEngine.run(None, None, 2 * x, None)["scores"].tolist() == [392.0, 392.0]  # the first outputs
    assert [a.max() for a in seen] == [0.5, 0.0, 0.0] and all(a.shape == x.shape for a in seen)

    import onnxruntime as ort

    ran: list[np.ndarray] = []
    real_session = ort.InferenceSession

    def session(*args, **kwargs):  # records what the one-node graph is run on
        inner = real_session(*args, **kwargs)._sess

        class Binding:
            def run(self, names, feeds, options):
                ran.append(feeds["x"])
                return inner.run(names, feeds, options)

        class Session:
            _sess = Binding()

        return Session()

    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setattr(AnalogEngine, "run", shipped)
    seen.clear()
    serve_floor._reuse_model_outputs("one-node")
    assert AnalogEngine.run(None, None, x, None)["scores"].tolist() == [392.0, 392.0]
    AnalogEngine.run(None, None, 2 * x, None)
    assert len(seen) == 1  # the engine ran once, for the first batch
    assert [a.max() for a in ran] == [0.5, 1.0]  # the one-node graph on every batch


def test_serve_mode_refuses_an_unknown_variant():
    with pytest.raises(SystemExit, match="expected one of"):
        serve_floor.main(["serve", "nothing"])


def test_compare_takes_server_arguments_and_refuses_empty_repeated_or_unbalanced_ones():
    args = serve_floor.parse_args(
        ["--compare", "--batch-window-us 4000", "--compare=--reuse-port", "--compare= --workers  '2' "]
    )
    assert args.compare == ["--batch-window-us 4000", "--reuse-port", "--workers 2"]
    for bad in (
        ["--compare", " "],
        ["--compare=--workers 2", "--compare=--workers  2"],  # the same arguments, spelled twice
        ["--compare=--cpus '0"],
    ):
        with pytest.raises(SystemExit):
            serve_floor.parse_args(bad)


def test_the_model_run_time_is_read_from_the_servers_metrics(sjff_models, tmp_path):
    """serve.py's "engine call inside the server" row: sjff_inference_batch_seconds counts one
    batch per lone call, and the model's time grows with them."""
    root = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    with serve_floor.variant_server("server", root) as srv, grpc.insecure_channel(srv.target) as channel:
        call = channel.unary_unary(workers.INFER)
        seconds0, batches0 = serve_measure.model_run(serve_measure.scrape(srv))
        for _ in range(3):
            call(_request(), timeout=30)
        seconds, batches = serve_measure.model_run(serve_measure.scrape(srv))
    assert batches - batches0 == 3
    assert seconds > seconds0
