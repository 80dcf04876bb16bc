"""Fuzz run: thousands of malformed requests against a real server; it must answer every one with
a status (never INTERNAL/UNKNOWN for a well-formed message) and keep serving."""

from __future__ import annotations

import collections
import os

import grpc
import numpy as np
import pytest
import serving_utils as su
from sjff_client import Client
from sjff_client.pb import grpc_service_pb2 as pb
from sjff_client.pb import learning_pb2 as lpb
from sjff_server.harness import ServerProcess

COUNT = int(os.environ.get("SJFF_FUZZ_COUNT", "1500"))
DATATYPES = ["FP32", "UINT8", "FP64", "FP16", "INT64", "INT32", "BOOL", "BYTES", "BF16", "", "fp32", "X" * 300]
NAMES = ["mnist", "snn", "", "nope", "mnist\x00", "../mnist", "m" * 5000]
NAME_P = [0.6, 0.2, 0.04, 0.04, 0.04, 0.04, 0.04]


def random_value(rng):
    kind = rng.integers(0, 6)
    return [
        lambda: pb.InferParameter(bool_param=bool(rng.integers(0, 2))),
        lambda: pb.InferParameter(int64_param=int(rng.integers(-(2**63), 2**63 - 1))),
        lambda: pb.InferParameter(string_param="x" * int(rng.integers(0, 50))),
        lambda: pb.InferParameter(double_param=float(rng.choice([np.nan, np.inf, -1.0, 1e308, 0.5]))),
        lambda: pb.InferParameter(uint64_param=int(rng.integers(0, 2**63)) * 2),
        lambda: pb.InferParameter(),
    ][kind]()


def infer_request(rng) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(
        model_name=str(rng.choice(NAMES, p=NAME_P)), model_version=str(rng.choice(["", "1", "0", "-1", "99", "x"]))
    )
    for _ in range(int(rng.choice([0, 1, 1, 1, 2, 3]))):
        shape = [int(rng.choice([-1, 0, 1, 2, 7, 784, 28, 2**40, -(2**62)])) for _ in range(int(rng.integers(0, 4)))]
        t = r.inputs.add(
            name=str(rng.choice(["images", "images", "x", ""])), datatype=str(rng.choice(DATATYPES)), shape=shape
        )
        if rng.random() < 0.3:
            t.contents.fp32_contents.extend(rng.standard_normal(int(rng.integers(0, 1600))).astype(np.float32).tolist())
        if rng.random() < 0.1:
            t.contents.uint_contents.extend(rng.integers(0, 2**32, int(rng.integers(0, 900))).tolist())
        if rng.random() < 0.6:
            n = int(rng.choice([0, 1, 783, 784, 3136, 3135, 6272, 100_000]))
            data = rng.integers(0, 256, n, dtype=np.uint8)
            if rng.random() < 0.5 and n % 4 == 0 and n:  # plausible floats, sometimes NaN/Inf/out of range
                f = rng.random(n // 4).astype(np.float32)
                f[rng.integers(0, n // 4, 3)] = rng.choice([np.nan, np.inf, -1.0, 2.0, 0.5])
                data = f.view(np.uint8)
            r.raw_input_contents.append(data.tobytes())
    for _ in range(int(rng.integers(0, 3))):
        o = r.outputs.add(name=str(rng.choice(["scores", "label", "latent", "goodness", "nope", ""])))
        if rng.random() < 0.3:
            o.parameters["classification"].CopyFrom(random_value(rng))
    for key in rng.choice(["seed", "steps", "return_latent", "typed_output", "priority", "x"], int(rng.integers(0, 4))):
        r.parameters[str(key)].CopyFrom(random_value(rng))
    return r


def learn_request(rng) -> lpb.LearnRequest:
    n = int(rng.choice([0, 1, 2, 5]))
    labels = rng.integers(-3, 14, n if rng.random() < 0.8 else n + 1).tolist()
    r = lpb.LearnRequest(
        model_name=str(rng.choice(NAMES, p=NAME_P)), labels=labels, encoding=int(rng.choice([0, 1, 2, 7, -1]))
    )
    size = int(rng.choice([n * 784, n * 3136, n * 3136 + 1, 0, 5]))
    if rng.random() < 0.5:
        f = rng.random(max(0, size // 4)).astype(np.float32)
        if f.size and rng.random() < 0.3:
            f[0] = rng.choice([np.nan, np.inf, 7.0])
        r.images = f.tobytes()
    else:
        r.images = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    r.positive.extend(rng.integers(0, 2, int(rng.choice([0, n, n + 2]))).astype(bool).tolist())
    if rng.random() < 0.5:
        r.eta = float(rng.choice([0.0, -1.0, np.nan, np.inf, 1e-3, 0.1, 1e30]))
    if rng.random() < 0.3:
        r.seed = int(rng.integers(0, 2**63)) * 2
    if rng.random() < 0.2:
        r.expected_version = int(rng.integers(0, 5))
    return r


@pytest.fixture(scope="module")
def server(sjff_models, tmp_path_factory, token_path):
    root = su.make_repository(
        tmp_path_factory.mktemp("repo"), {"mnist": sjff_models["analog"], "snn": sjff_models["spike"]}
    )
    state = tmp_path_factory.mktemp("state")
    args = ["--max-message-bytes", str(1 << 20), "--max-request-rows", "64", "--max-eta", "1.0"]
    with ServerProcess(root, state_dir=state, token_file=token_path, extra_args=args, metrics=False) as srv:
        yield srv


def test_fuzz_malformed_requests(server, token_path):
    rng = np.random.default_rng(12345)
    channel = grpc.insecure_channel(server.target)
    raw_methods = [
        "/inference.GRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceService/ModelMetadata",
        "/spikingjelly_ff.v1.Learning/Learn",
        "/spikingjelly_ff.v1.Learning/Rollback",
    ]
    metadata = (("authorization", f"Bearer {su.TOKEN}"),)
    codes: collections.Counter = collections.Counter()
    wellformed_bad: list[str] = []
    tried = 0
    for i in range(COUNT):
        tried += 1
        choice = i % 10
        try:
            if choice < 5:
                req = infer_request(rng)
                channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(req.SerializeToString(), timeout=10)
                code = "OK"
            elif choice < 8:
                req = learn_request(rng)
                md = metadata if rng.random() < 0.9 else ()
                channel.unary_unary("/spikingjelly_ff.v1.Learning/Learn")(
                    req.SerializeToString(), timeout=10, metadata=md
                )
                code = "OK"
            elif choice == 8:  # arbitrary bytes: mostly not even a protobuf message
                blob = rng.integers(0, 256, int(rng.integers(0, 5000)), dtype=np.uint8).tobytes()
                channel.unary_unary(str(rng.choice(raw_methods)))(blob, timeout=10, metadata=metadata)
                code = "OK"
            else:  # streams mixing good and bad requests
                reqs = [infer_request(rng).SerializeToString() for _ in range(int(rng.integers(1, 6)))]
                if rng.random() < 0.3:  # a message in the stream that is not a message at all
                    reqs.insert(int(rng.integers(0, len(reqs))), b"\xff\xff\xff" + rng.bytes(int(rng.integers(0, 200))))
                responses = list(
                    channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(iter(reqs), timeout=10)
                )
                assert len(responses) == len(reqs)
                code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
            if code in ("INTERNAL", "UNKNOWN"):
                wellformed_bad.append(f"{code}: {exc.details()}")
        codes[code] += 1
    channel.close()
    print(f"fuzz: {tried} requests, status codes {dict(codes)}")
    assert tried == COUNT and not wellformed_bad, wellformed_bad[:5]
    assert (
        codes["INVALID_ARGUMENT"] > COUNT // 3
        and "UNKNOWN" not in codes
        and codes["NOT_FOUND"] > 0
        and codes["UNAUTHENTICATED"] > 0
    )
    assert server.alive()
    with Client(server.target) as c:  # still serving
        assert c.server_live() and c.server_ready()
        assert c.infer(np.zeros((1, 784), np.uint8)).label.shape == (1,)
    internal_errors = [r for r in server.log_records() if r["level"] == "error"]
    assert not internal_errors, internal_errors[:3]
