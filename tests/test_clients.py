"""The Python client library and its command line against a real server."""

from __future__ import annotations

import asyncio
import gzip
import inspect
import json
import os
import queue
import re
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import grpc.aio
import numpy as np
import pytest
import serving_utils as su
from PIL import Image
from sjff_client import AsyncClient, Client, RequestFailed, outcome_unknown
from sjff_client.pb import learning_pb2 as lpb
from sjff_server.harness import ServerProcess

from spikingjelly_ff.runtime import load_exported


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
    ref = load_exported(sjff_models["analog"], threads=1).run(su.as_float(images[:5]))["label"]
    rc, out, err = cli(
        server, "--json", "infer", str(idx_files[0]), "--index", "0", "--count", "5", "--labels", str(idx_files[1])
    )
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["label"] for r in rows] == ref.tolist() and [r["true_label"] for r in rows] == labels[:5].tolist()
    png = tmp_path / "digit.png"
    Image.fromarray(255 - images[1].reshape(28, 28)).save(png)  # dark on light: inverted
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
    ref = load_exported(sjff_models["analog"], threads=1).run(su.as_float(images[:8]))["label"]

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
    """The client runs on an edge device without torch, the library itself, or Pillow."""
    code = (
        "import sys\n"
        "for blocked in ('torch', 'spikingjelly_ff', 'spikingjelly', 'onnxruntime', 'h5py', 'sjff_server', 'PIL'):\n"
        "    sys.modules[blocked] = None\n"
        "import sjff_client, sjff_client.cli, sjff_client.images, sjff_client.codec\n"
        "print('ok')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_standalone_client_wheel(tmp_path):
    """clients/python builds a wheel of the client alone that needs numpy, grpcio and protobuf;
    its ``images`` extra adds Pillow."""
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
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist")]
    core = sorted(r.split(">")[0].split("<")[0] for r in requires if "extra ==" not in r)
    extras = sorted(r.split(">")[0].lower() for r in requires if "extra ==" in r)
    assert core == ["grpcio", "numpy", "protobuf"]
    assert extras == ["pillow"] and all('extra == "images"' in r for r in requires if "extra ==" in r)


def _public_methods(cls) -> dict[str, inspect.Signature]:
    return {n: inspect.signature(getattr(cls, n)) for n in dir(cls) if not n.startswith("_")}


def _same_annotation(a) -> str:
    """An annotation with the async-only spellings mapped to the blocking ones: the async
    streams take ``AsyncIterable[X] | Iterable[X]`` and return ``AsyncIterator[X]``."""
    return re.sub(r"AsyncIterable\[(.*?)\] \| ", "", str(a)).replace("AsyncIterator", "Iterator")


def test_client_and_async_client_have_the_same_methods():
    """Client and AsyncClient keep one API: same public methods, same parameters (names, kinds,
    defaults, annotations), same return types; every AsyncClient method is awaitable."""
    sync, aio = _public_methods(Client), _public_methods(AsyncClient)
    assert sorted(sync) == sorted(aio)
    for name, sig in sync.items():
        asig = aio[name]
        assert [(p.name, p.kind, p.default) for p in sig.parameters.values()] == [
            (p.name, p.kind, p.default) for p in asig.parameters.values()
        ], name
        assert [_same_annotation(p.annotation) for p in sig.parameters.values()] == [
            _same_annotation(p.annotation) for p in asig.parameters.values()
        ], name
        assert _same_annotation(sig.return_annotation) == _same_annotation(asig.return_annotation), name
        fn = getattr(AsyncClient, name)
        assert inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn), name
    assert {"server_metadata", "learn_stream", "infer_stream"} <= set(sync)


def test_outcome_unknown_reads_the_errors_both_clients_raise():
    """A Learn that fails with UNKNOWN may have been applied; any other status applied nothing.
    A gRPC server whose Learn fails with the status named in the request's model makes both
    clients raise their real errors (a grpc.Call from Client, an AioRpcError from AsyncClient)."""

    def learn(request, context):
        context.abort(grpc.StatusCode[request.model_name], "refused")

    service = lpb.DESCRIPTOR.services_by_name["Learning"].full_name
    method = grpc.unary_unary_rpc_method_handler(
        learn, request_deserializer=lpb.LearnRequest.FromString, response_serializer=lpb.LearnResponse.SerializeToString
    )
    handler = grpc.method_handlers_generic_handler(service, {"Learn": method})
    server = grpc.server(ThreadPoolExecutor(max_workers=2), handlers=[handler])
    target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    x, codes = np.zeros((1, 784), np.uint8), ("UNKNOWN", "UNAVAILABLE", "ABORTED")
    try:
        with Client(target, token=su.TOKEN) as c:
            sync = []
            for code in codes:
                with pytest.raises(grpc.RpcError) as err:
                    c.learn(x, [1], model=code)
                sync.append(err.value)

        async def run():
            async with AsyncClient(target, token=su.TOKEN) as c:
                out = []
                for code in codes:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await c.learn(x, [1], model=code)
                    out.append(err.value)
                return out

        aio = asyncio.run(run())
    finally:
        server.stop(None)
    for errors in (sync, aio):
        assert [e.code().name for e in errors] == list(codes)
        assert [outcome_unknown(e) for e in errors] == [True, False, False]
    assert all(isinstance(e, grpc.Call) for e in sync)
    assert outcome_unknown(RequestFailed("UNKNOWN", "x")) and not outcome_unknown(RequestFailed("ABORTED", "x"))
    assert not outcome_unknown(ValueError("x"))


def test_learn_stream_is_lazy_in_both_clients(server, mnist_samples):
    """Each sample is made only after the answer to the one before (a stream that adapts to
    its results): both clients must pull the samples one at a time, never all up front. An
    eager client would wait forever for the first answer: the queue's timeout turns that
    into a failure."""
    images, labels = mnist_samples
    n = 4

    def sample(i: int, previous: list) -> tuple:
        assert len(previous) == i  # the answer to sample i - 1 arrived before sample i is made
        return images[i : i + 1], [labels[i]]

    # blocking client: gRPC pulls the request iterator on its own thread
    answers: queue.Queue = queue.Queue()
    seen: list = []

    def samples():
        for i in range(n):
            if i:
                seen.append(answers.get(timeout=60))
            yield sample(i, seen)

    with Client(server.target, token=su.TOKEN, model="snn") as c:
        before = c.list_versions().current_version
        results = []
        for r in c.learn_stream(samples()):
            assert not isinstance(r, RequestFailed), r
            results.append(r)
            answers.put(r.version)
        metadata = c.server_metadata()
    assert [r.version for r in results] == [before + 1 + i for i in range(n)]
    assert seen == [r.version for r in results[:-1]]

    async def run():
        async with AsyncClient(server.target, token=su.TOKEN, model="snn") as c:
            got: asyncio.Queue = asyncio.Queue()
            done: list = []

            async def asamples():
                for i in range(n):
                    if i:
                        done.append(await asyncio.wait_for(got.get(), 60))
                    yield sample(i, done)

            out = []
            async for r in c.learn_stream(asamples()):
                out.append(r)
                await got.put(r.version)
            # a plain iterable is streamed lazily as well
            plain = [r async for r in c.learn_stream((images[i : i + 1], [labels[i]]) for i in range(2))]
            return out, done, plain, await c.server_metadata()

    out, done, plain, ametadata = asyncio.run(run())
    last = results[-1].version
    assert [r.version for r in out] == [last + 1 + i for i in range(n)]
    assert done == [r.version for r in out[:-1]]
    assert [r.version for r in plain] == [last + n + 1, last + n + 2]
    assert ametadata == metadata and metadata.name
