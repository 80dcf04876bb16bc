"""TLS, mutual TLS, protected inference, token handling (certificates made here with `cryptography`)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import queue
import subprocess
import sys
import time

import grpc
import pytest
import serving_utils as su
from cryptography import x509  # a dev dependency: TLS test certificates
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sjff_client import AsyncClient, Client
from sjff_client.cli import main as client_cli
from sjff_server.auth import Authenticator, AuthError
from sjff_server.harness import ServerProcess
from sjff_server.healthcheck import check
from sjff_server.protocol.rpc import status_of


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path, key, cert):
    path.with_suffix(".key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path.with_suffix(".pem"), path.with_suffix(".key")


def _cert(subject, issuer, key, issuer_key, *, ca=False, server=False):
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            False,
        )
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    elif not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A self-signed CA, a server certificate for 127.0.0.1/localhost, a client certificate
    from the same CA and one from an unrelated CA."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, other_key = _key(), _key()
    ca = _cert("sjff test CA", "sjff test CA", ca_key, ca_key, ca=True)
    out = {"ca": _write(d / "ca", ca_key, ca)[0]}
    sk, ck, rk = _key(), _key(), _key()
    out["server"] = _write(d / "server", sk, _cert("localhost", "sjff test CA", sk, ca_key, server=True))
    out["client"] = _write(d / "client", ck, _cert("edge-device-1", "sjff test CA", ck, ca_key))
    out["rogue"] = _write(d / "rogue", rk, _cert("rogue", "other CA", rk, other_key))
    return out


@pytest.fixture(scope="module")
def repo(sjff_models, tmp_path_factory):
    return su.make_repository(tmp_path_factory.mktemp("repo"), {"mnist": sjff_models["analog"]})


def test_tls(repo, pki, token_path, mnist_samples):
    images, labels = mnist_samples
    cert, key = pki["server"]
    args = ["--tls-cert", str(cert), "--tls-key", str(key), "--health-port", "0"]
    with ServerProcess(
        repo, token_file=token_path, state_dir=repo.parent / "tls-state", extra_args=args, metrics=False
    ) as srv:
        assert srv.info["tls"] and not srv.info["mtls"]
        assert not [r for r in srv.log_records() if "clear text" in r["msg"]]  # tokens under TLS: no warning
        with Client(srv.target, root_ca=pki["ca"], token_file=token_path) as c:
            assert c.infer(images[:2]).label.shape == (2,)
            assert c.learn(images[:1], [labels[0]]).version == 1
        with Client(srv.target, timeout=3) as plain:  # plaintext to a TLS port fails
            with pytest.raises(grpc.RpcError) as err:
                plain.server_live()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with Client(srv.target, tls=True, timeout=3) as untrusted:  # system roots do not know our CA
            with pytest.raises(grpc.RpcError):
                untrusted.server_live()
        # probes that cannot do TLS use the plaintext health-only port
        assert check(f"127.0.0.1:{srv.info['health_port']}") == "SERVING"
        assert check(srv.target, ca=str(pki["ca"])) == "SERVING"


def test_mutual_tls(repo, pki, mnist_samples):
    images, _ = mnist_samples
    cert, key = pki["server"]
    args = ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(pki["ca"])]
    with ServerProcess(repo, extra_args=args, metrics=False) as srv:
        assert srv.info["mtls"]
        ccert, ckey = pki["client"]
        with Client(srv.target, root_ca=pki["ca"], client_cert=ccert, client_key=ckey) as c:
            assert c.infer(images[:1]).label.shape == (1,)
        with Client(srv.target, root_ca=pki["ca"], timeout=3) as anonymous:  # no client certificate
            with pytest.raises(grpc.RpcError) as err:
                anonymous.server_live()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        rcert, rkey = pki["rogue"]
        with Client(srv.target, root_ca=pki["ca"], client_cert=rcert, client_key=rkey, timeout=3) as rogue:
            with pytest.raises(grpc.RpcError):
                rogue.server_live()


def test_protected_inference_and_token_from_environment(repo, mnist_samples, monkeypatch, capsys):
    images, _ = mnist_samples
    token = "env-token-abcdefghijklmnop"
    env = dict(os.environ, SJFF_TOKEN=token)
    with ServerProcess(repo, extra_args=["--protect-inference"], env=env, metrics=False) as srv:
        with Client(srv.target, token=token, token_for_inference=True) as c:
            assert c.infer(images[:1]).label.shape == (1,)
            assert c.model_metadata().name == "mnist"
        # by default the token goes with Learning calls only: refused here, so it was not sent
        with Client(srv.target, token=token) as c:
            assert c.stats().models is not None  # a Learning call: the token is sent
            with pytest.raises(grpc.RpcError) as err:
                c.infer(images[:1])
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "missing" in err.value.details()

        async def async_infer(**kw):
            async with AsyncClient(srv.target, token=token, **kw) as c:
                return await c.infer(images[:1])

        assert asyncio.run(async_infer(token_for_inference=True)).label.shape == (1,)
        with pytest.raises(grpc.RpcError) as err:
            asyncio.run(async_infer())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with Client(srv.target, token="wrong-token-abcdefghijklmnop", token_for_inference=True) as c:
            with pytest.raises(grpc.RpcError) as err:
                c.infer(images[:1])
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                c.model_metadata()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # the client command line: --token-for-inference sends $SJFF_TOKEN with inference calls
        monkeypatch.setenv("SJFF_TOKEN", token)
        assert client_cli(["--target", srv.target, "health"]) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        assert client_cli(["--target", srv.target, "--token-for-inference", "health"]) == 0


# -- token revocation (the file is checked at every call: --token-recheck-s 0) ------------------

NEW_TOKEN = "sjff-new-token-fedcba9876543210"


def rewrite(path, text: str) -> None:
    """Replace the token file's text with a new mtime for sure (coarse mtime clocks)."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def until(predicate, timeout: float = 30.0):
    """Poll ``predicate`` until it holds (bounded); its last value."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.02)
    return value


def logged(srv, prefix: str) -> list[dict]:
    return [r for r in srv.log_records() if r["msg"].startswith(prefix)]


def learn_code(client, images, labels) -> grpc.StatusCode:
    try:
        client.learn(images, labels)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture
def revocable(repo, tmp_path):
    """A learning server whose token file the test rewrites; it checks the file at every call."""
    token = su.write_token(tmp_path / "token.txt")
    args = ["--token-recheck-s", "0"]
    with ServerProcess(repo, token_file=token, state_dir=tmp_path / "state", extra_args=args, metrics=False) as srv:
        yield srv, token


def test_emptied_or_broken_token_file_revokes(revocable, mnist_samples):
    srv, path = revocable
    images, labels = mnist_samples
    x, y = images[:1], labels[:1]
    with Client(srv.target, token=su.TOKEN) as old, Client(srv.target, token=NEW_TOKEN) as new:
        assert learn_code(old, x, y) == grpc.StatusCode.OK
        rewrite(path, "# every token revoked\n")
        assert learn_code(old, x, y) == grpc.StatusCode.UNAUTHENTICATED
        assert until(lambda: logged(srv, "token file is now empty"))[0]["level"] == "warning"
        rewrite(path, NEW_TOKEN + "\n")
        assert learn_code(new, x, y) == grpc.StatusCode.OK
        assert learn_code(old, x, y) == grpc.StatusCode.UNAUTHENTICATED
        rewrite(path, "short\n")  # unusable: fail closed, not "keep the old tokens"
        assert learn_code(new, x, y) == grpc.StatusCode.UNAUTHENTICATED
        assert until(lambda: logged(srv, "token file changed and is unusable"))[0]["level"] == "error"
        path.unlink()  # gone: fail closed as well
        assert learn_code(new, x, y) == grpc.StatusCode.UNAUTHENTICATED
        path.write_text(NEW_TOKEN + "\n")
        assert learn_code(new, x, y) == grpc.StatusCode.OK
        assert new.list_versions().current_version == 3  # the three accepted updates only


def test_open_learn_stream_ends_when_its_token_is_revoked(revocable, mnist_samples):
    srv, path = revocable
    images, labels = mnist_samples
    inbox: queue.Queue = queue.Queue()

    def samples():
        while (item := inbox.get()) is not None:
            yield item

    with Client(srv.target, token=su.TOKEN) as c:
        responses = c.learn_stream(samples())
        try:
            inbox.put((images[:1], labels[:1]))
            assert next(responses).version == 1
            rewrite(path, f"{su.TOKEN}\n{NEW_TOKEN}\n")  # rotation that keeps this token: the stream goes on
            inbox.put((images[1:2], labels[1:2]))
            assert next(responses).version == 2
            rewrite(path, NEW_TOKEN + "\n")  # this token revoked
            inbox.put((images[2:3], labels[2:3]))
            with pytest.raises(grpc.RpcError) as err:
                next(responses)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "revoked" in err.value.details()
        finally:
            inbox.put(None)
    with Client(srv.target, token=NEW_TOKEN) as c:
        assert c.list_versions().current_version == 2  # the request after the revocation was not applied


def test_tokens_without_tls_are_warned_about(revocable):
    srv, _ = revocable
    warned = [r for r in srv.log_records() if "clear text" in r["msg"]]
    assert len(warned) == 1 and warned[0]["level"] == "warning"


def test_token_never_on_the_command_line(repo):
    cmd = [sys.executable, "-m", "sjff_server", "--model-repository", str(repo), "--token", "abcdefghijklmnopqrstu"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "never taken from the command line" in p.stderr


def test_bad_tls_and_token_configurations_fail_clearly(repo, tmp_path):
    cmd = [sys.executable, "-m", "sjff_server", "--model-repository", str(repo), "--port", "0", "--metrics-port", "-1"]
    p = subprocess.run([*cmd, "--tls-cert", str(tmp_path / "missing.pem")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "TLS needs both" in p.stderr
    p = subprocess.run(
        [*cmd, "--protect-inference"], capture_output=True, text=True, timeout=60, env={**os.environ, "SJFF_TOKEN": ""}
    )
    assert p.returncode == 2 and "needs a token" in p.stderr
    short = tmp_path / "short"
    short.write_text("tiny\n")
    p = subprocess.run([*cmd, "--token-file", str(short)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "at least 16 characters" in p.stderr


def test_authenticator_generation_and_environment_tokens(tmp_path, monkeypatch):
    """In process: the generation moves only when the accepted set changes; tokens from the
    environment survive an emptied or broken file; a server that never had a token says so."""
    from sjff_server.auth import Authenticator
    from sjff_server.protocol.rpc import status_of

    def md(token):
        return (("authorization", f"Bearer {token}"),)

    env_token = "env-token-0123456789abcdef"
    monkeypatch.setenv("SJFF_TEST_TOKEN", env_token)
    path = su.write_token(tmp_path / "token.txt")
    auth = Authenticator(path, "SJFF_TEST_TOKEN", recheck_s=0.0)
    assert auth.refresh() == 0 and auth.check(md(su.TOKEN)) is None
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)  # touched, same tokens
    assert auth.refresh() == 0
    rewrite(path, "\n# none\n")
    assert auth.refresh() == 1
    assert status_of(auth.check(md(su.TOKEN))) == (grpc.StatusCode.UNAUTHENTICATED, "invalid token")
    assert auth.check(md(env_token)) is None
    rewrite(path, "too-short\n")
    assert auth.refresh() == 1 and auth.check(md(env_token)) is None  # same set: env tokens only
    rewrite(path, NEW_TOKEN + "\n")
    assert auth.refresh() == 2 and auth.check(md(NEW_TOKEN)) is None
    never = Authenticator(None, "SJFF_UNSET_VARIABLE")
    assert status_of(never.check(md(su.TOKEN)))[0] == grpc.StatusCode.PERMISSION_DENIED


def test_learning_is_never_served_without_an_authenticator():
    """Learning changes weights: a LearningService built without an Authenticator is an error,
    not a service open to anyone."""
    from sjff_server.metrics import Metrics
    from sjff_server.protocol.learning_service import LearningService
    from sjff_server.serving.models import ModelRegistry

    with pytest.raises(ValueError, match="needs an Authenticator"):
        LearningService(ModelRegistry(), Metrics(), None)


# -- tokens ---------------------------------------------------------------------------------------


def md(value):
    return (("authorization", value),)


def test_authenticator(tmp_path, monkeypatch):
    f = tmp_path / "tokens"
    f.write_text("# comment\nfirst-token-0123456789\nsecond-token-0123456789\n")
    auth = Authenticator(f, None, recheck_s=0.0)
    assert auth.check(md("Bearer first-token-0123456789")) is None
    assert auth.check(md("bearer second-token-0123456789")) is None
    assert status_of(auth.check(None))[0] == grpc.StatusCode.UNAUTHENTICATED
    wrong = auth.check(md("Bearer wrong-token-0123456789"))
    assert status_of(wrong) == (grpc.StatusCode.UNAUTHENTICATED, "invalid token")
    assert status_of(auth.check(md("Basic first-token-0123456789")))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert status_of(auth.check(md("Bearer first-token-012345678")))[0] == grpc.StatusCode.UNAUTHENTICATED  # a prefix
    # rotation: the file is re-read when it changes
    f.write_text("third-token-0123456789\n")
    import os

    os.utime(f, (time.time() + 5, time.time() + 5))
    assert auth.check(md("Bearer third-token-0123456789")) is None
    assert auth.check(md("Bearer first-token-0123456789")) is not None
    monkeypatch.setenv("MY_TOKEN", "env-token-0123456789")
    assert Authenticator(None, "MY_TOKEN").check(md("Bearer env-token-0123456789")) is None
    never = Authenticator(None, "UNSET_VARIABLE_XYZ").check(md("Bearer x"))
    assert status_of(never)[0] == grpc.StatusCode.PERMISSION_DENIED
    f.write_text("short\n")
    with pytest.raises(AuthError, match="at least 16"):
        Authenticator(f, None)
