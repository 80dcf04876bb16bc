"""Replicated serving end to end: three real server processes, one real redis-server.

Learns go round-robin to the replicas through the gRPC stubs (no client-side retry logic, so
what is tested is the server's); every replica must end at the version = the number of
acknowledged learns, with identical weight digests, after replica and Redis crashes.
"""

from __future__ import annotations

import time
import urllib.request
import uuid

import grpc
import numpy as np
import pytest
import serving_utils as su
from redis_utils import redis_server  # noqa: F401 - a fixture
from sjff_client.messages import build_infer_request, build_learn_request
from sjff_client.pb import grpc_service_pb2 as pb
from sjff_client.pb import grpc_service_pb2_grpc as pb_grpc
from sjff_client.pb import learning_pb2 as lpb
from sjff_client.pb import learning_pb2_grpc as lpb_grpc
from sjff_server.harness import ServerProcess

MODEL = "mnist"
KEY = f"sjff:{{{MODEL}/1}}"  # the Redis keys of its repository version 1


@pytest.fixture
def repo(sjff_models, tmp_path):
    return su.make_repository(tmp_path / "repo", {MODEL: sjff_models["analog"]})


class Replica:
    """A replica process and its stubs."""

    def __init__(self, repo, url: str, token_path, *extra: str) -> None:
        args = ["--replication", url, "--replication-snapshot-every", "7", "--digest-every", "5"]
        args += ["--replication-max-lag", "0", "--snapshot-interval", "0", *extra]
        self.proc = ServerProcess(repo, token_file=token_path, extra_args=args)
        self.token = (("authorization", f"Bearer {token_path.read_text().strip()}"),)
        self.channel = None

    def start(self) -> Replica:
        self.proc.start()
        self.channel = grpc.insecure_channel(self.proc.target)
        self.learning = lpb_grpc.LearningStub(self.channel)
        self.inference = pb_grpc.GRPCInferenceServiceStub(self.channel)
        return self

    def learn(self, x, label: int, request_id: str, timeout: float = 30.0) -> lpb.LearnResponse:
        req = build_learn_request(x, [label], None, MODEL)
        req.request_id = request_id
        return self.learning.Learn(req, metadata=self.token, timeout=timeout)

    def learn_future(self, x, label: int, request_id: str, timeout: float = 600.0) -> grpc.Future:
        req = build_learn_request(x, [label], None, MODEL)
        req.request_id = request_id
        return self.learning.Learn.future(req, metadata=self.token, timeout=timeout)

    def infer(self, x, min_version: int | None = None, timeout: float = 30.0) -> pb.ModelInferResponse:
        params = {} if min_version is None else {"min_version": int(min_version)}
        return self.inference.ModelInfer(build_infer_request(x, MODEL, parameters=params), timeout=timeout)

    def ready(self) -> bool:
        return self.inference.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=10).ready

    def stats(self) -> lpb.GetStatsResponse:
        return self.learning.GetStats(lpb.GetStatsRequest(model_name=MODEL), metadata=self.token, timeout=30).models[0]

    def close(self, kill: bool = False) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if kill:
            self.proc.kill()
        elif self.proc.alive():
            self.proc.stop()


def wait_for(what, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"not reached in {timeout}s: {what}"
        time.sleep(0.05)


def converged(replicas, version: int) -> set[str]:
    """Wait until every replica is serving at ``version``; the set of their digests."""
    for r in replicas:
        wait_for(lambda r=r: r.ready() and r.stats().learning_version == version)
    return {r.stats().weights_sha256 for r in replicas}


@pytest.fixture
def cluster(repo, redis_server, token_path):  # noqa: F811
    started: list[Replica] = []

    def start(n: int = 3, *extra: str) -> list[Replica]:
        for _ in range(n):
            started.append(Replica(repo, redis_server.url, token_path, *extra).start())
        return started[-n:]

    yield start
    for r in started:
        r.close()


def test_round_robin_learns_converge_and_retries_apply_once(cluster, mnist_samples):
    images, labels = mnist_samples
    replicas = cluster(3)
    for r in replicas:
        wait_for(r.ready)
    acked = 0
    for i in range(24):
        r = replicas[i % 3]
        resp = r.learn(images[i : i + 1], int(labels[i]), f"req-{i}")
        acked += 1
        assert resp.version == acked and len(resp.log_odds) == 1
        # read-your-writes on the next replica
        other = replicas[(i + 1) % 3].infer(images[:4], min_version=resp.version)
        assert other.parameters["sjff_version"].int64_param >= resp.version
    # a retry of an acknowledged request on another replica: the original answer, nothing applied
    again = replicas[2].learn(images[5:6], int(labels[5]), "req-5")
    assert again.version == 6
    scrape = urllib.request.urlopen(replicas[2].proc.metrics_url, timeout=5).read().decode()  # noqa: S310
    assert 'sjff_learning_updates_total{model="mnist",outcome="repeated",version="1"} 1.0' in scrape
    # the same id with other samples is refused, not dropped
    with pytest.raises(grpc.RpcError) as err:
        replicas[1].learn(images[6:7], int(labels[6]), "req-5")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "other samples" in err.value.details()
    assert len(converged(replicas, 24)) == 1
    # min_version beyond what exists: DEADLINE_EXCEEDED with a clear message, inference otherwise unchanged
    with pytest.raises(grpc.RpcError) as err:
        replicas[0].infer(images[:2], min_version=acked + 1, timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_dropped_reply_is_retried_elsewhere_and_applied_once(repo, redis_server, tmp_path, token_path, mnist_samples):  # noqa: F811
    """A reply truly lost: replica C connects as a Redis user whose XREAD (its apply task's
    only way to get entries) is revoked, so it appends the update but never applies it and
    never answers. The client's retry with the same request id on A, then B, gets one answer,
    from one stream entry; with XREAD granted again C applies it and all three agree."""
    images, labels = mnist_samples
    redis = redis_server.client()
    redis.execute_command("ACL", "SETUSER", "mute", "on", ">mute-pass", "~*", "&*", "+@all")
    secret = tmp_path / "mute-password"
    secret.write_text("mute-pass\n")
    url = redis_server.url.replace("redis://", "redis://mute@", 1)
    a, b = (Replica(repo, redis_server.url, token_path) for _ in range(2))
    c = Replica(repo, url, token_path, "--replication-password-file", str(secret))
    replicas = [a, b, c]
    try:
        for r in replicas:
            r.start()
        for i in range(3):
            replicas[i % 3].learn(images[i : i + 1], int(labels[i]), f"d-{i}")
        assert len(converged(replicas, 3)) == 1
        redis.execute_command("ACL", "SETUSER", "mute", "-xread")
        # C's first refused XREAD: from then on no read issued before the revocation is in
        # flight (one would return the next entry), so C cannot apply what it appends
        refused = "replication unavailable; retrying"
        wait_for(lambda: any(x.get("msg") == refused and "xread" in x["error"].lower() for x in c.proc.log_records()))
        rid = uuid.uuid4().hex
        x, label = images[40:41], int(labels[40])
        call = c.learn_future(x, label, rid)  # never answered: C cannot read the stream
        wait_for(lambda: redis.exists(f"{KEY}:rid:{rid}"))
        call.cancel()  # the reply is lost
        assert call.cancelled()
        # appended (the idempotency key names the stream's last entry), only the reply was lost
        [(last_id, fields)] = redis.xrevrange(f"{KEY}:log", count=1)
        assert fields[b"r"] == rid.encode() and redis.get(f"{KEY}:rid:{rid}") == last_id
        assert c.stats().learning_version == 3
        first = a.learn(x, label, rid)
        second = b.learn(x, label, rid)
        assert first.version == second.version == 4
        assert list(first.log_odds) == list(second.log_odds)
        assert redis.xlen(f"{KEY}:log") == 4  # the retries appended nothing
        redis.execute_command("ACL", "SETUSER", "mute", "+xread")
        assert len(converged(replicas, 4)) == 1
        again = c.learn(x, label, rid)  # the replica that lost the reply repeats the same answer
        assert again.version == 4 and list(again.log_odds) == list(first.log_odds)
    finally:
        for r in replicas:
            r.close()


def test_kill_9_of_a_replica_and_of_redis_loses_nothing_acknowledged(cluster, redis_server, mnist_samples):  # noqa: F811
    images, labels = mnist_samples
    replicas = cluster(3)
    for r in replicas:
        wait_for(r.ready)
    acked = 0
    for i in range(10):
        acked = replicas[i % 3].learn(images[i : i + 1], int(labels[i]), f"a-{i}").version
    replicas[2].close(kill=True)  # kill -9 mid-run; the others go on
    for i in range(10, 20):
        acked = replicas[i % 2].learn(images[i : i + 1], int(labels[i]), f"a-{i}").version
    redis = redis_server.client()
    wait_for(lambda: redis.exists(f"{KEY}:snap:14"))  # written in the background by the first to reach 14
    replicas[2].start()  # restarted: from a shared snapshot plus the stream
    assert len(converged(replicas, acked)) == 1 and acked == 20
    loaded = [r for r in replicas[2].proc.log_records() if r.get("msg") == "replica state loaded"]
    assert loaded[-1]["learning_version"] == 14  # the newest shared snapshot (every 7 versions)
    metrics = urllib.request.urlopen(replicas[2].proc.metrics_url, timeout=10).read().decode()
    assert 'sjff_replication_digest_checks_total{model="mnist",result="ok",version="1"}' in metrics
    assert "mismatch" not in metrics
    # Redis down: Learn UNAVAILABLE, inference still answers from the current weights
    redis_server.kill9()
    with pytest.raises(grpc.RpcError) as err:
        replicas[0].learn(images[30:31], int(labels[30]), "down-1")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert replicas[1].infer(images[:4]).parameters["sjff_version"].int64_param == acked
    redis_server.restart()  # from its AOF
    # what a client does: retry UNAVAILABLE with the same request id, a bounded number of times
    assert learn_retrying(replicas[0], images[30:31], int(labels[30]), "down-1").version == acked + 1
    acked += 1
    for i in range(31, 36):
        acked = replicas[i % 3].learn(images[i : i + 1], int(labels[i]), f"a-{i}").version
    assert acked == 26
    assert len(converged(replicas, acked)) == 1


def learn_retrying(r: Replica, x, label: int, rid: str, attempts: int = 5) -> lpb.LearnResponse:
    """A Learn retried on UNAVAILABLE with the same request id and a growing pause, as
    sjff_client does (the request id makes the retries safe)."""
    for attempt in range(attempts):
        try:
            return r.learn(x, label, rid)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == attempts - 1:
                raise
            time.sleep(0.1 * 2**attempt)
    raise AssertionError("unreachable")


def test_replicated_digests_equal_an_offline_replay(cluster, sjff_models, mnist_samples):
    from spikingjelly_ff.runtime import load_exported

    images, labels = mnist_samples
    x = su.as_float(images)
    (r,) = cluster(1)
    wait_for(r.ready)
    for i in range(6):
        assert r.learn(x[i : i + 1], int(labels[i]), f"o-{i}").version == i + 1
    ref = load_exported(sjff_models["analog"], threads=1)
    for i in range(6):
        ref.learn(x[i : i + 1], np.array([labels[i]]), np.ones(1, np.float32), seed=i + 1)
    got = r.infer(x[:32])
    scores = np.frombuffer(got.raw_output_contents[0], dtype=np.float32).reshape(32, -1)
    np.testing.assert_allclose(scores, ref.run(x[:32])["scores"], rtol=1e-5, atol=1e-5)
    # a rollback is a stream entry: version 7 holds the weights of version 3 (rebuilt from the stream)
    back = r.learning.Rollback(lpb.RollbackRequest(model_name=MODEL, version=3), metadata=r.token, timeout=30)
    assert (back.version, back.restored_version) == (7, 3)
    ref3 = load_exported(sjff_models["analog"], threads=1)
    for i in range(3):
        ref3.learn(x[i : i + 1], np.array([labels[i]]), np.ones(1, np.float32), seed=i + 1)
    got = r.infer(x[:32], min_version=7)
    scores = np.frombuffer(got.raw_output_contents[0], dtype=np.float32).reshape(32, -1)
    np.testing.assert_allclose(scores, ref3.run(x[:32])["scores"], rtol=1e-5, atol=1e-5)
    with pytest.raises(grpc.RpcError) as err:
        r.learning.Rollback(lpb.RollbackRequest(model_name=MODEL, version=99), metadata=r.token, timeout=30)
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
