"""The Python client library and its command line against a real server."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import serving_utils as su
from sjff_client import AsyncClient
from sjff_client.images import prepare, read_idx, read_image
from sjff_server.harness import ServerProcess

from spikingjelly_ff.runtime import load_model


@pytest.fixture(scope="module")
def server(sjff_models, tmp_path_factory, token_path):
    root = su.make_repository(
        tmp_path_factory.mktemp("repo"), {"mnist": sjff_models["analog"], "snn": sjff_models["spike"]}
    )
    with ServerProcess(root, state_dir=tmp_path_factory.mktemp("state"), token_file=token_path, metrics=False) as srv:
        yield srv


@pytest.fixture(scope="module")
def idx_files(tmp_path_factory, mnist_samples):
    """A small IDX image file (gzipped) and label file, like MNIST's."""
    images, labels = mnist_samples
    d = tmp_path_factory.mktemp("idx")
    img = d / "images-idx3-ubyte.gz"
    img.write_bytes(gzip.compress(struct.pack(">BBBBIII", 0, 0, 8, 3, len(images), 28, 28) + images.tobytes()))
    lab = d / "labels-idx1-ubyte"
    lab.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, len(labels)) + labels.astype(np.uint8).tobytes())
    return img, lab


def write_png(path: Path, img: np.ndarray, filt: int = 0) -> Path:
    """A minimal PNG encoder (grey or RGB, one filter type for every row)."""
    h, w = img.shape[:2]
    channels = 1 if img.ndim == 2 else img.shape[2]
    rows = img.reshape(h, w * channels).astype(np.int32)
    raw = bytearray()
    prev = np.zeros(w * channels, dtype=np.int32)
    for row in rows:
        left = np.concatenate([np.zeros(channels, np.int32), row[:-channels]])
        if filt == 0:
            out = row
        elif filt == 1:
            out = row - left
        elif filt == 2:
            out = row - prev
        elif filt == 3:
            out = row - (left + prev) // 2
        else:
            upleft = np.concatenate([np.zeros(channels, np.int32), prev[:-channels]])
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            out = row - np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        raw += bytes([filt]) + (out & 0xFF).astype(np.uint8).tobytes()
        prev = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ctype = {1: 0, 3: 2, 4: 6}[channels]
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


@pytest.mark.parametrize("filt", [0, 1, 2, 3, 4])
def test_png_decoder_all_filters(tmp_path, filt):
    rng = np.random.default_rng(filt)
    grey = rng.integers(0, 256, (17, 13), dtype=np.uint8)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    np.testing.assert_array_equal(read_image(write_png(tmp_path / "g.png", grey, filt)), grey)
    np.testing.assert_array_equal(read_image(write_png(tmp_path / "c.png", rgb, filt)), rgb)


def test_image_readers(tmp_path, idx_files, mnist_samples):
    images, labels = mnist_samples
    np.testing.assert_array_equal(read_idx(idx_files[0]).reshape(len(images), -1), images)
    np.testing.assert_array_equal(read_idx(idx_files[1]), labels)
    digit = images[0].reshape(28, 28)
    pgm = tmp_path / "d.pgm"
    pgm.write_bytes(b"P5\n# a comment\n28 28\n255\n" + digit.tobytes())
    np.testing.assert_array_equal(read_image(pgm), digit)
    ascii_pgm = tmp_path / "a.pgm"
    ascii_pgm.write_text("P2\n2 2\n15\n0 15\n15 0\n")
    np.testing.assert_array_equal(read_image(ascii_pgm), [[0, 255], [255, 0]])
    # a big, dark-on-light photo of the digit becomes the MNIST-style 28x28 bright-on-dark vector
    big = np.kron(255 - digit, np.ones((4, 4), np.uint8))
    vec = prepare(np.stack([big] * 3, -1), (28, 28))
    assert vec.shape == (784,) and np.abs(vec.astype(int) - digit.reshape(-1)).mean() < 12
    np.save(tmp_path / "d.npy", digit)
    np.testing.assert_array_equal(read_image(tmp_path / "d.npy"), digit)


def cli(server, *args, token=None):
    env = dict(os.environ, SJFF_TARGET=server.target)
    env.pop("SJFF_TOKEN", None)
    if token:
        env["SJFF_TOKEN"] = token
    p = subprocess.run(
        [sys.executable, "-m", "sjff_client", *args], capture_output=True, text=True, env=env, timeout=120
    )
    return p.returncode, p.stdout, p.stderr


def test_cli_infer_learn_stream_admin(server, idx_files, tmp_path, sjff_models, mnist_samples):
    images, labels = mnist_samples
    ref = load_model(sjff_models["analog"], threads=1).run(su.as_float(images[:5]))["label"]
    rc, out, err = cli(
        server, "--json", "infer", str(idx_files[0]), "--index", "0", "--count", "5", "--labels", str(idx_files[1])
    )
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["label"] for r in rows] == ref.tolist() and [r["true_label"] for r in rows] == labels[:5].tolist()
    png = write_png(tmp_path / "digit.png", 255 - images[1].reshape(28, 28), 4)  # dark on light: inverted
    rc, out, _ = cli(server, "--json", "infer", str(png))
    assert rc == 0 and json.loads(out)["label"] == ref[1]
    rc, _, err = cli(server, "learn", str(png), "--label", str(labels[1]))
    assert rc == 1 and "UNAUTHENTICATED" in err  # no token
    rc, out, err = cli(server, "--json", "learn", str(png), "--label", str(labels[1]), token=su.TOKEN)
    assert rc == 0, err
    assert json.loads(out)["version"] == 1
    rc, out, err = cli(
        server, "--json", "stream", str(idx_files[0]), "--labels", str(idx_files[1]), "--count", "30", token=su.TOKEN
    )
    assert rc == 0, err
    assert json.loads(out)["accepted"] == 30 and json.loads(out)["version"] == 31
    rc, out, _ = cli(
        server,
        "--json",
        "stream",
        str(idx_files[0]),
        "--labels",
        str(idx_files[1]),
        "--count",
        "64",
        "--infer",
        "--batch",
        "8",
    )
    assert rc == 0 and json.loads(out)["images"] == 64 and json.loads(out)["accuracy"] > 0.5
    rc, out, _ = cli(server, "--json", "versions", token=su.TOKEN)
    assert json.loads(out)["current"] == 31
    rc, out, _ = cli(server, "--json", "snapshot", token=su.TOKEN)
    assert json.loads(out)["version"] == 31
    rc, out, _ = cli(server, "--json", "rollback", "1", token=su.TOKEN)
    assert json.loads(out) == {"version": 32, "restored": 1}
    rc, out, _ = cli(server, "--json", "--model", "mnist", "stats", token=su.TOKEN)
    assert rc == 0 and json.loads(out)["learning_version"] == 32
    rc, out, _ = cli(server, "--json", "health")
    assert rc == 0 and json.loads(out)["ready"] is True
    rc, _, err = cli(server, "infer", str(tmp_path / "missing.png"))
    assert rc == 2 and "no such file" in err
    rc, _, err = cli(server, "--model", "nope", "infer", str(png))
    assert rc == 1 and "NOT_FOUND" in err


def test_async_client(server, sjff_models, mnist_samples):
    images, labels = mnist_samples
    ref = load_model(sjff_models["analog"], threads=1).run(su.as_float(images[:8]))["label"]

    async def run():
        async with AsyncClient(server.target, token=su.TOKEN) as c:
            assert await c.server_live() and await c.server_ready() and await c.model_ready()
            results = await asyncio.gather(*[c.infer(images[i : i + 1]) for i in range(8)])
            streamed = [r async for r in c.infer_stream([images[:4], images[4:8]])]
            learned = [
                r async for r in c.learn_stream([(images[i : i + 1], [labels[i]]) for i in range(3)], model="snn")
            ]
            stats = await c.stats(model="snn")
            return results, streamed, learned, stats

    results, streamed, learned, stats = asyncio.run(run())
    assert [int(r.label[0]) for r in results] == ref.tolist()
    assert np.concatenate([r.label for r in streamed]).tolist() == ref.tolist()
    assert [r.version for r in learned] == [1, 2, 3]
    assert stats.models[0].learning_version == 3


def test_client_needs_only_numpy_grpc_protobuf(tmp_path):
    """The client runs on an edge device without torch or the library itself."""
    code = (
        "import sys\n"
        "for blocked in ('torch', 'spikingjelly_ff', 'spikingjelly', 'onnxruntime', 'h5py', 'sjff_server'):\n"
        "    sys.modules[blocked] = None\n"
        "import sjff_client, sjff_client.cli, sjff_client.images, sjff_client.codec\n"
        "print('ok')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_standalone_client_wheel(tmp_path):
    """clients/python builds a wheel of the client alone that needs numpy, grpcio and protobuf."""
    import shutil
    import zipfile

    src = tmp_path / "src"  # build from a copy: no build/ or egg-info left in the work tree
    shutil.copytree(
        su.ROOT / "clients" / "python", src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    )
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    p = subprocess.run([*cmd, str(src)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    (wheel,) = tmp_path.glob("sjff_client-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert {
        "sjff_client/client.py",
        "sjff_client/pb/grpc_service_pb2.py",
        "sjff_client/pb/learning_pb2_grpc.py",
    } <= names
    requires = sorted(
        line.split(":", 1)[1].strip().split(">")[0].split("<")[0]
        for line in meta.splitlines()
        if line.startswith("Requires-Dist")
    )
    assert requires == ["grpcio", "numpy", "protobuf"]
