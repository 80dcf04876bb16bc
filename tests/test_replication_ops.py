"""Replicated serving in operation: late replicas, divergence, rollbacks on lagging replicas,
Redis down at startup, passwords, a changed artefact. Real server processes, real redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import urllib.request

import grpc
import numpy as np
import pytest
import serving_utils as su
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis_utils import RedisServer, redis_server, require_redis_server  # noqa: F401 - a fixture
from sjff_client.pb import learning_pb2 as lpb
from sjff_server.replication import ReplicationLog, connect
from sjff_server.storage.records import Update
from test_replication import MODEL, Replica, cluster, converged, learn_retrying, repo, wait_for  # noqa: F401 - fixtures

SERVING = health_pb2.HealthCheckResponse.SERVING
KEY = f"sjff:{{{MODEL}/1}}"


def health(r: Replica) -> int:
    stub = health_pb2_grpc.HealthStub(r.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=f"{MODEL}/1"), timeout=10).status


def metric(r: Replica, name: str) -> float:
    text = urllib.request.urlopen(r.proc.metrics_url, timeout=10).read().decode()
    lines = [ln for ln in text.splitlines() if ln.startswith(name + "{")]
    assert len(lines) == 1, lines
    return float(lines[0].rsplit(" ", 1)[1])


def append_direct(url: str, images: np.ndarray, labels: np.ndarray, n: int) -> None:
    """``n`` small updates appended straight to the stream (what accepting replicas do), 50 at
    a time in flight, so a test reaches thousands of versions in seconds."""

    async def go():
        client = await connect(url)
        log = ReplicationLog(client, "sjff", f"{MODEL}/1")
        x = su.as_float(images).reshape(len(images), -1)
        for start in range(0, n, 50):
            ups = []
            for i in range(start, min(n, start + 50)):
                j = [i % len(x), (i * 7 + 1) % len(x)]
                ups.append(log.append(Update(x[j], labels[j].astype(np.int64), np.ones(2, np.float32)), f"d-{i}"))
            await asyncio.gather(*ups)
        await client.aclose()

    asyncio.run(go())


def test_late_replica_catches_up_5000_updates(repo, redis_server, token_path, mnist_samples):  # noqa: F811
    images, labels = mnist_samples
    opts = ("--replication-snapshot-every", "100000", "--replication-max-lag", "10")
    first = Replica(repo, redis_server.url, token_path).start()
    late = Replica(repo, redis_server.url, token_path, *opts)
    try:
        wait_for(first.ready)
        append_direct(redis_server.url, images, labels, 5000)
        wait_for(lambda: first.stats().learning_version == 5000, timeout=120)
        late.start()  # replays 5,000 entries from the artefact (no snapshot: every 100,000)
        # (that it is NOT_SERVING while behind is checked without a race in the ACL test)
        assert len(converged([first, late], 5000)) == 1
        assert health(late) == SERVING
    finally:
        late.close()
        first.close()


def test_divergence_stops_serving_then_recovers(cluster, redis_server, mnist_samples):  # noqa: F811
    images, labels = mnist_samples
    replicas = cluster(2)
    for r in replicas:
        wait_for(r.ready)
    redis = redis_server.client()
    redis.hset(f"{KEY}:digest", "10", "0" * 64)  # what the others "published" for version 10
    for i in range(10):
        replicas[i % 2].learn(images[i : i + 1], int(labels[i]), f"v-{i}")
    for r in replicas:  # both reach 10, disagree with the digest there: NOT_SERVING for that model
        wait_for(lambda r=r: metric(r, "sjff_replication_divergence") == 1)
        assert health(r) != SERVING and not r.ready()
        errors = [x for x in r.proc.log_records() if x.get("msg") == "replica diverged: re-bootstrapping"]
        assert errors and errors[0]["level"] == "error" and "at version 10" in errors[0]["error"]
    with pytest.raises(grpc.RpcError) as err:
        replicas[0].infer(images[:2])
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    redis.hdel(f"{KEY}:digest", "10")  # the operator removes the bad record
    assert len(converged(replicas, 10)) == 1  # re-bootstrapped from snapshot 7, replayed to 10
    for r in replicas:
        assert metric(r, "sjff_replication_divergence") == 0 and health(r) == SERVING


def test_rollback_applies_alike_on_a_lagging_replica(cluster, redis_server, mnist_samples):  # noqa: F811
    """A rollback names its base snapshot and pins it: a replica stopped while newer snapshots
    are written still rebuilds it; with the pin and the base removed by hand (a replica away
    too long) it recovers from a snapshot after the rollback instead of answering otherwise."""
    images, labels = mnist_samples
    # a long replica timeout: b, stopped, must stay live for the trim floor and the pins however slow this runs
    a, b = cluster(2, "--replication-snapshots-keep", "1", "--replica-timeout-s", "600")
    for r in (a, b):
        wait_for(r.ready)
    for i in range(10):
        a.learn(images[i : i + 1], int(labels[i]), f"r-{i}")
    converged([a, b], 10)
    redis = redis_server.client()
    for step, drop_base in ((0, False), (1, True)):
        os.kill(b.proc.pid, signal.SIGSTOP)  # lagging, still live for the trim floor
        try:
            target = 8 if step == 0 else 30
            req = lpb.RollbackRequest(model_name=MODEL, version=target)
            back = a.learning.Rollback(req, metadata=a.token, timeout=60)
            version = back.version
            for i in range(20):  # snapshots every 7 (keep 1): the base (7, then 28) stays pinned
                version = a.learn(images[i : i + 1], int(labels[i]), f"r{step}-{i}").version
            base = 7 if step == 0 else 28
            assert redis.exists(f"{KEY}:snap:{base}") and redis.hlen(f"{KEY}:pins") >= 1
            if drop_base:
                redis.delete(f"{KEY}:pins", f"{KEY}:snap:{base}")
                redis.zremrangebyscore(f"{KEY}:snaps", base, base)
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        assert len(converged([a, b], version)) == 1
    loaded = [x for x in b.proc.log_records() if x.get("msg") == "replica state loaded"]
    assert loaded[-1]["learning_version"] > 39  # recovered from a snapshot after the rollback
    assert (
        "rollback"
        in [x for x in b.proc.log_records() if x.get("msg") == "replica diverged: re-bootstrapping"][-1]["error"]
    )


def test_redis_down_at_startup_starts_not_serving_then_catches_up(repo, redis_server, token_path, mnist_samples):  # noqa: F811
    images, labels = mnist_samples
    a = Replica(repo, redis_server.url, token_path).start()
    b = Replica(repo, redis_server.url, token_path)
    try:
        wait_for(a.ready)
        for i in range(3):
            a.learn(images[i : i + 1], int(labels[i]), f"s-{i}")
        digest = a.stats().weights_sha256
        redis_server.kill9()
        b.start()  # starts all the same (a rolling update must not crash-loop on a Redis blip)
        assert health(b) != SERVING and not b.ready()
        with pytest.raises(grpc.RpcError) as err:
            b.learn(images[:1], int(labels[0]), "s-x")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        redis_server.restart()
        assert converged([a, b], 3) == {digest}
    finally:
        b.close()
        a.close()


def test_password_file_through_the_server(repo, tmp_path, token_path, mnist_samples):  # noqa: F811
    require_redis_server()
    images, labels = mnist_samples
    secret = tmp_path / "redis-password"
    secret.write_text("s3cret-pass\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    with RedisServer(tmp_path / "redis", password="s3cret-pass") as server:
        r = Replica(repo, server.url, token_path, "--replication-password-file", str(secret)).start()
        try:
            wait_for(r.ready)
            assert r.learn(images[:1], int(labels[0]), "p-1").version == 1
        finally:
            r.close()
        bad = Replica(repo, server.url, token_path, "--replication-password-file", str(wrong))
        with pytest.raises(RuntimeError, match="refused the credentials"):
            bad.proc.start()


def test_a_changed_artefact_is_refused(repo, sjff_models, tmp_path, redis_server, token_path, mnist_samples):  # noqa: F811
    images, labels = mnist_samples
    a = Replica(repo, redis_server.url, token_path).start()
    other = su.make_repository(tmp_path / "other", {MODEL: sjff_models["spike"]})
    b = Replica(other, redis_server.url, token_path)
    try:
        wait_for(a.ready)
        a.learn(images[:1], int(labels[0]), "c-1")
        b.start()
        wait_for(lambda: any(x.get("msg", "").startswith("model refused") for x in b.proc.log_records()))
        assert not b.ready()
        with pytest.raises(grpc.RpcError) as err:
            b.learn(images[:1], int(labels[0]), "c-2")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "differs" in err.value.details()
        assert a.learn(images[1:2], int(labels[1]), "c-3").version == 2  # the others go on
    finally:
        b.close()
        a.close()


def test_wait_for_a_redis_replica(repo, tmp_path, token_path, mnist_samples):  # noqa: F811
    """``--replication-wait 1``: an acknowledged learn is on the Redis replica too; without
    that replica a learn is UNAVAILABLE (its entry stays in the stream and is applied, once)."""
    require_redis_server()
    images, labels = mnist_samples
    with RedisServer(tmp_path / "primary") as primary:
        standby = RedisServer(tmp_path / "standby", replica_of=primary).start()
        # no shared snapshot within the test's 8 versions, so nothing trims the stream and the
        # replica's copy is compared entry by entry at the end (with the helper's snapshot at
        # version 7 a trim may drop w-0 .. w-5 first, at a moment that depends on timing)
        wait = ("--replication-wait", "1", "--replication-snapshot-every", "1000")
        a = Replica(repo, primary.url, token_path, *wait)
        b = Replica(repo, primary.url, token_path, *wait)
        try:
            standby.wait_synced()
            a.start()
            b.start()
            for r in (a, b):
                wait_for(r.ready)
            for i in range(6):
                assert (a, b)[i % 2].learn(images[i : i + 1], int(labels[i]), f"w-{i}").version == i + 1
            with standby.client() as replica:  # WAIT 1 returned: read them on the Redis replica
                assert [e[1][b"r"] for e in replica.xrange(f"{KEY}:log")] == [f"w-{i}".encode() for i in range(6)]
            standby.stop()
            with pytest.raises(grpc.RpcError) as err:
                a.learn(images[6:7], int(labels[6]), "w-6")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "only 0 of 1 Redis replicas acknowledged" in err.value.details()
            assert "retry with the same request id" in err.value.details()
            assert len(converged([a, b], 7)) == 1  # on the primary's disk: applied everywhere
            standby.start()
            standby.wait_synced()
            again = learn_retrying(b, images[6:7], int(labels[6]), "w-6")  # WAIT may need a GETACK round
            assert again.version == 7  # the original answer: applied once
            assert a.learn(images[7:8], int(labels[7]), "w-7").version == 8
            with standby.client() as replica:
                got = [e[1][b"r"] for e in replica.xrange(f"{KEY}:log")]
            assert got == [f"w-{i}".encode() for i in range(8)]
            assert len(converged([a, b], 8)) == 1
        finally:
            b.close()
            a.close()
            standby.stop()


def test_a_lagging_replica_is_not_serving_until_it_caught_up(repo, redis_server, tmp_path, token_path, mnist_samples):  # noqa: F811
    """Replica C (``--replication-max-lag 5``) is held behind deterministically: it connects as
    a Redis user whose XREAD (its apply task's only way to get entries) is revoked while A and
    B keep learning; its lag check (a script of XRANGEs) still runs, so it must see the lag and
    stop serving. XREAD granted again, it catches up under live learning and serves again."""
    images, labels = mnist_samples
    redis = redis_server.client()
    redis.execute_command("ACL", "SETUSER", "late", "on", ">late-pass", "~*", "&*", "+@all")
    secret = tmp_path / "late-password"
    secret.write_text("late-pass\n")
    url = redis_server.url.replace("redis://", "redis://late@", 1)
    a, b = (Replica(repo, redis_server.url, token_path) for _ in range(2))
    c = Replica(repo, url, token_path, "--replication-max-lag", "5", "--replication-password-file", str(secret))
    replicas = [a, b, c]
    try:
        for r in replicas:
            r.start()
        for i in range(6):
            replicas[i % 3].learn(images[i : i + 1], int(labels[i]), f"g-{i}")
        assert len(converged(replicas, 6)) == 1 and health(c) == SERVING
        redis.execute_command("ACL", "SETUSER", "late", "-xread")
        for i in range(6, 30):  # C may apply what a read already in flight returns, no more
            (a, b)[i % 2].learn(images[i : i + 1], int(labels[i]), f"g-{i}")
        wait_for(lambda: health(c) != SERVING)
        refused = [x["error"] for x in c.proc.log_records() if x.get("msg") == "replication unavailable; retrying"]
        assert refused and "xread" in refused[0].lower()  # held back by the ACL, as intended
        behind = c.stats().learning_version
        assert not c.ready() and behind < 30 - 5
        assert metric(c, "sjff_replication_lag_entries") > 5
        # not diverged, only behind: a request sent to it anyway answers from the version it has
        assert c.infer(images[:2]).parameters["sjff_version"].int64_param == behind
        done: list[int] = []
        learning = threading.Thread(
            target=lambda: done.extend(
                (a, b)[i % 2].learn(images[i : i + 1], int(labels[i]), f"g-{i}").version for i in range(30, 60)
            )
        )
        learning.start()  # live learning while C catches up
        redis.execute_command("ACL", "SETUSER", "late", "+xread")
        learning.join()
        assert done == list(range(31, 61))
        assert len(converged(replicas, 60)) == 1 and health(c) == SERVING
        turns = [x for x in c.proc.log_records() if x.get("msg") in ("serving", "not serving")]
        msgs = [x["msg"] for x in turns]  # the gate, as C logged it: lag (entries) at each turn
        assert msgs[0] == "serving" and "not serving" in msgs and msgs[-1] == "serving"
        assert all(x["lag"] > 5 for x in turns if x["msg"] == "not serving")
        assert all(x["lag"] <= 5 for x in turns if x["msg"] == "serving")
    finally:
        for r in replicas:
            r.close()
