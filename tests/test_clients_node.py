"""The Node.js client (clients/node, generated from the same .proto files) against a real server,
from the checkout and as the package `npm pack` makes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile

import pytest
import serving_utils as su
from sjff_server.harness import ServerProcess

from spikingjelly_ff.runtime import load_exported

NODE_DIR = su.ROOT / "clients" / "node"


# Node.js is optional on a developer machine; CI sets SJFF_REQUIRE_NODE=1 so a missing node fails.
pytestmark = pytest.mark.skipif(
    shutil.which("node") is None and os.environ.get("SJFF_REQUIRE_NODE") != "1", reason="Node.js is not installed"
)


@pytest.fixture(scope="module")
def node_modules():
    """clients/node/node_modules, installed from package-lock.json (npm ci) if missing."""
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            if os.environ.get("SJFF_REQUIRE_NODE") == "1":
                pytest.fail("npm is not installed")
            pytest.skip("npm is not installed")
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, capture_output=True, timeout=600
        )
    return NODE_DIR / "node_modules"


def test_node_client_against_the_server(node_modules, sjff_models, tmp_path, token_path, mnist_samples):
    images, _ = mnist_samples
    n = 8
    idx = tmp_path / "images-idx3-ubyte"
    import struct

    idx.write_bytes(struct.pack(">BBBBIII", 0, 0, 8, 3, n, 28, 28) + images[:n].tobytes())
    ref = load_exported(sjff_models["analog"], threads=1).run(su.as_float(images[:n]))
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps({"labels": ref["label"].tolist(), "scores": ref["scores"].tolist()}))
    root = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    with ServerProcess(root, state_dir=tmp_path / "state", token_file=token_path, metrics=False) as srv:
        env = dict(
            os.environ,
            SJFF_TARGET=srv.target,
            SJFF_TOKEN=su.TOKEN,
            SJFF_IDX_IMAGES=str(idx),
            SJFF_EXPECTED=str(expected),
        )
        p = subprocess.run(
            ["node", "--test", "test/"], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=300
        )
        assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
        assert "# pass 4" in p.stdout and "# fail 0" in p.stdout
        cli = subprocess.run(
            ["node", "cli.js", "infer", "--idx", str(idx), "--count", "3", "--target", srv.target],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["label"] == ref["label"][:3].tolist()


PROTOS = ("inference/grpc_service.proto", "spikingjelly_ff/v1/learning.proto")
# an outdated copy of the protos: the packages without their services
STALE = {
    PROTOS[0]: 'syntax = "proto3";\npackage inference;\n',
    PROTOS[1]: 'syntax = "proto3";\npackage spikingjelly_ff.v1;\n',
}

LOAD_CHECK = """
const { loadServices, PROTO_ROOT } = require(process.env.SJFF_INDEX);
const { Inference, Learning } = loadServices();
console.log(JSON.stringify({ protoRoot: PROTO_ROOT, services: [typeof Inference, typeof Learning] }));
"""


def _write_stale(root):
    for name, text in STALE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def _load(node_modules, index, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SJFF_PROTO_ROOT"}
    env.update(NODE_PATH=str(node_modules), SJFF_INDEX=str(index))
    return subprocess.run(["node", "-e", LOAD_CHECK], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_checkout_ignores_protos_left_by_an_interrupted_pack(node_modules, tmp_path):
    """`prepack` copies protos/ into the package, `postpack` removes the copy; a pack interrupted
    in between leaves it behind, and it goes stale when the repository's protos change. In a
    checkout (a copy of one here) index.js reads the repository's protos/ all the same; the
    same stale copy inside an installed package is what that package reads (and fails on)."""
    repo = tmp_path / "repo"
    shutil.copytree(su.ROOT / "protos", repo / "protos")
    node = repo / "clients" / "node"
    shutil.copytree(NODE_DIR / "scripts", node / "scripts")
    shutil.copy(NODE_DIR / "index.js", node)
    subprocess.run(["node", "scripts/protos.js", "copy"], cwd=node, check=True, timeout=60)  # prepack, no postpack
    assert {p for p in PROTOS if (node / "protos" / p).is_file()} == set(PROTOS)
    _write_stale(node / "protos")
    p = _load(node_modules, node / "index.js", tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout) == {"protoRoot": str(repo / "protos"), "services": ["function", "function"]}
    installed = tmp_path / "app" / "node_modules" / "sjff-client"
    shutil.copytree(node, installed)
    p = _load(node_modules, installed / "index.js", tmp_path)
    assert p.returncode != 0 and "GRPCInferenceService" in p.stderr


PACKED_CHECK = """
const { SjffClient, PROTO_ROOT } = require('sjff-client');
(async () => {
  const c = new SjffClient(process.env.SJFF_TARGET);
  try {
    const images = Uint8Array.from(JSON.parse(process.env.SJFF_IMAGES));
    const r = await c.infer(images, images.length / 784);
    const md = await c.modelMetadata();
    const live = await c.serverLive();
    console.log(JSON.stringify({ protoRoot: PROTO_ROOT, live, input: md.inputs[0].name, label: r.label }));
  } finally { c.close(); }
})().catch((e) => { console.error(e); process.exit(1); });
"""


def test_packed_node_client_outside_the_repo(node_modules, sjff_models, tmp_path, token_path, mnist_samples):
    """`npm pack` ships the .proto files: the tarball, unpacked into node_modules/ of a project
    outside the repository (what `npm install sjff-client-0.1.0.tgz` does), loads its own protos,
    builds the service clients and talks to a server. Its dependencies come from the checkout's
    node_modules through NODE_PATH: installing them would need the npm registry."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed") if os.environ.get("SJFF_REQUIRE_NODE") == "1" else pytest.skip("no npm")
    p = subprocess.run(
        [npm, "pack", "--pack-destination", str(tmp_path)], cwd=NODE_DIR, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert not (NODE_DIR / "protos").exists()  # postpack removed the copy: a checkout reads ../../protos
    (tarball,) = tmp_path.glob("sjff-client-*.tgz")
    package = tmp_path / "app" / "node_modules" / "sjff-client"
    with tarfile.open(tarball) as tf:
        members = tf.getmembers()
        names = {m.name for m in members}
        assert {f"package/protos/{p}" for p in PROTOS} <= names
        for m in members:
            m.name = m.name.removeprefix("package/")
        tf.extractall(package, members, filter="data")
    _write_stale(tmp_path / "app" / "protos")  # a project's own protos/ is not the package's
    images = mnist_samples[0][:2]
    ref = load_exported(sjff_models["analog"], threads=1).run(su.as_float(images))["label"]
    root = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    with ServerProcess(root, state_dir=tmp_path / "state", token_file=token_path, metrics=False) as srv:
        env = {k: v for k, v in os.environ.items() if k != "SJFF_PROTO_ROOT"}
        env.update(NODE_PATH=str(node_modules), SJFF_TARGET=srv.target, SJFF_IMAGES=json.dumps(images.ravel().tolist()))
        p = subprocess.run(
            ["node", "-e", PACKED_CHECK], cwd=tmp_path / "app", env=env, capture_output=True, text=True, timeout=60
        )
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert out["protoRoot"] == str(package / "protos")
    assert out["live"] is True and out["input"] == "images" and out["label"] == ref.tolist()
