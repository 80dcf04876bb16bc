"""The benchmark's C++ load generator (benchmarks/native/grpc_load.cc), built and run against
a real server: it counts only answered calls, reports failures by status, and a Learn it
counts is an update the server applied."""

from __future__ import annotations

import os
import sys

import pytest
import serving_utils as su
from sjff_client import Client
from sjff_server.harness import ServerProcess

sys.path.insert(0, str(su.ROOT / "benchmarks"))
import serve as bench  # noqa: E402
import serve_workers as workers  # noqa: E402

# g++ and the gRPC C++ library are optional on a developer machine; CI installs them and sets
# SJFF_REQUIRE_GRPCXX=1 so that a missing library or a broken build fails instead of skipping.


@pytest.fixture(scope="module")
def grpc_load():
    exe, why = workers.native_client()
    if exe is None:
        if os.environ.get("SJFF_REQUIRE_GRPCXX") == "1":
            pytest.fail(f"cannot build the native load generator: {why}")
        pytest.skip(why)
    return exe


@pytest.fixture()
def server(sjff_models, tmp_path):
    root = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    token = su.write_token(tmp_path / "token", workers.TOKEN)
    with ServerProcess(root, state_dir=tmp_path / "state", token_file=token, metrics=False) as srv:
        yield srv


def test_infer_calls_are_counted(grpc_load, server, mnist_samples, tmp_path):
    images, _ = mnist_samples
    payload = tmp_path / "infer.bin"
    payload.write_bytes(bench.infer_payload(images[:1]))
    r = workers.run_native(grpc_load, server.target, workers.INFER, payload, concurrency=4, count=60)
    assert r["calls"] == 60 and r["errors"] == {}
    assert len(r["latencies"]) == 60 and 0 < r["p50_ms"] <= r["p99_ms"]


def test_refused_calls_are_errors_not_calls(grpc_load, server, mnist_samples, tmp_path):
    images, _ = mnist_samples
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bench.infer_payload(images[:1].reshape(1, 28, 28)[:, :, :27].copy()))  # wrong width
    with pytest.raises(RuntimeError, match="warm-up call failed: 3 "):  # INVALID_ARGUMENT
        workers.run_native(grpc_load, server.target, workers.INFER, bad, concurrency=2, count=10)


def test_counted_learn_calls_are_applied_updates(grpc_load, server, mnist_samples, tmp_path):
    images, labels = mnist_samples
    payload = tmp_path / "learn.bin"
    payload.write_bytes(bench.learn_payload(images[0], int(labels[0])))
    with Client(server.target, token=workers.TOKEN) as c:
        before = c.list_versions(model="mnist").current_version
        r = workers.run_native(grpc_load, server.target, workers.LEARN, payload, concurrency=3, count=30)
        after = c.list_versions(model="mnist").current_version
    assert r["calls"] == 30 and r["errors"] == {}
    warm_up = 20 * 2  # grpc_load's warm-up calls on each of its two channels
    assert after - before == 30 + warm_up
