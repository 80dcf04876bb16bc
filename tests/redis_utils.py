"""A real ``redis-server`` for tests and benchmarks: a free loopback port, a temporary
directory, AOF fsynced on every write (``appendonly yes``, ``appendfsync always``, no RDB
saves), so a ``kill -9`` and a restart on the same directory replay what it acknowledged.

Tests use the ``redis_server`` fixture (``from redis_utils import redis_server``): it skips
when ``redis-server`` is not installed, unless ``SJFF_REQUIRE_REDIS=1`` (CI), which makes
that a failure. :class:`RedisServer` also runs TLS-only (``tls=`` the files of
:func:`make_tls`) and as a Redis replica of another one (``replica_of=``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sjff_server.harness import free_port

__all__ = ["RedisServer", "TlsFiles", "make_tls", "redis_server", "require_redis_server"]

START_TIMEOUT_S = 20.0


def require_redis_server() -> str:
    """The path of ``redis-server``; skips the test if absent (fails with SJFF_REQUIRE_REDIS=1)."""
    path = shutil.which("redis-server")
    if path is None:
        reason = "redis-server is not installed (Debian: apt install redis-server)"
        if os.environ.get("SJFF_REQUIRE_REDIS") == "1":
            pytest.fail(f"{reason}, and SJFF_REQUIRE_REDIS=1 requires it")
        pytest.skip(f"{reason}; set SJFF_REQUIRE_REDIS=1 to make this a failure")
    return path


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test PKI: a CA, a server certificate for 127.0.0.1 / localhost and a
    client certificate, all signed by that CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls(directory: Path, name: str = "sjff test") -> TlsFiles:
    """A fresh CA named ``name`` and its server and client certificates in ``directory``
    (EC P-256, valid one day); two calls make two unrelated CAs."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def subject(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
        crt, pem = directory / f"{stem}.crt", directory / f"{stem}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return crt, pem

    def issue(cn: str, key, issuer: x509.Name, signer, extensions) -> x509.Certificate:
        b = x509.CertificateBuilder().subject_name(subject(cn)).issuer_name(issuer)
        b = b.public_key(key.public_key()).serial_number(x509.random_serial_number())
        b = b.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        for ext, critical in extensions:
            b = b.add_extension(ext, critical=critical)
        return b.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    ca_cert = issue(
        f"{name} CA",
        ca_key,
        subject(f"{name} CA"),
        ca_key,
        [(x509.BasicConstraints(ca=True, path_length=0), True), (ca_usage, True)],
    )
    ca, _ = write("ca", ca_key, ca_cert)
    leaf_usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    files = {}
    for stem, usage, extra in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH, [(san, False)]),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH, []),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        exts = [(x509.BasicConstraints(ca=False, path_length=None), True), (leaf_usage, True)]
        exts += [(x509.ExtendedKeyUsage([usage]), False), *extra]
        files[stem] = write(stem, key, issue(f"{name} {stem}", key, ca_cert.subject, ca_key, exts))
    return TlsFiles(ca, *files["server"], *files["client"])


class RedisServer:
    """``redis-server`` in ``directory`` on a free loopback port (``.port``, ``.url``);
    ``password``: started with ``--requirepass``; ``tls``: TLS only on that port (no plain
    port), clients verified by the CA when ``tls_auth_clients`` is ``"yes"`` (``"optional"``:
    only if they send a certificate; ``"no"``); ``replica_of``: a Redis replica of that
    (started) server. A context manager (start / stop)."""

    def __init__(
        self,
        directory: Path,
        password: str | None = None,
        executable: str | None = None,
        *,
        tls: TlsFiles | None = None,
        tls_auth_clients: str = "yes",
        replica_of: RedisServer | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.tls, self.tls_auth_clients, self.replica_of = tls, tls_auth_clients, replica_of
        self.executable = executable or shutil.which("redis-server")
        if self.executable is None:
            raise FileNotFoundError("redis-server is not installed (Debian: apt install redis-server)")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def client(self, db: int = 0) -> redis.Redis:
        """A synchronous client (for checks from the test itself; TLS with the client certificate)."""
        tls = {}
        if self.tls is not None:
            t = self.tls
            tls = {"ssl": True, "ssl_ca_certs": str(t.ca), "ssl_certfile": str(t.client_cert)}
            tls["ssl_keyfile"] = str(t.client_key)
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password, socket_timeout=10, **tls)

    def command(self) -> list[str]:
        port = ["--port", str(self.port)]
        if self.tls is not None:
            t = self.tls
            port = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(t.server_cert)]
            port += ["--tls-key-file", str(t.server_key), "--tls-ca-cert-file", str(t.ca)]
            port += ["--tls-auth-clients", self.tls_auth_clients]
        cmd = [self.executable, *port, "--bind", "127.0.0.1", "--dir", str(self.dir)]
        cmd += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        cmd += ["--daemonize", "no", "--logfile", "redis.log"]
        if self.password is not None:
            cmd += ["--requirepass", self.password]
        if self.replica_of is not None:
            if self.replica_of.tls is not None or self.replica_of.password is not None:
                raise ValueError("replica_of: only a plain Redis without a password is supported here")
            cmd += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        return cmd

    def start(self) -> RedisServer:
        cmd = self.command()
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # poll until it answers: it may be replaying a long AOF
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with self.client() as c:
                    if c.ping():
                        return self
            except redis.exceptions.ConnectionError:  # not listening yet, or still loading the AOF
                pass
            if time.monotonic() > deadline:
                self.kill9()
                raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT_S} s: {self.log_tail()}")
            time.sleep(0.05)

    def wait_synced(self, timeout: float = START_TIMEOUT_S) -> None:
        """A replica: return once its link to the primary is up and it has loaded the data."""
        deadline = time.monotonic() + timeout
        while True:
            with self.client() as c:
                info = c.info("replication")
            if info.get("master_link_status") == "up" and not info.get("master_sync_in_progress"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis replica not in sync within {timeout} s: {info}: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        log = self.dir / "redis.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else "(no log)"

    def kill9(self) -> None:
        """SIGKILL: no shutdown, no final save; only what the AOF holds survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> RedisServer:
        """Start again on the same directory and port (replaying the AOF)."""
        self.stop()
        return self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def redis_server(tmp_path):
    """A started :class:`RedisServer` in a temporary directory, stopped after the test."""
    require_redis_server()
    with RedisServer(tmp_path / "redis") as server:
        yield server
