"""benchmarks/serve_steps.py times what its table says: every ModelInfer call's handler, its
decoding (with the images' range check), the model's run and the answer, in the server's own
process, without changing a single answer; its summary drops the warm-up and splits the
handler's time call by call."""

from __future__ import annotations

import json
import sys

import grpc
import numpy as np
import pytest
import serving_utils as su
from sjff_client.pb import grpc_service_pb2 as pb
from sjff_server.harness import ServerProcess

sys.path.insert(0, str(su.ROOT / "benchmarks"))
import serve_steps  # noqa: E402
import serve_workers as workers  # noqa: E402


def _request(i: int) -> bytes:
    req = pb.ModelInferRequest(model_name="mnist", id=f"steps-{i}")
    req.inputs.add(name="images", datatype="FP32", shape=[1, 784])
    image = np.zeros((1, 784), np.float32)
    image[0, 50 * i : 50 * i + 300] = 0.1 * (i + 1)
    req.raw_input_contents.append(image.tobytes())
    return req.SerializeToString()


def _answers(srv, payloads: list[bytes]) -> list[bytes]:
    with grpc.insecure_channel(srv.target) as channel:
        call = channel.unary_unary(workers.INFER)  # bytes in, bytes out
        return [call(p, timeout=30) for p in payloads]


def test_timed_server_times_each_step_of_every_call_and_answers_as_shipped(sjff_models, tmp_path):
    root = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    payloads = [_request(i) for i in range(5)]
    bad = pb.ModelInferRequest(model_name="mnist")
    bad.inputs.add(name="images", datatype="FP32", shape=[1, 784])
    bad.raw_input_contents.append(np.full((1, 784), 2.0, np.float32).tobytes())  # out of [0, 1]
    out = tmp_path / "steps.json"
    with serve_steps.timed_server(root, out) as srv:
        timed = _answers(srv, payloads)
        with pytest.raises(grpc.RpcError) as err, grpc.insecure_channel(srv.target) as channel:
            channel.unary_unary(workers.INFER)(bad.SerializeToString(), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with ServerProcess(root) as srv:
        shipped = _answers(srv, payloads)
    assert timed == shipped  # the timers change no answer
    samples = json.loads(out.read_text())  # written when the server exited
    # the refused call ran the handler, its decoding and the range check, not the model
    assert [len(samples[k]) for k in ("handler", "decode", "check", "model", "answer")] == [6, 6, 6, 5, 5]
    for i, h in enumerate(samples["handler"][:5]):  # nested steps take part of the handler's time
        assert h > samples["decode"][i] + samples["model"][i] + samples["answer"][i] > 0
        assert samples["decode"][i] > samples["check"][i] > 0


def test_timed_calls_leave_out_every_warm_up():
    # 320 warm-up calls, then two runs of the generator: 20 calls of its own warm-up, 5 timed
    assert serve_steps.timed_calls(320, 2, 20, 5) == [range(340, 345), range(365, 370)]
    assert serve_steps.timed_calls(0, 1, 0, 3) == [range(0, 3)]


def test_summary_keeps_the_timed_calls_and_splits_the_handler_call_by_call():
    ns = 1000  # 1 µs
    samples = {
        "handler": [999 * ns, 100 * ns, 998 * ns, 200 * ns, 300 * ns],
        "decode": [1 * ns, 10 * ns, 1 * ns, 20 * ns, 30 * ns],
        "check": [1 * ns, 5 * ns, 1 * ns, 5 * ns, 5 * ns],
        "model": [1 * ns, 50 * ns, 1 * ns, 100 * ns, 150 * ns],
        "answer": [1 * ns, 10 * ns, 1 * ns, 20 * ns, 30 * ns],
    }
    steps = serve_steps.summarise(samples, [range(1, 2), range(3, 5)])
    assert steps["ModelInfer handler"][1] == 200  # the warm-up calls' 999 and 998 µs are left out
    p10, p50, p90 = steps[serve_steps.REST]  # 100-70, 200-140, 300-210 µs
    assert p50 == 60 and 30 <= p10 < p50 < p90 <= 90
    table = serve_steps.report(steps, {"echo": [0.4, 0.5], "server": [0.6, 0.8]}, 3)
    assert "server − echo 250 µs [200, 300]" in table
    assert f"| the rest of the handler | {p10:.1f} | 60.0 | {p90:.1f} |" in table


def test_summary_refuses_calls_that_did_not_run_each_step_once():
    samples = {"handler": [5, 5], "decode": [1, 1], "check": [1, 1], "model": [1], "answer": [1, 1]}
    with pytest.raises(ValueError, match="once"):
        serve_steps.summarise(samples, [range(2)])
    with pytest.raises(ValueError, match="no timed call"):
        serve_steps.summarise({k: [] for k in samples}, [range(0)])


def test_arguments_split_server_args_and_refuse_bad_ones():
    args = serve_steps.parse_args(["--server-args", "--cpu-latency-us 0 --workers '2'"])
    assert args.server_args == ["--cpu-latency-us", "0", "--workers", "2"] and args.calls == 1500
    for bad in (["--server-args", "'open"], ["--calls", "0"], ["--rounds", "-1"]):
        with pytest.raises(SystemExit):
            serve_steps.parse_args(bad)
