"""TLS, mutual TLS, protected inference, token handling (certificates made here with `cryptography`)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys

import grpc
import pytest
import serving_utils as su
from cryptography import x509  # a dev dependency: TLS test certificates
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sjff_client import Client
from sjff_server.harness import ServerProcess
from sjff_server.healthcheck import check


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


def test_protected_inference_and_token_from_environment(repo, mnist_samples):
    images, _ = mnist_samples
    env = dict(os.environ, SJFF_TOKEN="env-token-abcdefghijklmnop")
    with ServerProcess(repo, extra_args=["--protect-inference"], env=env, metrics=False) as srv:
        with Client(srv.target, token="env-token-abcdefghijklmnop") as c:
            assert c.infer(images[:1]).label.shape == (1,)
        with Client(srv.target, token="wrong-token-abcdefghijklmnop") as c:
            with pytest.raises(grpc.RpcError) as err:
                c.infer(images[:1])
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                c.model_metadata()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


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
