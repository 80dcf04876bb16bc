"""Learning state under damage, over gRPC: a damaged log keeps its model down while the rest is
served, storage errors stop learning visibly, and the weights digest is one truth."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import grpc
import numpy as np
import pytest
import serving_utils as su
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sjff_client import Client
from sjff_server.harness import ServerProcess
from sjff_server.storage.durability import UpdateLog
from sjff_server.storage.snapshots import state_digest

from spikingjelly_ff.runtime import load_exported

LEARNING = "spikingjelly_ff.v1.Learning"


@pytest.fixture
def repo(sjff_models, tmp_path):
    return su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"], "snn": sjff_models["spike"]})


def server(repo, tmp_path, token_path, *extra, **kw) -> ServerProcess:
    args = ["--snapshot-every", "0", "--snapshot-interval", "0", *extra]
    return ServerProcess(repo, state_dir=tmp_path / "state", token_file=token_path, extra_args=args, **kw)


def health(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_damaged_log_keeps_its_model_down_until_repaired(repo, tmp_path, token_path, mnist_samples):
    images, labels = mnist_samples
    srv = server(repo, tmp_path, token_path).start()
    with Client(srv.target, token_file=token_path) as c:
        for i in range(30):
            assert c.learn(images[i : i + 1], [labels[i]], seed=i).version == i + 1
    srv.kill()  # no final snapshot: the 30 updates live in the log only
    (segment,) = [p for _, p in UpdateLog(tmp_path / "state" / "mnist" / "1" / "log").segments()]
    data = bytearray(segment.read_bytes())
    data[int(len(data) * 0.4)] ^= 0x01
    segment.write_bytes(bytes(data))

    srv.restart()
    try:
        with Client(srv.target) as c:
            with pytest.raises(grpc.RpcError) as err:
                c.infer(images[:2], model="mnist")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            msg = err.value.details()
            assert str(segment) in msg and "byte" in msg and "..30 are affected" in msg and "sjff state repair" in msg
            assert c.infer(images[:2], model="snn").label.shape == (2,)  # the rest is served
        errors = [r for r in srv.log_records() if r["level"] == "error"]
        assert any("learning state needs an operator" in r["msg"] for r in errors)
    finally:
        srv.stop()
    assert segment.read_bytes() == bytes(data)  # the server cut nothing

    cli = [sys.executable, "-m", "spikingjelly_ff.cli", "state", "repair", str(tmp_path / "state"), "--model", "mnist"]
    report = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert report.returncode == 1 and "would be lost" in report.stdout, report
    fixed = subprocess.run([*cli, "--truncate"], capture_output=True, text=True, timeout=120)
    assert fixed.returncode == 0 and "ERROR" in fixed.stderr and "lost: versions" in fixed.stderr, fixed
    srv.restart()
    try:
        with Client(srv.target, token_file=token_path) as c:
            resumed = c.list_versions(model="mnist").current_version
            assert 1 <= resumed < 30
            assert c.learn(images[40:41], [labels[40]], seed=40).version == resumed + 1
    finally:
        srv.stop()


def test_storage_error_stops_learning_visibly_and_loses_nothing(repo, tmp_path, token_path, mnist_samples):
    """Writes past RLIMIT_FSIZE fail (EFBIG), as on a full disk: the failing update is "not
    applied", learning reports NOT_SERVING and a metric, inference goes on, and a restart
    resumes at the last acknowledged version."""
    images, labels = mnist_samples
    srv = server(repo, tmp_path, token_path, file_size_limit=3 << 20).start()
    acked = 0
    try:
        with Client(srv.target, token_file=token_path) as c:
            assert health(srv.target, LEARNING) == health_pb2.HealthCheckResponse.SERVING
            for i in range(100):  # 64 images a call: ~200 kB a record
                try:
                    acked = c.learn(images[:64], labels[:64], seed=i).version
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE and "not applied" in exc.details(), exc
                    break
            else:
                pytest.fail("the file size limit was never reached")
            assert acked > 0
            assert health(srv.target, LEARNING) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert health(srv.target, "") == health_pb2.HealthCheckResponse.SERVING
            stats = {m.model_name: m for m in c.stats().models}
            assert "File too large" in stats["mnist"].learning_error and stats["snn"].learning_error == ""
            metrics = urllib.request.urlopen(srv.metrics_url, timeout=10).read().decode()  # noqa: S310 - loopback
            assert 'sjff_learning_failed{model="mnist",version="1"} 1.0' in metrics
            assert 'sjff_inference_inflight_bytes{model="mnist",version="1"} 0.0' in metrics  # nothing queued
            assert c.infer(images[:4], model="mnist").version == acked  # inference goes on
            with pytest.raises(grpc.RpcError) as err:
                c.learn(images[:1], labels[:1])
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.kill()
    srv.restart(file_size_limit=None)
    try:
        with Client(srv.target, token_file=token_path) as c:
            assert c.list_versions(model="mnist").current_version == acked
    finally:
        srv.stop()


def test_weights_digest_is_the_replayed_state_and_survives_restart(
    repo, tmp_path, token_path, sjff_models, mnist_samples
):
    images, labels = mnist_samples
    srv = server(repo, tmp_path, token_path).start()
    try:
        with Client(srv.target, token_file=token_path) as c:
            for i in range(5):
                c.learn(images[i : i + 1], [labels[i]], seed=i)
            before = {m.model_name: (m.learning_version, m.weights_sha256) for m in c.stats().models}
        srv.kill()
        srv.restart()
        with Client(srv.target, token_file=token_path) as c:
            after = {m.model_name: (m.learning_version, m.weights_sha256) for m in c.stats().models}
    finally:
        srv.stop()
    assert before == after and before["mnist"][0] == 5 and len(before["mnist"][1]) == 64
    ref = load_exported(sjff_models["analog"], threads=1)
    for i in range(5):
        ref.learn(su.as_float(images[i : i + 1]), labels[i : i + 1], np.ones(1, np.float32), seed=i)
    assert before["mnist"][1] == state_digest(ref.weights, ref.eligibility)
    snn = load_exported(sjff_models["spike"])
    assert before["snn"] == (0, state_digest(snn.weights, snn.eligibility))


def test_a_snapshot_holding_another_state_than_its_name_is_never_served(
    repo, tmp_path, token_path, mnist_samples
):
    """A snapshot copied under another version's name had been served as
    that version, the wrong weights with no word said, and `sjff state repair --truncate` had
    trusted it and cut acknowledged updates. Such a snapshot is skipped with a warning: the
    server rebuilds from an older one and the log, and repair leaves everything alone."""
    images, labels = mnist_samples
    srv = server(repo, tmp_path, token_path, "--snapshot-every", "5").start()
    with Client(srv.target, token_file=token_path) as c:
        for i in range(12):
            assert c.learn(images[i : i + 1], [labels[i]], seed=i).version == i + 1
        c.learn(images[:1], [labels[0]], seed=0, model="snn")
        truth = {m.model_name: (m.learning_version, m.weights_sha256) for m in c.stats().models}
    srv.kill()
    snaps = tmp_path / "state" / "mnist" / "1" / "snapshots"
    five, ten = snaps / f"{5:020d}.npz", snaps / f"{10:020d}.npz"
    assert five.is_file() and ten.is_file()
    ten.write_bytes(five.read_bytes())  # version 5's state under version 10's name
    (snaps / f"{99:020d}.npz").write_bytes(five.read_bytes())  # and under a version past the log

    cli = [sys.executable, "-m", "spikingjelly_ff.cli", "state", "repair", str(tmp_path / "state"), "--model", "mnist"]
    fixed = subprocess.run([*cli, "--truncate"], capture_output=True, text=True, timeout=120)
    assert fixed.returncode == 0, fixed
    assert five.is_file() and list((tmp_path / "state" / "mnist" / "1" / "log").iterdir())  # nothing was cut
    srv.restart()
    try:
        with Client(srv.target, token_file=token_path) as c:
            after = {m.model_name: (m.learning_version, m.weights_sha256) for m in c.stats().models}
        warnings = " ".join(r["msg"] for r in srv.log_records() if r["level"] == "warning")
    finally:
        srv.stop()
    assert after == truth and truth["mnist"][0] == 12
    assert "not the one its name says" in warnings


def test_unreadable_learning_state_keeps_only_its_model_down(repo, tmp_path, token_path, mnist_samples):
    """A state folder the server cannot read (here a file where its log folder belongs) had
    ended the whole server at start; that model now waits for an operator, the rest is served."""
    images, labels = mnist_samples
    srv = server(repo, tmp_path, token_path).start()
    with Client(srv.target, token_file=token_path) as c:
        c.learn(images[:1], [labels[0]], seed=0, model="snn")
    srv.stop()
    log_dir = tmp_path / "state" / "snn" / "1" / "log"
    for p in log_dir.iterdir():
        p.unlink()
    log_dir.rmdir()
    log_dir.write_text("not a folder")
    srv.restart()
    try:
        with Client(srv.target) as c:
            with pytest.raises(grpc.RpcError) as err:
                c.infer(images[:2], model="snn")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "cannot be read or written" in err.value.details() and str(log_dir.parent) in err.value.details()
            assert c.infer(images[:2], model="mnist").label.shape == (2,)
    finally:
        srv.stop()
