"""Several ``sjff serve`` processes on one port (``--reuse-port``, SO_REUSEPORT): the kernel
spreads new connections over them (read-only, or replicas learning through one Redis
stream); a process that did not ask to share keeps its port; and a combination that would
split the learning state is refused before anything starts."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request

import grpc
import numpy as np
import pytest
import serving_utils as su
from redis_utils import redis_server  # noqa: F401 - a fixture
from sjff_client.client import build_infer_request
from sjff_client.messages import build_learn_request, parse_infer_response
from sjff_client.pb import grpc_service_pb2_grpc as pb_grpc
from sjff_client.pb import learning_pb2_grpc as lpb_grpc
from sjff_server.harness import ServerProcess, free_port

LEARN_OK = 'code="OK",method="Learn"'  # the text format sorts labels
MNIST_1 = 'model="mnist",version="1"'


def _metric(srv: ServerProcess, name: str, labels: str) -> float:
    """One sample of ``srv``'s own metrics (0 where absent)."""
    text = urllib.request.urlopen(srv.metrics_url, timeout=10).read().decode()
    found = re.findall(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(found[0]) if found else 0.0


def _images_inferred(srv: ServerProcess) -> float:
    return _metric(srv, "sjff_inference_images_total", MNIST_1)


def _new_connection(target: str) -> grpc.Channel:
    # a local subchannel pool: every channel opens its own TCP connection (channels with equal
    # arguments would otherwise share one), which the kernel hands to one of the processes
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def _once_loaded(call, deadline_s: float = 120.0):
    """``call()`` on a new connection, again while the process it reached is still loading the
    replicated state (UNAVAILABLE, "retry"; nothing was appended): both processes start
    together, and how long a replica takes to load depends on the machine."""
    stop = time.monotonic() + deadline_s
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            loading = exc.code() == grpc.StatusCode.UNAVAILABLE and "still loading" in (exc.details() or "")
            if not loading or time.monotonic() > stop:
                raise
            time.sleep(0.1)


def _infer_on_new_connection(target: str, request) -> int:
    with _new_connection(target) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    return int(parse_infer_response(reply).label[0])


def test_processes_sharing_a_port_all_answer(sjff_models, tmp_path):
    repo = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    port = free_port()
    args = ["--port", str(port), "--reuse-port"]
    images, _ = su.mnist_test(1)
    request = build_infer_request(images.astype(np.float32) / 255.0, "mnist")
    calls = 64  # all on one process: probability 2 * 2**-64
    with ServerProcess(repo, extra_args=args) as a, ServerProcess(repo, extra_args=args) as b:
        assert a.info["port"] == b.info["port"] == port
        labels = {_infer_on_new_connection(f"127.0.0.1:{port}", request) for _ in range(calls)}
        served = [_images_inferred(a), _images_inferred(b)]
    assert sum(served) == calls and min(served) > 0, served
    assert len(labels) == 1  # the same model answers on either process


def test_replicas_sharing_a_port_learn_through_one_stream(sjff_models, tmp_path, redis_server, token_path):  # noqa: F811
    """Learns land on either process, each is acknowledged with the next version of the one
    stream, a read of that version on a new connection sees it, and both processes end at the
    last version answering alike."""
    repo = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    port = free_port()
    args = ["--port", str(port), "--reuse-port", "--replication", redis_server.url, "--replication-max-lag", "0"]
    token = (("authorization", f"Bearer {token_path.read_text().strip()}"),)
    images, labels = su.mnist_test(40)
    x = images.astype(np.float32) / 255.0
    target = f"127.0.0.1:{port}"
    learns = 32  # all on one process: probability 2 * 2**-32
    with (
        ServerProcess(repo, token_file=token_path, extra_args=args) as a,
        ServerProcess(repo, token_file=token_path, extra_args=args) as b,
    ):
        def learn(req):
            with _new_connection(target) as channel:
                return lpb_grpc.LearningStub(channel).Learn(req, metadata=token, timeout=60)

        def infer(req):
            with _new_connection(target) as channel:
                return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=60)

        for i in range(learns):
            req = build_learn_request(x[i : i + 1], [int(labels[i])], None, "mnist")
            assert _once_loaded(lambda: learn(req)).version == i + 1
            read = build_infer_request(x[:2], "mnist", parameters={"min_version": i + 1})
            assert _once_loaded(lambda: infer(read)).parameters["sjff_version"].int64_param >= i + 1
        took = [_metric(s, "sjff_grpc_requests_total", LEARN_OK) for s in (a, b)]
        final = build_infer_request(x[32:40], "mnist", parameters={"min_version": learns})
        answers = set()
        for _ in range(16):
            answers.add(_once_loaded(lambda: infer(final)).raw_output_contents[1])
        versions = [_metric(s, "sjff_model_version", MNIST_1) for s in (a, b)]
    assert min(took) > 0 and sum(took) == learns, took
    assert versions == [learns, learns]
    assert len(answers) == 1  # the same weights on both


@pytest.mark.parametrize("first_shares", [False, True])
def test_a_port_is_shared_only_when_every_process_asks(sjff_models, tmp_path, first_shares):
    repo = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    port = free_port()
    first = ["--port", str(port)] + (["--reuse-port"] if first_shares else [])
    second = ["--port", str(port)] + ([] if first_shares else ["--reuse-port"])
    with ServerProcess(repo, extra_args=first, metrics=False) as a:
        with pytest.raises(RuntimeError, match="exited with 2") as failed:
            ServerProcess(repo, extra_args=second, metrics=False).start()
        assert f"cannot listen on 127.0.0.1:{port}" in str(failed.value)
        assert a.alive()


def test_a_taken_metrics_port_is_named(sjff_models, tmp_path):
    """The likeliest mistake with --reuse-port: two processes left on one --metrics-port. The
    second is refused before it joins the shared gRPC port."""
    repo = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    port, metrics = free_port(), free_port()
    args = ["--port", str(port), "--reuse-port", "--metrics-port", str(metrics)]
    with ServerProcess(repo, extra_args=args, metrics=False) as a:
        with pytest.raises(RuntimeError, match="exited with 2") as failed:
            ServerProcess(repo, extra_args=args, metrics=False).start()
        assert f"cannot serve metrics on 0.0.0.0:{metrics}" in str(failed.value)
        assert a.alive()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "0"], "--reuse-port needs a fixed --port"),
        (["--port", "8123", "--state-dir", "STATE"], "--reuse-port with --state-dir needs --replication"),
    ],
)
def test_port_sharing_that_would_split_learning_is_refused(args, message, sjff_models, tmp_path):
    repo = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    state = tmp_path / "state"
    cmd = [sys.executable, "-m", "sjff_server", "--model-repository", str(repo), "--metrics-port", "-1"]
    cmd += ["--reuse-port", *(str(state) if a == "STATE" else a for a in args)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("sjff serve: error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr[-2000:]
    assert not state.exists()  # refused before the models were loaded or anything written
