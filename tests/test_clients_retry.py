"""Several targets in the Python client: a learn that fails with UNAVAILABLE, UNKNOWN,
DEADLINE_EXCEEDED or a broken connection is retried on the next target with the same request_id;
infer rotates on UNAVAILABLE and sends min_version. The targets are real gRPC servers started
here that fail as each test asks (one is a process killed mid-call)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import serving_utils as su
from sjff_client import AsyncClient, Client, RetryPolicy
from sjff_client.codec import parameter_value
from sjff_client.pb import grpc_service_pb2 as pb
from sjff_client.pb import learning_pb2 as lpb
from sjff_client.targets import RETRY_LEARN, split_targets

X = np.zeros((1, 784), np.uint8)
HANG = "hang"


class Replica:
    """A gRPC server with Learn, LearnStream and ModelInfer. Each call takes the next item of
    ``script`` (a status name to fail with, or HANG: never answer until closed); once it is
    empty, calls succeed (Learn answers ``version``). Every request received is kept."""

    def __init__(self, *script: str, version: int = 7) -> None:
        self.script = list(script)
        self.version = version
        self.learns: list[lpb.LearnRequest] = []
        self.infers: list[pb.ModelInferRequest] = []
        self.release = threading.Event()
        learning = lpb.DESCRIPTOR.services_by_name["Learning"].full_name
        inference = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
        handlers = [
            grpc.method_handlers_generic_handler(
                learning,
                {
                    "Learn": grpc.unary_unary_rpc_method_handler(
                        self._learn, lpb.LearnRequest.FromString, lpb.LearnResponse.SerializeToString
                    ),
                    "LearnStream": grpc.stream_stream_rpc_method_handler(
                        self._learn_stream, lpb.LearnRequest.FromString, lpb.LearnResponse.SerializeToString
                    ),
                },
            ),
            grpc.method_handlers_generic_handler(
                inference,
                {
                    "ModelInfer": grpc.unary_unary_rpc_method_handler(
                        self._infer, pb.ModelInferRequest.FromString, pb.ModelInferResponse.SerializeToString
                    )
                },
            ),
        ]
        self.server = grpc.server(ThreadPoolExecutor(max_workers=4), handlers=handlers)
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _fail(self, context) -> None:
        if self.script:
            step = self.script.pop(0)
            if step == HANG:
                self.release.wait()
                context.abort(grpc.StatusCode.CANCELLED, "released")
            context.abort(grpc.StatusCode[step], f"scripted {step}")

    def _learn(self, request, context):
        self.learns.append(request)
        self._fail(context)
        return lpb.LearnResponse(version=self.version, log_odds=[0.5], id=request.id)

    def _learn_stream(self, requests, context):
        for i, request in enumerate(requests):
            self.learns.append(request)
            yield lpb.LearnResponse(version=self.version + i, log_odds=[0.5], id=request.id)

    def _infer(self, request, context):
        self.infers.append(request)
        self._fail(context)
        resp = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        resp.parameters["sjff_version"].int64_param = self.version
        n = request.inputs[0].shape[0]  # every image gets label 0 with probability 1
        resp.outputs.add(name="label", datatype="INT64", shape=[n])
        resp.outputs.add(name="probability", datatype="FP32", shape=[n, 1])
        resp.raw_output_contents.extend([np.zeros(n, "<i8").tobytes(), np.ones(n, "<f4").tobytes()])
        return resp

    @property
    def request_ids(self) -> list[str]:
        return [r.request_id for r in self.learns]

    def close(self) -> None:
        self.release.set()
        self.server.stop(None)


@pytest.fixture
def replicas():
    made: list[Replica] = []

    def make(*script: str, version: int = 7) -> Replica:
        made.append(Replica(*script, version=version))
        return made[-1]

    yield make
    for r in made:
        r.close()


def learn_both(targets: list[str], **kw) -> list:
    """One learn from Client and one from AsyncClient: their results, or the errors they raised."""
    out = []
    with Client(targets=targets, token=su.TOKEN, backoff_s=0.0, **kw) as c:
        try:
            out.append(c.learn(X, [1]))
        except grpc.RpcError as exc:
            out.append(exc)

    async def run():
        async with AsyncClient(targets=targets, token=su.TOKEN, backoff_s=0.0, **kw) as c:
            try:
                return await c.learn(X, [1])
            except grpc.RpcError as exc:
                return exc

    out.append(asyncio.run(run()))
    return out


def closed_target() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def is_uuid4(text: str) -> bool:
    return uuid.UUID(text).version == 4 and str(uuid.UUID(text)) == text


@pytest.mark.parametrize("code", ["UNAVAILABLE", "UNKNOWN"])
def test_learn_moves_to_the_next_target_with_the_same_request_id(replicas, code):
    a, b = replicas(code, code), replicas()
    results = learn_both([a.target, b.target])
    assert [r.version for r in results] == [7, 7]
    assert len(a.request_ids) == len(b.request_ids) == 2
    for i, r in enumerate(results):  # Client, then AsyncClient: each sent one key, to both targets
        assert a.request_ids[i] == b.request_ids[i] == r.request_id and is_uuid4(r.request_id)
    assert a.request_ids[0] != a.request_ids[1]  # a fresh key per call


def test_learn_retries_after_a_deadline(replicas):
    """The first target never answers: the call's deadline passes and the next target gets the
    same request (a replicated server that applied it meanwhile answers the original result)."""
    a, b = replicas(HANG, HANG), replicas()
    results = learn_both([a.target, b.target], timeout=1.0)
    assert [r.version for r in results] == [7, 7]
    assert a.request_ids == b.request_ids == [r.request_id for r in results]


HANDLER = """
import os, signal, sys
from concurrent.futures import ThreadPoolExecutor
import grpc
from sjff_client.pb import learning_pb2 as lpb

def learn(request, context):  # note the key, then die mid-call: the client's connection breaks
    with open(sys.argv[1], "a") as f:
        f.write(request.request_id + "\\n")
    os.kill(os.getpid(), signal.SIGKILL)

service = lpb.DESCRIPTOR.services_by_name["Learning"].full_name
handler = grpc.unary_unary_rpc_method_handler(learn, lpb.LearnRequest.FromString, lpb.LearnResponse.SerializeToString)
server = grpc.server(ThreadPoolExecutor(2))
server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {"Learn": handler})])
print(server.add_insecure_port("127.0.0.1:0"), flush=True)
server.start()
server.wait_for_termination()
"""


def dying_replica(seen) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-c", HANDLER, str(seen)], stdout=subprocess.PIPE, text=True)
    return p, f"127.0.0.1:{p.stdout.readline().strip()}"


def test_learn_survives_a_replica_killed_mid_call(replicas, tmp_path):
    seen = tmp_path / "seen"
    b = replicas()

    def sync_learn(target: str):
        with Client(targets=[target, b.target], token=su.TOKEN, backoff_s=0.0) as c:
            return c.learn(X, [1])

    def async_learn(target: str):
        async def run():
            async with AsyncClient(targets=[target, b.target], token=su.TOKEN, backoff_s=0.0) as c:
                return await c.learn(X, [1])

        return asyncio.run(run())

    for learn in (sync_learn, async_learn):
        p, target = dying_replica(seen)
        try:
            r = learn(target)
            assert p.wait(timeout=30) == -signal.SIGKILL
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
        assert r.version == 7 and seen.read_text().split()[-1] == b.request_ids[-1] == r.request_id
    assert len(b.request_ids) == 2


def test_learn_gives_up_on_refusals_and_after_the_attempts(replicas):
    # a refusal is final: never sent elsewhere
    for code in ("ABORTED", "INVALID_ARGUMENT", "FAILED_PRECONDITION"):
        a, b = replicas(code, code), replicas()
        errors = learn_both([a.target, b.target])
        assert [e.code().name for e in errors] == [code, code] and b.learns == []
    # one target: no retry by default (attempts=N asks for retries there)
    a = replicas("UNAVAILABLE", "UNAVAILABLE")
    assert [e.code().name for e in learn_both([a.target])] == ["UNAVAILABLE"] * 2 and len(a.learns) == 2
    # attempts bound the calls, round robin over the targets, one key throughout
    a, b = replicas(*["UNAVAILABLE"] * 6), replicas(*["UNAVAILABLE"] * 4)
    errors = learn_both([f"{a.target},{b.target}"], attempts=5)
    assert [e.code().name for e in errors] == ["UNAVAILABLE"] * 2
    assert len(a.learns) == 6 and len(b.learns) == 4  # 3 + 2 per client
    assert set(a.request_ids[:3] + b.request_ids[:2]) == {a.request_ids[0]}
    # a target where nothing listens is UNAVAILABLE too
    b = replicas()
    with Client(targets=[closed_target(), b.target], token=su.TOKEN, backoff_s=0.0) as c:
        assert c.learn(X, [1], request_id="mine").request_id == "mine" and b.request_ids == ["mine"]


def test_infer_rotates_on_unavailable_and_sends_min_version(replicas):
    a, b = replicas("UNAVAILABLE", "UNKNOWN"), replicas(version=9)
    with Client(targets=[a.target, b.target], backoff_s=0.0) as c:
        r = c.infer(X, min_version=5)
        assert r.version == 9
        with pytest.raises(grpc.RpcError) as err:  # UNKNOWN is not retried for inference ...
            Client(a.target).infer(X)
        assert err.value.code() == grpc.StatusCode.UNKNOWN
        assert c.infer(X).version == 9  # ... and the client stays on the target that answered
    params = [{k: parameter_value(v) for k, v in req.parameters.items()} for req in a.infers[:1] + b.infers]
    assert params == [{"min_version": 5}, {"min_version": 5}, {}]
    assert b.infers[0].parameters["min_version"].WhichOneof("parameter_choice") == "int64_param"

    async def run():
        async with AsyncClient(targets=[a.target, b.target], backoff_s=0.0) as ac:
            return await ac.infer(X, min_version=3)

    a.script = ["UNAVAILABLE"]
    assert asyncio.run(run()).version == 9 and b.infers[-1].parameters["min_version"].int64_param == 3
    with pytest.raises(ValueError, match="min_version"):
        Client(b.target).infer(X, min_version=-1)


def test_learn_stream_sends_one_key_per_sample(replicas):
    b = replicas()
    samples = [(X, [1]), (X, [2], [True]), (X, [3], None, "given-key")]
    with Client(b.target, token=su.TOKEN) as c:
        results = list(c.learn_stream(iter(samples)))

    async def run():
        async with AsyncClient(b.target, token=su.TOKEN) as ac:
            return [r async for r in ac.learn_stream(samples)]

    results += asyncio.run(run())
    keys = b.request_ids
    assert [r.request_id for r in results] == keys and len(set(keys)) == 5
    assert keys[2] == keys[5] == "given-key" and all(is_uuid4(k) for k in keys[:2] + keys[3:5])
    assert [r.labels[0] for r in b.learns] == [1, 2, 3] * 2 and b.learns[1].positive == [True]


def test_retry_policy_and_target_lists():
    p = RetryPolicy(attempts=4, backoff_s=0.3)
    assert [p.delay_s(grpc.StatusCode.UNAVAILABLE, k, RETRY_LEARN) for k in (1, 2, 3, 4)] == [0.3, 0.6, 1.0, None]
    assert p.delay_s(grpc.StatusCode.ABORTED, 1, RETRY_LEARN) is None
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    assert split_targets(["a:1, b:2", "c:3", ""]) == ["a:1", "b:2", "c:3"]
    with pytest.raises(ValueError, match="targets is empty"):
        Client(targets=[])
    with pytest.raises(ValueError, match="channel"):
        Client(targets=["a:1", "b:1"], channel=grpc.insecure_channel("a:1"))


def test_cli_takes_several_targets_and_a_request_id(replicas, tmp_path):
    a, b = replicas("UNAVAILABLE"), replicas(version=12)
    idx = tmp_path / "images-idx3-ubyte"
    idx.write_bytes(struct.pack(">BBBBIII", 0, 0, 8, 3, 1, 28, 28) + bytes(784))
    env = dict(os.environ, SJFF_TOKEN=su.TOKEN)
    cmd = [sys.executable, "-m", "sjff_client", "--json", "--target", a.target, "--target", b.target]
    p = subprocess.run(
        [*cmd, "learn", str(idx), "--label", "3", "--request-id", "cli-key"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert '"version": 12' in p.stdout and '"request_id": "cli-key"' in p.stdout
    assert a.request_ids == b.request_ids == ["cli-key"]
    env["SJFF_TARGET"] = f"{a.target},{b.target}"
    a.script = ["UNAVAILABLE"]
    p = subprocess.run(
        [sys.executable, "-m", "sjff_client", "--json", "infer", str(idx), "--min-version", "4"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert '"version": 12' in p.stdout and b.infers[-1].parameters["min_version"].int64_param == 4
