"""Inference over real gRPC on loopback: a real server process, real onnxruntime, real models."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import grpc
import numpy as np
import pytest
import serving_utils as su
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sjff_client import AsyncClient, Client, RequestFailed
from sjff_client.client import build_infer_request
from sjff_client.pb import grpc_service_pb2_grpc as pb_grpc
from sjff_server.harness import ServerProcess

from spikingjelly_ff.runtime import load_exported


@pytest.fixture(scope="module")
def server(sjff_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    # "batched": a window far longer than any test, so requests batch whatever the timing
    configs = {"snn": {"max_steps": 20_000}, "batched": {"max_queue_delay_us": 30_000_000, "max_batch_size": 64}}
    models = {"mnist": sjff_models["analog"], "snn": sjff_models["spike"], "batched": sjff_models["analog"]}
    su.make_repository(root, models, configs)
    # a second repository version of mnist, to address versions
    (root / "mnist" / "2").mkdir()
    (root / "mnist" / "2" / "model.onnx").write_bytes((root / "mnist" / "1" / "model.onnx").read_bytes())
    # --max-inflight-mb: the long spiking batch below (256 images x 20,000 steps) would take
    # 16 GiB of working memory if it ran to its end; interrupted after 5 s it touches a part
    args = ["--max-message-bytes", str(4 << 20), "--log-level", "debug", "--max-inflight-mb", "20000"]
    with ServerProcess(root, extra_args=args) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with Client(server.target) as c:
        yield c


@pytest.fixture(scope="module")
def analog(sjff_models):
    return load_exported(sjff_models["analog"], threads=1)


@pytest.fixture(scope="module")
def spike(sjff_models):
    return load_exported(sjff_models["spike"])


def code_of(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details()


def test_health_reflection_and_metadata(server, client):
    channel = grpc.insecure_channel(server.target)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService", "spikingjelly_ff.v1.Learning"):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=service)).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"inference.GRPCInferenceService", "spikingjelly_ff.v1.Learning", "grpc.health.v1.Health"} <= services
    assert client.server_live() and client.server_ready() and client.model_ready()
    md = client.server_metadata()
    assert md.name == "spikingjelly-ff" and "classification" in md.extensions
    m = client.model_metadata()
    assert (m.name, list(m.versions), m.platform) == ("mnist", ["1", "2"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in m.inputs] == [("images", "FP32", [-1, 784])]
    outs = {t.name: (t.datatype, list(t.shape)) for t in m.outputs}
    assert outs["scores"] == ("FP32", [-1, 10]) and outs["label"] == ("INT64", [-1])
    s = client.model_metadata("snn")
    assert s.platform == "spikingjelly_ff_spike" and "latent" in [t.name for t in s.outputs]
    assert code_of(lambda: client.model_metadata("nope"))[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: client.model_ready("nope"))[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: client.model_metadata("mnist", "9"))[0] == grpc.StatusCode.NOT_FOUND
    channel.close()


def test_malformed_health_and_reflection_requests_are_invalid_argument(server):
    """gRPC's own health and reflection servicers had answered UNKNOWN to bytes that are not
    their request message; they answer INVALID_ARGUMENT as our services do, and still serve."""
    channel = grpc.insecure_channel(server.target)
    same = dict(request_serializer=None, response_deserializer=None)
    calls = {
        "Check": channel.unary_unary("/grpc.health.v1.Health/Check", **same),
        "Watch": channel.unary_stream("/grpc.health.v1.Health/Watch", **same),
        "Reflection": channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", **same),
    }
    for blob in (b"\x0a", b"\x0f\x00", b"\x0a\x02\xff\xfe"):
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as err:
                if name == "Check":
                    call(blob, timeout=10)
                else:
                    list(call(blob if name == "Watch" else iter([blob]), timeout=10))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, blob, err.value.details())
            assert "not a valid grpc." in err.value.details()
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    assert "grpc.health.v1.Health" in set(ProtoReflectionDescriptorDatabase(channel).get_services())
    channel.close()


def test_analog_inference_matches_onnxruntime(client, analog, mnist_samples):
    images, labels = mnist_samples
    x = su.as_float(images[:64])
    ref = analog.run(x)
    for kwargs in ({}, {"raw": False}, {"typed": True}):
        r = client.infer(x, **kwargs)
        np.testing.assert_allclose(r.scores, ref["scores"], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(r.label, ref["label"])
        np.testing.assert_allclose(r.probability, ref["probability"], rtol=1e-5, atol=1e-6)
        assert (r.model_name, r.model_version, r.version) == ("mnist", "2", 0)
    r8 = client.infer(images[:64])  # UINT8 0..255, scaled by the server
    np.testing.assert_allclose(r8.scores, ref["scores"], rtol=1e-5, atol=1e-5)
    assert (r8.label == labels[:64]).mean() > 0.6  # a small model, but a real one
    one = client.infer(images[3:4], outputs=["label", "scores"], version="1", request_id="abc")
    assert list(one.outputs) == ["label", "scores"] and one.model_version == "1" and one.id == "abc"
    np.testing.assert_array_equal(one.label, ref["label"][3:4])
    hw = client.infer(images[:2].reshape(2, 28, 28))  # [N, H, W] is accepted too
    np.testing.assert_array_equal(hw.label, ref["label"][:2])


def test_classification_extension(client, analog, mnist_samples):
    images, _ = mnist_samples
    req = build_infer_request(images[:4], "mnist")
    out = req.outputs.add(name="scores")
    out.parameters["classification"].int64_param = 3
    resp = pb_grpc.GRPCInferenceServiceStub(client.channel).ModelInfer(req)
    raw = resp.raw_output_contents[0]
    items, pos = [], 0
    while pos < len(raw):
        n = int.from_bytes(raw[pos : pos + 4], "little")
        items.append(raw[pos + 4 : pos + 4 + n].decode())
        pos += 4 + n
    ref = analog.run(su.as_float(images[:4]))["scores"]
    assert resp.outputs[0].datatype == "BYTES" and list(resp.outputs[0].shape) == [4, 3]
    assert [int(s.split(":")[1]) for s in items[::3]] == ref.argmax(1).tolist()


def test_spiking_inference_matches_the_runtime(client, spike, mnist_samples):
    images, _ = mnist_samples
    x = su.as_float(images[:3])
    for seed in (None, 5):
        r = client.infer(x, model="snn", seed=seed)
        ref = spike.scores(x, seed=0 if seed is None else seed)
        np.testing.assert_array_equal(r.scores, ref)
        np.testing.assert_array_equal(r.label, ref.argmax(1))
    r = client.infer(x[:1], model="snn", steps=10, return_latent=True)
    assert r.outputs["latent"].shape == (1, spike.weights[0].shape[0])
    assert not np.array_equal(r.scores, spike.scores(x[:1], seed=0))  # 10 steps differ from 23
    assert code_of(lambda: client.infer(x[:1], model="snn", steps=20_001))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert "spiking models only" in code_of(lambda: client.infer(x[:1], steps=3))[1]


@pytest.mark.parametrize(
    ("build", "code", "message"),
    [
        (lambda: build_infer_request(np.zeros((1, 10), np.float32)), "INVALID_ARGUMENT", "shape [N, 784]"),
        (lambda: build_infer_request(np.full((1, 784), np.nan, np.float32)), "INVALID_ARGUMENT", "NaN or Inf"),
        (lambda: build_infer_request(np.full((1, 784), 3.0, np.float32)), "INVALID_ARGUMENT", "[0, 1]"),
        (lambda: build_infer_request(np.zeros((1, 784), np.float32), "nope"), "NOT_FOUND", "unknown model"),
        (lambda: build_infer_request(np.zeros((1, 784), np.float32), "mnist", "7"), "NOT_FOUND", "no version"),
        (
            lambda: build_infer_request(np.zeros((1, 784), np.float32), outputs=["x"]),
            "INVALID_ARGUMENT",
            "unknown output",
        ),
        (lambda: _retyped(build_infer_request(np.zeros((1, 784), np.float32)), "INT32"), "INVALID_ARGUMENT", "FP32"),
        (lambda: _renamed(build_infer_request(np.zeros((1, 784), np.float32))), "INVALID_ARGUMENT", "unknown input"),
        (lambda: build_infer_request(np.zeros((2000, 784), np.float32)), "RESOURCE_EXHAUSTED", ""),
    ],
)
def test_bad_requests_get_clear_errors(client, build, code, message):
    stub = pb_grpc.GRPCInferenceServiceStub(client.channel)
    got, details = code_of(lambda: stub.ModelInfer(build(), timeout=10))
    assert got.name == code and message in details


def _retyped(req, datatype):
    req.inputs[0].datatype = datatype
    return req


def _renamed(req):
    req.inputs[0].name = "pixels"
    return req


def test_stream_infer_in_order_with_inline_errors(client, analog, mnist_samples):
    images, _ = mnist_samples
    batches = [images[i : i + 2] for i in range(0, 20, 2)]
    got = list(client.infer_stream(batches))
    ref = analog.run(su.as_float(images[:20]))["label"]
    assert np.concatenate([r.label for r in got]).tolist() == ref.tolist()
    stub = pb_grpc.GRPCInferenceServiceStub(client.channel)
    reqs = [
        build_infer_request(images[:1], request_id="a"),
        build_infer_request(np.zeros((1, 3), np.float32), request_id="b"),
    ]
    reqs.append(build_infer_request(images[1:2], request_id="c"))
    resps = list(stub.ModelStreamInfer(iter(reqs)))
    assert [r.infer_response.id for r in resps] == ["a", "b", "c"]
    assert (
        resps[0].error_message == ""
        and resps[1].error_message.startswith("INVALID_ARGUMENT")
        and resps[2].error_message == ""
    )


def _metric(text: str, prefix: str) -> float:
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)]
    assert len(values) == 1, (prefix, values)
    return values[0]


def test_an_answer_over_the_message_limit_is_that_requests_error(sjff_models, tmp_path, mnist_samples):
    """An answer larger than --max-message-bytes (the latent of 1,300 images, 1.1 MB, for a
    request of 1.0 MB) is refused as that request's RESOURCE_EXHAUSTED, counted as such: in a
    stream the requests after it are answered (gRPC's own refusal ended the whole stream)."""
    images, _ = mnist_samples
    root = su.make_repository(tmp_path / "repo", {"snn": sjff_models["spike"]})
    big = np.resize(images, (1300, 784))

    def request(x, rid):
        return build_infer_request(x, model="snn", parameters={"return_latent": True, "steps": 1}, request_id=rid)

    with ServerProcess(root, extra_args=["--max-message-bytes", str(1 << 20)]) as srv:
        with Client(srv.target) as c:
            stub = pb_grpc.GRPCInferenceServiceStub(c.channel)
            assert request(big, "b").ByteSize() < 1 << 20
            reqs = [request(images[:1], "a"), request(big, "b"), request(images[1:3], "c")]
            resps = list(stub.ModelStreamInfer(iter(reqs)))
            assert [r.infer_response.id for r in resps] == ["a", "b", "c"]
            assert resps[0].error_message == "" and resps[2].error_message == ""
            assert resps[1].error_message.startswith("RESOURCE_EXHAUSTED: the answer to this request (")
            assert "--max-message-bytes 1048576" in resps[1].error_message
            assert [o.name for o in resps[2].infer_response.outputs][-1] == "latent"
            code, message = code_of(lambda: stub.ModelInfer(request(big, "d")))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "exceeds the server's message limit" in message
        # a call is counted once its status has gone out: the scrape may come first, so wait for it
        expected = [
            'sjff_grpc_requests_total{code="RESOURCE_EXHAUSTED",method="ModelInfer"} 1.0',
            'sjff_grpc_requests_total{code="RESOURCE_EXHAUSTED",method="ModelStreamInfer.item"} 1.0',
        ]
        end = time.monotonic() + 30
        while True:
            metrics = urllib.request.urlopen(srv.metrics_url, timeout=5).read().decode()  # noqa: S310 - loopback
            if all(line in metrics for line in expected) or time.monotonic() > end:
                break
            time.sleep(0.05)
    assert all(line in metrics for line in expected), [x for x in metrics.splitlines() if "requests_total" in x]


def test_concurrent_requests_are_batched_and_correct(server, analog, mnist_samples):
    """64 concurrent one-image requests to a model whose batch window (30 s) ends only when
    max_batch_size (64) images are queued: they all meet in one batch, whatever the timing,
    and each gets its own answer."""
    images, _ = mnist_samples
    ref = analog.run(su.as_float(images[:64]))["label"]

    async def run():
        async with AsyncClient(server.target, model="batched") as c:
            return await asyncio.gather(*[c.infer(images[i : i + 1], request_id=str(i)) for i in range(64)])

    results = asyncio.run(run())
    assert [int(r.label[0]) for r in results] == ref.tolist()
    assert [r.id for r in results] == [str(i) for i in range(64)]
    metrics = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()  # noqa: S310 - loopback
    key = '{model="batched",version="1"}'
    assert _metric(metrics, f"sjff_inference_batch_requests_count{key}") == 1  # one batch ...
    assert _metric(metrics, f"sjff_inference_batch_requests_sum{key}") == 64  # ... of all 64 requests
    assert _metric(metrics, f"sjff_inference_batch_images_sum{key}") == 64
    assert _metric(metrics, f"sjff_inference_batch_seconds_count{key}") == 1  # the model ran once ...
    assert _metric(metrics, f"sjff_inference_batch_seconds_sum{key}") > 0  # ... for some time
    for name in (
        "sjff_grpc_requests_total",
        "sjff_grpc_request_seconds_bucket",
        "sjff_inference_batch_images_bucket",
        "sjff_model_ready",
    ):
        assert name in metrics


def test_inline_limit_follows_the_model_cost(server):
    """Batches above --max-inline-mmacs (default 16 M multiply-accumulates) run off the event
    loop: for the tests' analog net (0.2 M per image) that is above 82 images; a spiking model
    never runs inline."""
    loaded = {r["model"]: r for r in server.log_records() if r["msg"] == "model loaded"}
    assert loaded["mnist"]["inline_rows"] == 16_000_000 // 195_072 == 82
    assert loaded["snn"]["inline_rows"] == 0


def test_deadline_interrupts_a_long_spiking_batch(server, client, mnist_samples):
    """A deadline that expires while the single spiking worker runs a long batch interrupts it
    inside its time-step loop (the server logs "batch interrupted", which only an interruption
    writes) and the worker serves the next request. No wall-clock ratio is asserted."""
    images, _ = mnist_samples
    big = su.as_float(images[:256])
    # 256 images x 20,000 steps: many minutes on any CPU, so a 5 s deadline falls inside the
    # batch (it leaves a loaded machine seconds to start it: a request still queued at its
    # deadline is dropped without running, and writes no "batch interrupted")
    code, _ = code_of(lambda: client.infer(big, model="snn", steps=20_000, timeout=5.0))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    r = client.infer(big[:1], model="snn", timeout=60)
    assert r.label.shape == (1,)
    end = time.monotonic() + 30  # the record is written when the worker stops: poll, bounded
    while not (hit := [rec for rec in server.log_records() if rec["msg"].startswith("batch interrupted")]):
        assert time.monotonic() < end, "the long batch was never interrupted"
        time.sleep(0.05)
    assert hit[-1]["images"] == 256


def test_structured_logs(server, client):
    client.server_live()
    records = server.log_records()
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    ready = [r for r in records if r["msg"] == "server ready"]
    assert ready and ready[0]["port"] == server.port
    assert sorted(ready[0]["models"]) == ["batched/1", "mnist/1", "mnist/2", "snn/1"]


def test_concurrent_rpc_limit(sjff_models, tmp_path, mnist_samples):
    root = su.make_repository(tmp_path / "repo", {"snn": sjff_models["spike"]}, {"snn": {"max_steps": 400}})
    images, _ = mnist_samples
    with ServerProcess(root, extra_args=["--max-concurrent-rpcs", "2"], metrics=False) as srv:

        async def run():
            async with AsyncClient(srv.target, model="snn") as c:
                calls = [c.infer(su.as_float(images[i : i + 8]), steps=100, timeout=60) for i in range(8)]
                return await asyncio.gather(*calls, return_exceptions=True)

        results = asyncio.run(run())
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert refused and all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
        assert any(not isinstance(r, Exception) for r in results)
        with Client(srv.target, model="snn") as c:
            assert c.server_live()


def test_request_failed_in_stream_is_raised(client):
    with pytest.raises(RequestFailed) as err:
        list(client.infer_stream([np.zeros((1, 5), np.float32)]))
    assert err.value.code == "INVALID_ARGUMENT"


def test_ready_file_and_metrics_port(server):
    info = server.info
    assert info["port"] == server.port and info["metrics_port"] > 0
    body = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()  # noqa: S310 - loopback
    assert "sjff_build_info" in body
    assert json.loads(json.dumps(info))["tls"] is False


def test_grpc_listener_setting(server):
    """The server imports grpc under gRPC core's polled listener (tuning.POLLED_LISTENER) unless
    the operator set GRPC_EXPERIMENTS, says which in its ready file, and leaves nothing in the
    environment its children inherit; where grpc was imported first it is too late, and says so."""
    import os
    import subprocess
    import sys

    from sjff_server.tuning import GRPC_EXPERIMENTS, POLLED_LISTENER

    assert server.info["grpc_experiments"] == os.environ.get(GRPC_EXPERIMENTS, POLLED_LISTENER)
    probe = (
        "import os, sjff_server; "
        "print(repr(sjff_server.GRPC_EXPERIMENTS_IN_FORCE), repr(os.environ.get('GRPC_EXPERIMENTS')))"
    )
    env = {k: v for k, v in os.environ.items() if k != GRPC_EXPERIMENTS}

    def run(code: str, **extra: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True, timeout=60, check=True
        )
        assert "Unknown experiment" not in out.stderr  # this grpcio still has the switch
        return out.stdout.strip()

    assert run(probe) == f"{POLLED_LISTENER!r} None"
    assert run(probe, GRPC_EXPERIMENTS="-event_engine_client") == "'-event_engine_client' '-event_engine_client'"
    assert run("import grpc; " + probe) == "'' None"


def _policies(pid: int) -> dict[int, int]:
    """Scheduling policy of each thread of ``pid``, by thread id."""
    import os

    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(task)] = os.sched_getscheduler(int(task))
        except ProcessLookupError:
            continue  # the thread ended meanwhile
    return out


def test_cpu_pinning(sjff_models, tmp_path, mnist_samples):
    """--cpus confines every thread of the server (gRPC, onnxruntime) to the CPUs given."""
    import os
    import subprocess
    import sys

    cpu = max(os.sched_getaffinity(0))
    root = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    images, _ = mnist_samples
    with ServerProcess(root, extra_args=["--cpus", str(cpu)], metrics=False) as srv:
        with Client(srv.target) as c:
            assert c.infer(su.as_float(images[:4])).label.shape == (4,)  # onnxruntime and gRPC threads exist now
        tasks = os.listdir(f"/proc/{srv.pid}/task")
        assert len(tasks) > 1
        assert all(os.sched_getaffinity(int(t)) == {cpu} for t in tasks)
        # on one CPU grpc.aio's poller thread, and it alone, waits for the event loop (SCHED_BATCH)
        poller = srv.info["grpc_poller_batch"]
        policies = _policies(srv.pid)
        assert len(poller) == 1 and poller[0] != srv.pid and policies[poller[0]] == os.SCHED_BATCH
        assert all(p == os.SCHED_OTHER for tid, p in policies.items() if tid not in poller)
    if len(os.sched_getaffinity(0)) > 1:  # on more CPUs every thread stays as the scheduler has it
        with ServerProcess(root, metrics=False) as srv:
            assert srv.info["grpc_poller_batch"] == []
            assert set(_policies(srv.pid).values()) == {os.SCHED_OTHER}
    cmd = [sys.executable, "-m", "sjff_server", "--model-repository", str(root), "--port", "0"]
    for bad, message in (("4096", "may only run on CPUs"), ("1-a", "not a CPU list")):
        p = subprocess.run([*cmd, "--cpus", bad], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and message in p.stderr


def test_cpu_latency_request(sjff_models, tmp_path, mnist_samples):
    """--cpu-latency-us holds a PM QoS request (the open /dev/cpu_dma_latency) while the
    server runs; where the device cannot be opened the server refuses to start and says why."""
    import os
    import struct
    import subprocess
    import sys

    from sjff_server.tuning import CPU_LATENCY_DEVICE, hold_cpu_latency

    fake = tmp_path / "qos"
    fake.write_bytes(b"")
    fh = hold_cpu_latency(25, fake)
    assert struct.unpack("=i", fake.read_bytes()) == (25,)
    fh.close()
    with pytest.raises(ValueError, match="0 or more"):
        hold_cpu_latency(-1, fake)
    with pytest.raises(OSError, match="needs write access to"):
        hold_cpu_latency(0, tmp_path / "missing" / "qos")

    root = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    try:  # permission bits do not tell (root, device cgroups): try it
        hold_cpu_latency(0).close()
        usable = True
    except OSError:
        usable = False
    if usable:
        images, _ = mnist_samples
        with ServerProcess(root, extra_args=["--cpu-latency-us", "0"], metrics=False) as srv:
            with Client(srv.target) as c:
                assert c.infer(su.as_float(images[:2])).label.shape == (2,)
            fds = []
            for fd in os.listdir(f"/proc/{srv.pid}/fd"):
                try:
                    fds.append(os.readlink(f"/proc/{srv.pid}/fd/{fd}"))
                except FileNotFoundError:  # closed since the listing (gRPC opens and closes sockets)
                    pass
            assert str(CPU_LATENCY_DEVICE) in fds
    else:
        cmd = [sys.executable, "-m", "sjff_server", "--model-repository", str(root), "--port", "0"]
        p = subprocess.run([*cmd, "--cpu-latency-us", "0"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and "needs write access to" in p.stderr


def test_inflight_byte_budget(sjff_models, tmp_path, mnist_samples):
    """--max-inflight-mb bounds what the requests of a model hold: each request's decoded
    images, its message and the working memory of scoring it (``working_memory`` of the model,
    with the fixed part a batch takes once); one that does not fit is refused with
    RESOURCE_EXHAUSTED, naming the MiB it needs, and a request's bytes are freed once it is
    answered (tests/test_server_batching.py covers queueing, failures, deadlines and
    cancellation)."""
    images, _ = mnist_samples
    paths = {"mnist": sjff_models["analog"], "snn": sjff_models["spike"]}
    root = su.make_repository(tmp_path / "repo", paths)
    mib, budget = 1 << 20, 24

    def need(model: str, rows: int, wire: int = 4) -> int:  # FP32 on the wire: 4 bytes a pixel
        work = load_exported(paths[model]).working_memory()
        return rows * images.shape[1] * (4 + wire) + work.bytes(rows)

    with ServerProcess(root, extra_args=["--max-inflight-mb", str(budget)], metrics=False) as srv:
        with Client(srv.target) as c:
            for model in ("mnist", "snn"):
                over = next(n for n in range(1, 4096) if need(model, n) > budget * mib)
                fits = over // 2
                code, message = code_of(lambda m=model: c.infer(su.as_float(np.resize(images, (over, 784))), model=m))
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert message.startswith(
                    f"request of {need(model, over) / mib:.1f} MiB (decoded images, message and the working memory "
                    "of scoring them) exceeds"
                )
                assert f"limit of model '{model}' ({budget} MiB)" in message and "raise --max-inflight-mb" in message
                # UINT8 images: a quarter on the wire, float32 once decoded
                uint8 = np.resize(images, (next(n for n in range(1, 4096) if need(model, n, 1) > budget * mib), 784))
                assert code_of(lambda m=model: c.infer(uint8, model=m))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
                for _ in range(3):  # each answered request gives its bytes back
                    assert c.infer(su.as_float(np.resize(images, (fits, 784))), model=model).label.shape == (fits,)


def test_spiking_batches_on_two_workers_never_see_torn_weights(sjff_models, tmp_path, token_path, mnist_samples):
    """Spiking batches run on two worker threads (--workers 2, max_batch_size 4) while learners
    publish new versions: every answer must equal the offline replay of the version it reports.

    Readers send the same probe image without a seed, in rounds of 8 concurrent requests; the
    batch window (30 s) ends when 4 are queued, so every batch is 4 copies of the probe run
    with the default seed 0, and an answer is one row of ``scores(4 copies, seed=0)`` at its
    version. Learners apply seeded one-image updates, which the test replays."""
    images, labels = mnist_samples
    probe = images[200:201]
    configs = {"snn": {"max_batch_size": 4, "max_queue_delay_us": 30_000_000}}
    root = su.make_repository(tmp_path / "repo", {"snn": sjff_models["spike"]}, configs)
    args = ["--workers", "2", "--snapshot-interval", "0"]
    srv = ServerProcess(root, state_dir=tmp_path / "state", token_file=token_path, extra_args=args, metrics=False)
    observed: list[tuple[int, np.ndarray]] = []
    acked: dict[int, tuple[int, int]] = {}

    async def run() -> int:
        async with AsyncClient(srv.target, token_file=token_path, model="snn") as c:
            done = asyncio.Event()
            rounds = asyncio.Condition()
            finished = [0]  # reader rounds completed

            async def learner(w: int) -> None:
                for k in range(20):
                    i = w * 20 + k
                    r = await c.learn(images[i : i + 1], [labels[i]], seed=w * 1000 + k)
                    acked[r.version] = (i, w * 1000 + k)
                    # let a whole reader round start after this version: the readers see many
                    # versions however fast a Learn is on this machine
                    async with rounds:
                        target = finished[0] + 2
                        await rounds.wait_for(lambda t=target: finished[0] >= t)

            async def readers() -> None:
                while not done.is_set():
                    for r in await asyncio.gather(*[c.infer(probe, timeout=60) for _ in range(8)]):
                        observed.append((r.version, r.scores[0].copy()))
                    async with rounds:
                        finished[0] += 1
                        rounds.notify_all()

            reading = asyncio.ensure_future(readers())
            await asyncio.gather(*[learner(w) for w in range(2)])
            done.set()
            await reading
            return (await c.list_versions()).current_version

    with srv:
        final = asyncio.run(run())
    assert final == 40 and sorted(acked) == list(range(1, 41))
    m = load_exported(sjff_models["spike"])
    x = np.repeat(su.as_float(probe), 4, axis=0)
    expected = {0: m.scores(x, seed=0)}
    for v in range(1, 41):
        i, seed = acked[v]
        m.learn(su.as_float(images[i : i + 1]), labels[i : i + 1], np.ones(1, np.float32), seed=seed)
        expected[v] = m.scores(x, seed=0)
    assert len(observed) >= 16 and len({v for v, _ in observed}) > 3
    for version, scores in observed:
        rows = [j for j in range(4) if np.array_equal(scores, expected[version][j])]
        assert rows, f"an answer at version {version} is no row of that version's batch"
        if version > 0:  # and the check can tell versions apart
            assert not any(np.array_equal(scores, row) for row in expected[version - 1])


def test_min_version_waits_within_the_deadline(server, sjff_models, tmp_path, token_path, mnist_samples):
    """``min_version`` (read-your-writes) on a model that learns: met at once when the model is
    there, else DEADLINE_EXCEEDED after ``min_version_wait_ms`` (or near the call's deadline)
    with a message naming both versions; the answer keeps sjff_version; a non-integer value is
    INVALID_ARGUMENT. A model that does not learn refuses a version it can never reach at once."""
    images, _ = mnist_samples
    plain = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.target))  # no --state-dir
    req = build_infer_request(images[:2], "mnist", parameters={"min_version": 1})
    t0 = time.monotonic()
    code, message = code_of(lambda: plain.ModelInfer(req, timeout=60))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and time.monotonic() - t0 < 30
    assert "min_version 1 can never be reached: mnist/2 does not learn" in message  # the newest version
    root = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    srv = ServerProcess(root, state_dir=tmp_path / "state", token_file=token_path, metrics=False)
    with srv:
        _min_version_waits(srv, images)


def _min_version_waits(server, images):
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.target))

    def infer(value, timeout=30.0, **params):
        req = build_infer_request(images[:2], "mnist", parameters={"min_version": value, **params})
        return stub.ModelInfer(req, timeout=timeout)

    resp = infer(0)
    assert resp.parameters["sjff_version"].int64_param == 0 and resp.raw_output_contents
    # the server's own bound (min_version_wait_ms) ends the wait long before the client's deadline
    code, message = code_of(lambda: infer(1, min_version_wait_ms=200))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "min_version 1" in message and "version 0" in message
    # the call's deadline bounds the wait too (which side's timer fires first is not asserted)
    code, _ = code_of(lambda: infer(1, timeout=0.3))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    code, message = code_of(lambda: infer(1, min_version_wait_ms=-1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "min_version_wait_ms" in message
    code, message = code_of(lambda: infer("1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "min_version" in message
    code, _ = code_of(lambda: infer(-1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
