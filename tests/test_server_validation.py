"""Request validation. Bad inference inputs get INVALID_ARGUMENT with a message that names the
problem; typed ``contents`` are range-checked: a value that does not fit its datatype (300 for UINT8)
is INVALID_ARGUMENT, never wrapped (300 -> 44) and never an OverflowError (INTERNAL)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import serving_utils as su
from sjff_client.codec import DATATYPES, tensor_from_contents
from sjff_client.pb import grpc_service_pb2 as pb
from sjff_client.pb import grpc_service_pb2_grpc as pb_grpc
from sjff_server.errors import InvalidInput, RequestError
from sjff_server.harness import ServerProcess
from sjff_server.inference.engine import InferOptions, InferPlan
from sjff_server.protocol.rpc import STATUS, status_of
from sjff_server.protocol.validation import decode_infer

#: datatype -> (typed field, smallest, largest value of the datatype)
INTEGER = {
    "INT8": ("int_contents", -(2**7), 2**7 - 1),
    "INT16": ("int_contents", -(2**15), 2**15 - 1),
    "INT32": ("int_contents", -(2**31), 2**31 - 1),
    "INT64": ("int64_contents", -(2**63), 2**63 - 1),
    "UINT8": ("uint_contents", 0, 2**8 - 1),
    "UINT16": ("uint_contents", 0, 2**16 - 1),
    "UINT32": ("uint_contents", 0, 2**32 - 1),
    "UINT64": ("uint64_contents", 0, 2**64 - 1),
}


def contents(field: str, values) -> pb.InferTensorContents:
    c = pb.InferTensorContents()
    getattr(c, field).extend(values)
    return c


@pytest.mark.parametrize("datatype", list(INTEGER))
def test_integer_boundaries_are_kept_exactly(datatype):
    field, lo, hi = INTEGER[datatype]
    x = tensor_from_contents(contents(field, [lo, hi, 0]), datatype, 3)
    assert x.dtype == DATATYPES[datatype] and x.tolist() == [lo, hi, 0]


@pytest.mark.parametrize("datatype", list(INTEGER))
def test_integer_out_of_range_is_refused(datatype):
    field, lo, hi = INTEGER[datatype]
    for bad in (hi + 1, lo - 1):
        try:
            c = contents(field, [0, bad])
        except ValueError:
            continue  # the field itself cannot hold it: protobuf refuses it at the sender
        with pytest.raises(ValueError) as err:
            tensor_from_contents(c, datatype, 2)
        assert str(err.value) == f"{datatype} values must lie in [{lo}, {hi}], got {bad}"


def test_every_narrow_datatype_is_reachable_out_of_range():
    """The datatypes narrower than their field: each has values the field holds but it cannot."""
    refused = set()
    for datatype, (field, lo, hi) in INTEGER.items():
        for bad in (hi + 1, lo - 1):
            try:
                c = contents(field, [bad])
            except ValueError:
                continue
            with pytest.raises(ValueError, match="must lie in"):
                tensor_from_contents(c, datatype, 1)
            refused.add(datatype)
    assert refused == {"INT8", "INT16", "UINT8", "UINT16"}


def test_float_bool_and_counts():
    x = tensor_from_contents(contents("fp32_contents", [0.0, 1.0, -2.5]), "FP32", 3)
    assert x.dtype == np.float32 and x.tolist() == [0.0, 1.0, -2.5]
    x = tensor_from_contents(contents("fp64_contents", [1e300]), "FP64", 1)
    assert x.dtype == np.float64 and x[0] == 1e300
    assert tensor_from_contents(contents("bool_contents", [True, False]), "BOOL", 2).tolist() == [True, False]
    with pytest.raises(ValueError, match="holds 2 values, the shape needs 3"):
        tensor_from_contents(contents("uint_contents", [1, 2]), "UINT8", 3)
    for datatype in ("FP16", "BF16", "BYTES"):
        with pytest.raises(ValueError, match="cannot be sent as typed contents"):
            tensor_from_contents(pb.InferTensorContents(), datatype, 0)


def test_values_in_another_field_are_refused():
    with pytest.raises(ValueError) as err:
        tensor_from_contents(contents("fp32_contents", [1.0]), "UINT8", 1)
    assert str(err.value) == "UINT8 values go in contents.uint_contents, got values in contents.fp32_contents"
    both = contents("uint_contents", [1])
    both.int64_contents.append(1)
    with pytest.raises(ValueError, match="got values in contents.int64_contents"):
        tensor_from_contents(both, "UINT8", 1)
    with pytest.raises(ValueError, match="FP32 values go in contents.fp32_contents"):
        tensor_from_contents(contents("uint_contents", [1]), "FP32", 1)


# -- through the server's request decoding ----------------------------------------------------


class Served:
    """The parts of a served model that decode_infer reads: images [N, 4], 3 classes."""

    kind = "analog"
    in_features = 4
    num_classes = 3
    max_steps = None
    default_outputs = ("scores", "label")
    default_plan = InferPlan(InferOptions(), ("scores", "label"))


def typed_request(datatype: str, field: str, values, shape=(1, 4), model="m") -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name=model)
    t = r.inputs.add(name="images", datatype=datatype, shape=shape)
    getattr(t.contents, field).extend(values)
    return r


def refused(request) -> str:
    with pytest.raises(RequestError) as err:
        decode_infer(request, Served, 100)
    assert status_of(err.value)[0] == grpc.StatusCode.INVALID_ARGUMENT
    return err.value.message


def test_decode_infer_typed_images():
    x, _ = decode_infer(typed_request("UINT8", "uint_contents", [0, 255, 51, 1]), Served, 100)
    assert x.dtype == np.float32 and x[0, 1] == 1.0 and x[0, 0] == 0.0
    assert refused(typed_request("UINT8", "uint_contents", [0, 300, 1, 1])) == (
        "images: UINT8 values must lie in [0, 255], got 300"
    )
    assert refused(typed_request("UINT8", "uint_contents", [256, 0, 0, 70000])).endswith("got 256")
    assert "go in contents.uint_contents" in refused(typed_request("UINT8", "int64_contents", [1, 1, 1, 1]))
    assert "go in contents.fp32_contents" in refused(typed_request("FP32", "uint_contents", [0, 0, 0, 0]))
    assert "FP16 images must be sent as raw" in refused(typed_request("FP16", "fp32_contents", [0, 0, 0, 0]))
    assert "NaN or Inf" in refused(typed_request("FP32", "fp32_contents", [0, float("inf"), 0, 0]))
    # FP64 values are checked as sent, before float32 would round them into range or to Inf
    assert refused(typed_request("FP64", "fp64_contents", [0, 1e300, 0, 0])).startswith(
        "image values must lie in [0, 1], got min 0.0, max 1e+300"
    )
    assert "max 1.00000001 " in refused(typed_request("FP64", "fp64_contents", [0, 1.00000001, 0, 0]))
    assert "min -1e-50," in refused(typed_request("FP64", "fp64_contents", [0, -1e-50, 0, 0]))


def test_server_refuses_out_of_range_uint8(sjff_models, tmp_path):
    repo = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    with ServerProcess(repo, metrics=False) as srv, grpc.insecure_channel(srv.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        values = [0] * 784
        ok = stub.ModelInfer(typed_request("UINT8", "uint_contents", values, (1, 784), "mnist"), timeout=30)
        assert ok.outputs[0].name == "scores"
        values[5] = 300
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(typed_request("UINT8", "uint_contents", values, (1, 784), "mnist"), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "images: UINT8 values must lie in [0, 255], got 300"
        assert srv.alive()


def _refusals(cls: type[RequestError]):
    for sub in cls.__subclasses__():
        if sub.__module__.startswith("sjff_server."):
            yield sub
        yield from _refusals(sub)


def test_every_refusal_has_a_status_and_a_reason_named_after_it():
    """Every refusal the server defines gets a status (its own entry in rpc.STATUS, or its
    base's: a refinement such as replication's CredentialsRefused answers as Unavailable), and
    its metric label (``reason``) is that status code's name: ``refused_<reason>`` in metrics
    reads as the status a client saw. Direct subclasses of RequestError must be in STATUS."""
    import sjff_server.replication.redis_conn  # noqa: F401 - its refinements count too

    refusals = list(_refusals(RequestError))
    assert len(refusals) >= 12
    for cls in refusals:
        if RequestError in cls.__bases__:
            assert cls in STATUS, f"{cls.__name__} has no gRPC status in rpc.STATUS"
        code, _ = status_of(cls("x"))
        assert code != grpc.StatusCode.UNKNOWN or cls.__name__ == "UnknownOutcome", cls
        assert cls.reason == code.name.lower(), cls


def test_a_refinement_of_a_refusal_keeps_its_status():
    """status_of walks the class hierarchy: a subclass of a refusal is answered as its base."""

    class TooWide(InvalidInput):
        pass

    assert status_of(TooWide("too wide")) == (grpc.StatusCode.INVALID_ARGUMENT, "too wide")


@pytest.mark.parametrize(
    "value, ok",
    [
        (0.0, True),
        (-0.0, True),  # valid, though its sign bit fails the one-pass integer check
        (1.0, True),
        (np.nextafter(np.float32(1), np.float32(2)), False),
        (-np.float32(1e-45), False),  # the smallest negative subnormal
        (float("nan"), False),
        (float("inf"), False),
        (float("-inf"), False),
    ],
)
def test_raw_fp32_range_check_at_the_edges(value, ok):
    """The raw FP32 fast path (one max over the bits) accepts and refuses exactly what the
    float comparison does, at the edges of [0, 1] and for NaN and Inf."""
    x = np.full((2, 784), 0.5, np.float32)
    x[1, 783] = value
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="images", datatype="FP32", shape=[2, 784])
    request.raw_input_contents.append(x.tobytes())
    served = type("Served", (), {"in_features": 784, "default_plan": InferPlan(InferOptions(), ("scores",))})()
    if ok:
        got, _ = decode_infer(request, served, 16)
        assert got.shape == (2, 784) and np.array_equal(got.view(np.uint32), x.view(np.uint32))
    else:
        with pytest.raises(InvalidInput, match="NaN or Inf|must lie in"):
            decode_infer(request, served, 16)


# -- validation -----------------------------------------------------------------------------------


class FakeServed:
    kind = "analog"
    in_features = 4
    num_classes = 3
    max_steps = None
    default_outputs = ["scores", "label"]
    default_plan = InferPlan(InferOptions(), ("scores", "label"))

    class engine:  # noqa: N801
        outputs = {
            "scores": type("S", (), {"datatype": "FP32", "shape": (-1, 3)})(),
            "label": type("S", (), {"datatype": "INT64", "shape": (-1,)})(),
        }


def req(data, datatype="FP32", shape=None, raw=True, **kw) -> pb.ModelInferRequest:
    arr = np.asarray(data)
    r = pb.ModelInferRequest(model_name="m", **kw)
    t = r.inputs.add(name="images", datatype=datatype, shape=shape if shape is not None else arr.shape)
    if raw:
        r.raw_input_contents.append(arr.tobytes())
    else:
        t.contents.fp32_contents.extend(arr.ravel().tolist())
    return r


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (req(np.zeros((1, 5), np.float32)), "shape [N, 4]"),
        (req(np.zeros((1, 4), np.float32), shape=[1, 2, 3]), "shape [N, 4]"),
        (req(np.zeros((1, 4), np.float32), shape=[2, 4]), "hold 16 bytes"),
        (req(np.array([[0, np.nan, 0, 0]], np.float32)), "NaN or Inf"),
        (req(np.array([[0, np.inf, 0, 0]], np.float32)), "NaN or Inf"),
        (req(np.array([[0, 2, 0, 0]], np.float32)), "lie in [0, 1]"),
        (req(np.zeros((1, 4), np.int32), datatype="INT32"), "FP32"),
        (req(np.zeros((1, 4), np.float32), datatype="BYTES"), "FP32"),
        (req(np.zeros((0, 4), np.float32)), "no image"),
        (req(np.zeros((1, 4), np.float32), shape=[-1, 4]), "shape"),
        (req(np.zeros((1, 3), np.float32), raw=False, shape=[1, 4]), "holds 3 values"),
    ],
)
def test_bad_inference_inputs(request_, message):
    with pytest.raises(RequestError) as err:
        decode_infer(request_, FakeServed, 100)
    assert status_of(err.value)[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.message


def test_raw_fp16_and_fp32_out_of_range_are_refused_with_every_digit():
    half = np.array([[0, 0.5, 1, 1]], np.float16)
    half[0, 3] = np.nextafter(np.float16(1), np.float16(2))  # 1.0009765625: rounds to no float32 1
    assert "max 1.0009765625 " in refused(req(half, datatype="FP16"))
    assert "max 1.0000001192092896 " in refused(req(np.array([[0, 0, 0, 1.0000001]], np.float32)))


def test_return_latent_asks_for_the_latent_listed_outputs_or_not():
    spiking = type("Spiking", (FakeServed,), {"kind": "spiking", "max_steps": 40})
    spiking.engine = type("E", (), {"outputs": {**FakeServed.engine.outputs, "latent": None}})
    # outputs listed -> outputs answered (an analog model has no latent, listed or not)
    expected = {(): ("scores", "label", "latent"), ("scores",): ("scores", "latent"), ("latent",): ("latent",)}
    for served, ok in ((spiking, True), (FakeServed, False)):
        for listed, outputs in expected.items():
            r = req(np.zeros((1, 4), np.float32))
            r.parameters["return_latent"].bool_param = True
            for name in listed:
                r.outputs.add(name=name)
            if ok:
                _, plan = decode_infer(r, served, 100)
                assert plan.opts.latent and plan.outputs == outputs
            else:
                with pytest.raises(RequestError, match="no latent output|unknown output"):
                    decode_infer(r, served, 100)


def test_good_inference_inputs():
    x, plan = decode_infer(req(np.full((2, 4), 255, np.uint8), datatype="UINT8"), FakeServed, 100)
    assert x.dtype == np.float32 and x.max() == 1.0 and plan.outputs == ("scores", "label")
    x, _ = decode_infer(req(np.full((1, 2, 2), 0.5, np.float64), datatype="FP64"), FakeServed, 100)
    assert x.shape == (1, 4) and x.dtype == np.float32
    x, _ = decode_infer(req(np.full((1, 4), 0.25, np.float32), raw=False), FakeServed, 100)
    np.testing.assert_array_equal(x, np.full((1, 4), 0.25, np.float32))
    r = req(np.zeros((1, 4), np.float32))
    r.outputs.add(name="nope")
    with pytest.raises(RequestError, match="unknown output"):
        decode_infer(r, FakeServed, 100)
    r = req(np.zeros((1, 4), np.float32))
    r.parameters["steps"].int64_param = 3
    with pytest.raises(RequestError, match="spiking models only"):
        decode_infer(r, FakeServed, 100)
    r = req(np.zeros((1, 4), np.float32))
    r.parameters["seed"].string_param = "x"
    with pytest.raises(RequestError, match="must be an integer"):
        decode_infer(r, FakeServed, 100)
    with pytest.raises(RequestError, match="at most 1 images"):
        decode_infer(req(np.zeros((2, 4), np.float32)), FakeServed, 1)
