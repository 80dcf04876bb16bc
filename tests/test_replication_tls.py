"""Replicated serving over TLS: a real redis-server listening on a TLS port only (``--port 0``),
a CA and certificates made by the test, real server replicas with ``rediss://``, the CA,
client certificates and a password file. Misconfigurations fail with a clear reason."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2
from redis_utils import RedisServer, make_tls, require_redis_server
from test_replication import MODEL, Replica, converged, repo, wait_for  # noqa: F401 - a fixture
from test_replication_ops import KEY, health

PASSWORD = "tls-s3cret"


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "redis-password"
    path.write_text(PASSWORD + "\n")
    return path


def tls_args(ca, secret, cert=None, key=None) -> list[str]:
    args = ["--replication-ca", str(ca), "--replication-password-file", str(secret)]
    if cert is not None:
        args += ["--replication-cert", str(cert), "--replication-key", str(key)]
    return args


def test_learns_through_two_replicas_over_tls_converge(repo, tmp_path, token_path, secret, mnist_samples):  # noqa: F811
    """Client certificates optional on the Redis side: one replica sends one, one does not."""
    require_redis_server()
    images, labels = mnist_samples
    pki = make_tls(tmp_path / "pki")
    with RedisServer(tmp_path / "redis", password=PASSWORD, tls=pki, tls_auth_clients="optional") as server:
        assert server.url.startswith("rediss://")
        # no shared snapshot within 10 versions, so no trim (every 10 s) can drop the first
        # entries before the stream is read entry by entry below, however slow the machine
        keep = ("--replication-snapshot-every", "1000")
        a = Replica(repo, server.url, token_path, *tls_args(pki.ca, secret, pki.client_cert, pki.client_key), *keep)
        b = Replica(repo, server.url, token_path, *tls_args(pki.ca, secret), *keep)
        try:
            a.start()
            b.start()
            for r in (a, b):
                wait_for(r.ready)
                assert [x for x in r.proc.log_records() if x.get("msg") == "replication connected"]
            for i in range(10):
                assert (a, b)[i % 2].learn(images[i : i + 1], int(labels[i]), f"t-{i}").version == i + 1
            assert b.learn(images[3:4], int(labels[3]), "t-3").version == 4  # a retry: the first answer
            assert len(converged([a, b], 10)) == 1
            with server.client() as redis:  # the test reads Redis over TLS too
                entries = redis.xrange(f"{KEY}:log")
            assert [e[1][b"r"].decode() for e in entries] == [f"t-{i}" for i in range(10)]
        finally:
            b.close()
            a.close()


def test_tls_misconfigurations_fail_clearly(repo, tmp_path, token_path, secret, mnist_samples):  # noqa: F811
    require_redis_server()
    images, labels = mnist_samples
    pki, other = make_tls(tmp_path / "pki"), make_tls(tmp_path / "other", "unrelated")
    with RedisServer(tmp_path / "redis", password=PASSWORD, tls=pki, tls_auth_clients="yes") as server:
        # a CA that did not sign Redis's certificate: a configuration error, refused at start
        wrong = Replica(repo, server.url, token_path, *tls_args(other.ca, secret, pki.client_cert, pki.client_key))
        with pytest.raises(RuntimeError, match="exited with") as err:
            wrong.proc.start()
        assert "TLS certificate of Redis" in str(err.value) and "failed verification" in str(err.value)
        assert "--replication-ca" in str(err.value)
        # a plain redis:// URL to the TLS port: Redis closes the connection unanswered; the
        # server starts (a Redis outage must not stop a rolling update), says why, never serves
        plain = Replica(repo, server.url.replace("rediss://", "redis://", 1), token_path)
        plain.proc.extra_args += ["--replication-password-file", str(secret)]
        try:
            plain.start()
            msg = "Redis unreachable at startup: replicated models NOT_SERVING until it answers"
            startup = [x for x in plain.proc.log_records() if x.get("msg") == msg]
            assert startup and startup[0]["level"] == "error"
            assert "if that port speaks TLS, use a rediss:// URL" in startup[0]["error"]
            assert health(plain) != health_pb2.HealthCheckResponse.SERVING and not plain.ready()
            with pytest.raises(grpc.RpcError) as err:
                plain.learn(images[:1], int(labels[0]), "p-1")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            plain.close()
        with server.client() as redis:
            assert redis.exists(f"{KEY}:log") == 0  # neither wrote anything
