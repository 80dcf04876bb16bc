"""Benchmark of the gRPC server: latency, throughput, learning rate, reliability. Prints a table.

    python benchmarks/serve.py                       # everything (about 2-3 minutes on 2 cores)
    python benchmarks/serve.py --quick               # shorter runs
    python benchmarks/serve.py --model m.onnx --json out.json

What it measures, all on loopback, in one run:

1. ModelInfer latency (one MNIST image, sequential calls from a client in its own process)
   p50/p99, beside the same client against the bare echo server and beside the in-process
   onnxruntime call on the same model: ``AnalogModel.run`` (the library API) and the server's
   own engine call (prepared weight feeds), so the gRPC overhead is
   ``p50(gRPC) - p50(in-process)``. Two clients: the C++ load generator
   (benchmarks/native/grpc_load.cc, one call in flight; the client's own cost is a few
   microseconds) and a Python blocking client (``grpc.insecure_channel``, what an edge device
   or tritonclient's sync API does). Server and echo alternate over ``--rounds`` rounds.
2. Throughput at 1, 8 and 32 concurrent clients, beside a bare ``grpc.aio`` echo server that
   returns the same ModelInferRequest bytes (same payload, same load generator, same run,
   interleaved rounds). The load generator (``--client``: the C++ one where g++ and the gRPC
   C++ library are installed, else Python grpc.aio processes) runs in its own process(es) and
   competes with the server for the same cores, as any client on this machine would; it sends
   pre-serialised requests without parsing responses, so it costs both servers the same.
3. Learning: acknowledged (fsync'ed) Learn updates per second at 1, 8 and 32 clients.
4. Reliability: a fuzz run of malformed requests, concurrent learn + infer (acknowledged updates
   == final version, no torn read: every answer equals the offline replay of its version),
   kill -9 during learning then restart (no acknowledged update lost), a learn call without the
   token (refused, weights unchanged).

The model: ``--model`` (an analog ONNX export), else the paper's analog MNIST net (784 -> 200,
pattern embedding) trained for one epoch on 10,000 images and cached in
~/.cache/spikingjelly-ff/bench/.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "spikingjelly-ff" / "bench"
TOKEN = "benchmark-token-0123456789abcdef"
INFER = "/inference.GRPCInferenceService/ModelInfer"
LEARN = "/spikingjelly_ff.v1.Learning/Learn"
ECHO = "/bench.Echo/Echo"
#: with --pin: ["taskset", "-c", LIST] that confines every client process to the client CPUs
CLIENT_PREFIX: list[str] = []


# -- helper processes -----------------------------------------------------------------------------


def echo_server(ready_file: str, cpus: str = "") -> None:
    """A bare grpc.aio server that returns the request bytes (no parsing, no work); with
    ``cpus`` ("1,2") it runs only there, like ``sjff serve --cpus``."""
    import grpc
    from grpc import aio

    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})  # before any thread starts

    async def main() -> None:
        server = aio.server(options=[("grpc.so_reuseport", 0)])

        async def echo(request: bytes, context) -> bytes:
            return request

        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        Path(ready_file).write_text(json.dumps({"port": port}))
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(0)

    asyncio.run(main())


def load_generator(
    target: str, method: str, payload_file: str, concurrency: int, seconds: float, count: int, out: str
) -> None:
    """``concurrency`` coroutines calling ``method`` back to back for ``seconds`` (or ``count``
    calls in total); writes {calls, errors, elapsed, latencies} to ``out``."""
    import grpc
    from grpc import aio

    payload = Path(payload_file).read_bytes()
    metadata = (("authorization", f"Bearer {TOKEN}"),)

    async def main() -> dict:
        async with aio.insecure_channel(target) as channel:
            call = channel.unary_unary(method)  # bytes in, bytes out: no client-side (de)serialisation
            for _ in range(20):
                await call(payload, metadata=metadata)
            lat: list[float] = []
            errors = collections.Counter()
            remaining = [count]
            stop_at = time.perf_counter() + seconds

            async def worker() -> None:
                while True:
                    t = time.perf_counter()
                    if (count and remaining[0] <= 0) or (not count and t > stop_at):
                        return
                    remaining[0] -= 1
                    try:
                        await call(payload, metadata=metadata)
                    except grpc.RpcError as exc:
                        errors[exc.code().name] += 1
                        continue
                    lat.append(time.perf_counter() - t)

            t0 = time.perf_counter()
            await asyncio.gather(*[worker() for _ in range(concurrency)])
            return {"calls": len(lat), "errors": dict(errors), "elapsed": time.perf_counter() - t0, "latencies": lat}

    Path(out).write_text(json.dumps(asyncio.run(main())))


def latency_client(target: str, method: str, payload_file: str, count: int, out: str) -> None:
    """One blocking client (``grpc.insecure_channel``, as an edge device or tritonclient's
    sync API calls) sending ``count`` sequential calls; writes the latencies to ``out``."""
    import grpc

    payload = Path(payload_file).read_bytes()
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method)  # bytes in, bytes out
        for _ in range(200):
            call(payload, metadata=metadata)
        lat = []
        for _ in range(count):
            t = time.perf_counter()
            call(payload, metadata=metadata)
            lat.append(time.perf_counter() - t)
    Path(out).write_text(json.dumps(lat))


def run_latency(target: str, method: str, payload: Path, count: int) -> list[float]:
    """Latencies (s) of ``count`` sequential blocking calls, from a separate client process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lat.json"
        cmd = [
            *CLIENT_PREFIX,
            sys.executable,
            __file__,
            "--_latency",
            target,
            method,
            str(payload),
            str(count),
            str(out),
        ]
        subprocess.run(cmd, check=True, timeout=count * 0.05 + 120)
        return json.loads(out.read_text())


NATIVE_SRC = ROOT / "benchmarks" / "native" / "grpc_load.cc"


def native_client() -> tuple[Path | None, str]:
    """The C++ load generator (benchmarks/native/grpc_load.cc), built on first use into the
    cache; (None, reason) where g++ or the gRPC C++ library (pkg-config grpc++) is missing."""
    digest = hashlib.sha256(NATIVE_SRC.read_bytes()).hexdigest()[:12]
    exe = CACHE / f"grpc_load-{digest}"
    if exe.is_file():
        return exe, ""
    if shutil.which("g++") is None or shutil.which("pkg-config") is None:
        return None, "g++ or pkg-config is not installed"
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++"], capture_output=True, text=True)
    if flags.returncode != 0:
        return None, "the gRPC C++ library is not installed (Debian: apt-get install libgrpc++-dev)"
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_suffix(".tmp")
    cmd = ["g++", "-O2", "-std=c++17", str(NATIVE_SRC), "-o", str(tmp), *flags.stdout.split()]
    built = subprocess.run(cmd, capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"building {NATIVE_SRC.name} failed:\n{built.stderr[-2000:]}")
    tmp.rename(exe)
    return exe, ""


def run_native(
    exe: Path,
    target: str,
    method: str,
    payload: Path,
    concurrency: int,
    seconds: float = 0.0,
    count: int = 0,
    channels: int = 2,
    pid: int | None = None,
) -> dict:
    """The C++ load generator: ``concurrency`` calls in flight over ``channels`` connections
    for ``seconds`` (or ``count`` calls); same result keys as :func:`run_load` plus
    ``latencies`` (s)."""
    cmd = [*CLIENT_PREFIX, str(exe), "--target", target, "--method", method, "--payload", str(payload)]
    cmd += ["--concurrency", str(concurrency), "--channels", str(min(channels, concurrency))]
    cmd += ["--seconds", str(seconds)] if seconds else ["--count", str(count)]
    cmd += ["--metadata", f"authorization=Bearer {TOKEN}"]
    cpu0 = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + count * 0.05 + 120)
    if out.returncode != 0:
        raise RuntimeError(f"grpc_load failed ({out.returncode}): {out.stderr.strip()}")
    cpu = cpu_seconds(pid) - cpu0 if pid else float("nan")
    import grpc

    names = {code.value[0]: code.name for code in grpc.StatusCode}
    r = json.loads(out.stdout)
    lat = np.array(r["latencies"])
    warm = 20 * min(channels, concurrency)
    return {
        "calls": r["calls"],
        "rate": r["calls"] / r["elapsed"],
        "p50_ms": float(np.percentile(lat, 50) * 1e3) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99) * 1e3) if len(lat) else float("nan"),
        "errors": {names.get(int(k), k): n for k, n in r["errors"].items()},
        "server_cpu_us": cpu / max(r["calls"] + warm, 1) * 1e6,
        "latencies": r["latencies"],
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(
    target: str,
    method: str,
    payload: Path,
    concurrency: int,
    seconds: float,
    procs: int,
    count: int = 0,
    pid: int | None = None,
) -> dict:
    """Run the load generator in ``procs`` processes (splitting the concurrency); merge results.
    With ``pid``, also the CPU time that process spent per call (microseconds)."""
    procs = max(1, min(procs, concurrency))
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    cpu0 = cpu_seconds(pid) if pid else 0.0
    with tempfile.TemporaryDirectory() as tmp:
        children = []
        for i, share in enumerate(shares):
            out = Path(tmp) / f"load{i}.json"
            cmd = [
                *CLIENT_PREFIX,
                sys.executable,
                __file__,
                "--_load",
                target,
                method,
                str(payload),
                str(share),
                str(seconds),
                str(count // procs),
                str(out),
            ]
            children.append((subprocess.Popen(cmd), out))
        results = []
        for child, out in children:
            if child.wait(seconds + 120) != 0:
                raise RuntimeError(f"load generator failed ({child.returncode})")
            results.append(json.loads(out.read_text()))
    cpu = cpu_seconds(pid) - cpu0 if pid else float("nan")
    lat = np.array([x for r in results for x in r["latencies"]])
    calls = sum(r["calls"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    errors: collections.Counter = collections.Counter()
    for r in results:
        errors.update(r["errors"])
    return {
        "calls": calls,
        "rate": calls / elapsed,
        "p50_ms": float(np.percentile(lat, 50) * 1e3) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99) * 1e3) if len(lat) else float("nan"),
        "errors": dict(errors),
        "server_cpu_us": cpu / max(calls + 20 * procs, 1) * 1e6,
    }


# -- setup ---------------------------------------------------------------------------------------


def sjff(*args: str) -> None:
    cmd = [sys.executable, "-c", "import sys; from spikingjelly_ff.cli import main; sys.exit(main())", *args]
    subprocess.run(cmd, check=True, cwd=ROOT)


def dataset() -> tuple[str, str]:
    """(dataset for training, label) — full MNIST if it is at hand, else the shipped subset."""
    from spikingjelly_ff.data import load_split

    try:
        load_split("mnist", "test")
        return "mnist", "MNIST"
    except Exception:  # noqa: BLE001 - not cached and no download here: use the subset
        return str(ROOT / "tests" / "data" / "mnist-mini"), "MNIST subset (tests/data/mnist-mini)"


def prepare_model(path: str | None) -> Path:
    if path:
        return Path(path)
    data, _ = dataset()
    out = CACHE / f"analog-{'mnist' if data == 'mnist' else 'mini'}.onnx"
    if not out.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        run = CACHE / "analog-run"
        print(f"training the benchmark model into {out} ...", flush=True)
        sets = [f"data.dataset={data}", "train.epochs=1", "train.limit=10000", "eval.limit=1000"]
        sjff("train", "paper/analog-symmetric", *[a for s in sets for a in ("--set", s)], "--out", str(run), "--quiet")
        sjff("export", str(run / "model"), "--format", "onnx", "--out", str(out))
        shutil.rmtree(run, ignore_errors=True)
    return out


def percentiles(samples: list[float]) -> tuple[float, float]:
    a = np.array(samples) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


IDLE_GAP_S = 400e-6  # about one loopback round trip of the echo server


def in_process_latency(model_path: Path, x: np.ndarray, n: int, payload: bytes) -> dict:
    """p50/p99 (ms) of one-image calls: AnalogModel.run, the server's engine call, and the
    server's whole ModelInfer handler (parse the request bytes, validate, engine, encode,
    serialise the response, metrics) called directly, without gRPC."""
    from sjff_client.pb import grpc_service_pb2 as pb
    from sjff_server.engine import AnalogEngine, InferOptions
    from sjff_server.inference_service import InferenceService, ServerState
    from sjff_server.interrupt import WorkerPool
    from sjff_server.learning import LearnOptions
    from sjff_server.metrics import Metrics
    from sjff_server.models import ModelRegistry, load_served_model
    from sjff_server.repository import scan_repository

    from spikingjelly_ff.runtime import load_model

    model = load_model(model_path, threads=1)
    engine = AnalogEngine(model)
    pub = engine.publish(0, model)

    def timed(fn, idle_s: float = 0.0) -> tuple[float, float]:
        for _ in range(200):
            fn()
        lat = []
        for _ in range(n):
            if idle_s:
                time.sleep(idle_s)
            t = time.perf_counter()
            fn()
            lat.append(time.perf_counter() - t)
        return percentiles(lat)

    out = {"AnalogModel.run": timed(lambda: model.run(x)), "engine": timed(lambda: engine.run(pub, x, InferOptions()))}
    # a lone client's call finds the server's CPU idle since the previous answer: the same
    # engine call after a sleep as long as a round trip shows what waking up costs
    out["engine_after_idle"] = timed(lambda: engine.run(pub, x, InferOptions()), IDLE_GAP_S)

    class Context:  # what the handler asks of a grpc.aio context on the success path
        def time_remaining(self) -> None:
            return None

    async def handler() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as tmp:
            repo = Path(tmp) / "mnist" / "1"
            repo.mkdir(parents=True)
            shutil.copy(model_path, repo / "model.onnx")
            specs, _ = scan_repository(Path(tmp))
            metrics = Metrics("")
            pool = WorkerPool(1, "bench")
            served, _ = load_served_model(
                specs[0], state_dir=None, ort_threads=1, learn_options=LearnOptions(), pool=pool, metrics=metrics
            )
            registry = ModelRegistry()
            registry.add(served)
            state = ServerState()
            state.ready = True
            svc = InferenceService(registry, state, metrics)
            svc.busy_gap_s = 0.0  # back-to-back calls here are a lone client's, not load
            ctx = Context()
            lat = []
            for i in range(n + 200):
                t = time.perf_counter()
                (await svc.ModelInfer(pb.ModelInferRequest.FromString(payload), ctx)).SerializeToString()
                if i >= 200:
                    lat.append(time.perf_counter() - t)
            pool.close()
            return percentiles(lat)

    out["handler"] = asyncio.run(handler())
    return out


def infer_payload(images: np.ndarray) -> bytes:
    from sjff_client.client import build_infer_request

    return build_infer_request(images.astype(np.float32) / np.float32(255.0), "mnist").SerializeToString()


def learn_payload(image: np.ndarray, label: int) -> bytes:
    from sjff_client.client import build_learn_request

    return build_learn_request(
        image.astype(np.float32)[None] / np.float32(255.0), [label], model="mnist"
    ).SerializeToString()


class Echo:
    def __init__(self, cpus: set[int] | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        ready = Path(self._tmp.name) / "ready.json"
        pin = ",".join(map(str, sorted(cpus))) if cpus else ""
        self.proc = subprocess.Popen([sys.executable, __file__, "--_echo", str(ready), pin])
        for _ in range(600):
            if ready.exists():
                break
            time.sleep(0.05)
        self.target = f"127.0.0.1:{json.loads(ready.read_text())['port']}"

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self._tmp.cleanup()


# -- reliability -----------------------------------------------------------------------------------


def fuzz(target: str, images: np.ndarray, n: int) -> dict:
    """``n`` malformed or hostile requests of many kinds; counts status codes."""
    import grpc
    from sjff_client.client import build_infer_request, build_learn_request

    rng = np.random.default_rng(7)
    codes: collections.Counter = collections.Counter()
    md = (("authorization", f"Bearer {TOKEN}"),)
    good = build_infer_request(images[:1])
    with grpc.insecure_channel(target) as ch:
        infer, learn = ch.unary_unary(INFER), ch.unary_unary(LEARN)
        for i in range(n):
            kind = i % 8
            req = type(good)()
            req.CopyFrom(good)
            if kind == 0:
                req.raw_input_contents[0] = req.raw_input_contents[0][: int(rng.integers(0, 784))]
            elif kind == 1:
                x = (images[:1] / 255.0).astype(np.float32)
                x[0, int(rng.integers(0, 784))] = rng.choice([np.nan, np.inf, -np.inf, 7.0, -1.0])
                req.raw_input_contents[0] = x.tobytes()
            elif kind == 2:
                req.inputs[0].shape[:] = [int(v) for v in rng.integers(-5, 2000, int(rng.integers(0, 4)))]
            elif kind == 3:
                req.inputs[0].datatype = str(rng.choice(["INT8", "BYTES", "", "FP32X", "BOOL"]))
            elif kind == 4:
                req.model_name = str(rng.choice(["", "x", "mnist2", "mnist/1", "\x00"]))
            elif kind == 5:
                req.parameters["steps"].string_param = "many"
                req.outputs.add(name=str(rng.choice(["latent", "?", ""])))
            elif kind == 6:
                lr = build_learn_request(images[:2], [int(rng.integers(-5, 15)), 3], model="mnist")
                if rng.random() < 0.5:
                    lr.images = lr.images[: int(rng.integers(0, len(lr.images)))]
                if rng.random() < 0.5:
                    lr.eta = float(rng.choice([np.nan, -1.0, 0.0, np.inf]))
                try:
                    learn(lr.SerializeToString(), metadata=md if rng.random() < 0.8 else (), timeout=10)
                    codes["OK"] += 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] += 1
                continue
            else:
                blob = rng.integers(0, 256, int(rng.integers(0, 4000)), dtype=np.uint8).tobytes()
                target_call = infer if rng.random() < 0.5 else learn
                try:
                    target_call(blob, metadata=md, timeout=10)
                    codes["OK"] += 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] += 1
                continue
            try:
                infer(req.SerializeToString(), timeout=10)
                codes["OK"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
    return dict(codes)


def torn_read_check(srv, model_path: Path, images: np.ndarray, labels: np.ndarray) -> dict:
    """4 learners x 50 updates while 4 readers infer a probe batch; verify every answer."""
    from sjff_client import AsyncClient

    from spikingjelly_ff.runtime import load_model

    probe = images[:8]
    observed: list[tuple[int, np.ndarray]] = []
    acked: dict[int, tuple[int, int]] = {}

    async def run() -> int:
        async with AsyncClient(srv.target, token=TOKEN) as c:
            start = (await c.list_versions()).current_version
            stop = asyncio.Event()

            async def learner(w: int) -> None:
                for k in range(50):
                    i = 100 + (w * 50 + k) % 400
                    r = await c.learn(images[i : i + 1], [labels[i]], seed=w * 1000 + k)
                    acked[r.version] = (i, w * 1000 + k)

            async def reader() -> None:
                while not stop.is_set():
                    r = await c.infer(probe)
                    observed.append((r.version, r.scores.copy()))

            readers = [asyncio.create_task(reader()) for _ in range(4)]
            await asyncio.gather(*[learner(w) for w in range(4)])
            stop.set()
            await asyncio.gather(*readers)
            return start, (await c.list_versions()).current_version

    start, final = asyncio.run(run())
    ok_versions = sorted(acked) == list(range(start + 1, start + 201)) and final == start + 200
    # offline replay: the state at `start` is not known offline unless start == 0
    m = load_model(model_path, threads=1)
    torn = 0
    checked = 0
    if start == 0:
        x = probe.astype(np.float32) / np.float32(255.0)
        expected = {0: m.run(x)["scores"]}
        for v in range(1, final + 1):
            i, seed = acked[v]
            m.learn(
                images[i : i + 1].astype(np.float32) / np.float32(255.0),
                labels[i : i + 1],
                np.ones(1, np.float32),
                seed=seed,
            )
            expected[v] = m.run(x)["scores"]
        for version, scores in observed:
            checked += 1
            if not np.allclose(scores, expected[version], rtol=1e-5, atol=1e-5):
                torn += 1
    return {
        "acked": len(acked),
        "final_version": final - start,
        "versions_ok": ok_versions,
        "answers": len(observed),
        "checked": checked,
        "torn": torn,
    }


def kill9_check(repo: Path, state: Path, token_file: Path, images: np.ndarray, labels: np.ndarray) -> dict:
    """Learn from 4 clients, SIGKILL the server mid-traffic, restart, compare."""
    import grpc
    from sjff_client import Client
    from sjff_server.durability import UpdateLog
    from sjff_server.harness import ServerProcess

    srv = ServerProcess(repo, state_dir=state, token_file=token_file, metrics=False).start()
    acked: dict[int, int] = {}
    stop = threading.Event()

    def learner(w: int) -> None:
        c = Client(srv.target, token=TOKEN, timeout=10)
        i = w
        while not stop.is_set():
            try:
                r = c.learn(images[i % 500 : i % 500 + 1], [labels[i % 500]], seed=50_000 + i)
            except grpc.RpcError:
                return
            acked[r.version] = 50_000 + i
            i += 4

    threads = [threading.Thread(target=learner, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    srv.kill()
    stop.set()
    for t in threads:
        t.join(15)
    log = UpdateLog(state / "mnist" / "1" / "log")
    logged = {r.version: r.seed for r in log.records(0, 10**12) if r.changes_state}
    srv.restart()
    try:
        with Client(srv.target, token=TOKEN) as c:
            current = c.list_versions().current_version
    finally:
        srv.stop()
    lost = [v for v in acked if v > current or (v in logged and logged[v] != acked[v])]
    return {"acked": len(acked), "max_acked": max(acked, default=0), "after_restart": current, "lost": len(lost)}


def no_token_check(target: str, images: np.ndarray, labels: np.ndarray) -> dict:
    import grpc
    from sjff_client import Client

    with Client(target, token=TOKEN) as good, Client(target) as anon:
        before_v = good.list_versions().current_version
        before = good.infer(images[:16]).scores
        code = "OK"
        try:
            anon.learn(images[:1], [labels[0]])
        except grpc.RpcError as exc:
            code = exc.code().name
        after = good.infer(images[:16])
        return {
            "code": code,
            "version_unchanged": good.list_versions().current_version == before_v,
            "weights_unchanged": bool(np.array_equal(before, after.scores)),
        }


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--_echo":
        echo_server(*argv[1:3])
        return 0
    if argv and argv[0] == "--_latency":
        t, m, p, n, o = argv[1:6]
        latency_client(t, m, p, int(n), o)
        return 0
    if argv and argv[0] == "--_load":
        t, m, p, c, s, n, o = argv[1:8]
        load_generator(t, m, p, int(c), float(s), int(n), o)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="analog ONNX export (default: train/cached paper model)")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds per throughput point")
    ap.add_argument(
        "--rounds", type=int, default=2, help="interleaved rounds (echo, server) per point; the best is kept"
    )
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument(
        "--client",
        choices=("auto", "native", "python"),
        default="auto",
        help="throughput load generator: the C++ one (benchmarks/native/grpc_load.cc; auto: where it builds) "
        "or Python grpc.aio processes",
    )
    ap.add_argument("--client-procs", type=int, default=2, help="Python load generator processes (default 2)")
    ap.add_argument("--latency-calls", type=int, default=3000)
    ap.add_argument("--learn-seconds", type=float, default=4.0)
    ap.add_argument("--fuzz", type=int, default=2000, help="malformed requests in the fuzz run")
    ap.add_argument("--no-reliability", action="store_true")
    ap.add_argument("--quick", action="store_true", help="1 round, 2 s per point")
    ap.add_argument("--server-args", default="", help="extra sjff serve arguments (quoted)")
    ap.add_argument(
        "--pin",
        action="store_true",
        help="server, echo and the in-process reference on the last CPU (sjff serve --cpus), clients on the others",
    )
    ap.add_argument(
        "--cpu-latency-us",
        type=int,
        metavar="N",
        help="hold a CPU wake-up latency request of N µs for the whole run (sjff serve --cpu-latency-us; "
        "the request is system-wide, so echo and in-process rows run under it too)",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.learn_seconds, args.latency_calls = 1, 2.0, 2.0, 1500

    from sjff_server.harness import ServerProcess

    from spikingjelly_ff.data import load_split

    model_path = prepare_model(args.model)
    data, data_label = dataset()
    split = load_split(data, "test")
    images, labels = split.images[:500], split.labels[:500]
    results: dict = {"model": str(model_path), "load_before": os.getloadavg(), "cpus": os.cpu_count()}
    print(
        f"model {model_path} ({data_label}); {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", flush=True
    )

    tmp = Path(tempfile.mkdtemp(prefix="sjff-bench-"))
    repo = tmp / "repo" / "mnist" / "1"
    repo.mkdir(parents=True)
    shutil.copy(model_path, repo / "model.onnx")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    payload = tmp / "infer.bin"
    payload.write_bytes(infer_payload(images[:1]))
    learn_bin = tmp / "learn.bin"
    learn_bin.write_bytes(learn_payload(images[0], int(labels[0])))

    x1 = images[:1].astype(np.float32) / np.float32(255.0)
    qos = None
    if args.cpu_latency_us is not None:
        from sjff_server.tuning import hold_cpu_latency

        qos = hold_cpu_latency(args.cpu_latency_us)
        results["cpu_latency_us"] = args.cpu_latency_us
    server_cpus = None
    if args.pin:
        usable = sorted(os.sched_getaffinity(0))
        if len(usable) < 2:
            raise SystemExit("--pin needs at least 2 CPUs (one for the server, the rest for the clients)")
        if shutil.which("taskset") is None:
            raise SystemExit("--pin needs taskset (util-linux) to start the clients on their CPUs")
        server_cpus = {usable[-1]}
        CLIENT_PREFIX[:] = ["taskset", "-c", ",".join(map(str, usable[:-1]))]
        results["pinned"] = {"server": sorted(server_cpus), "clients": usable[:-1]}
        os.sched_setaffinity(0, server_cpus)  # the in-process reference runs where the server will
    inproc = in_process_latency(model_path, x1, args.latency_calls, payload.read_bytes())
    if args.pin:
        os.sched_setaffinity(0, set(usable))
    results["in_process"] = inproc

    exe, why = native_client()
    if exe is None:
        print(f"native load generator unavailable ({why}); the Python clients measure everything", flush=True)
        if args.client == "native":
            raise SystemExit(f"--client native: {why}")
    load_client = "native" if exe is not None and args.client != "python" else "python"
    results["load_generator"] = load_client

    extra = args.server_args.split()
    if args.cpu_latency_us is not None:
        extra += ["--cpu-latency-us", str(args.cpu_latency_us)]
    if server_cpus:
        extra += ["--cpus", ",".join(map(str, sorted(server_cpus)))]
    srv = ServerProcess(tmp / "repo", state_dir=tmp / "state", token_file=token_file, extra_args=extra).start()
    echo = Echo(server_cpus)
    try:
        # correctness of what we are about to time
        from sjff_client import Client

        from spikingjelly_ff.runtime import load_model

        with Client(srv.target) as c:
            ref = load_model(model_path, threads=1).run(images[:64].astype(np.float32) / np.float32(255.0))
            got = c.infer(images[:64])
            assert np.array_equal(got.label, ref["label"]), "server and in-process predictions differ"
            results["accuracy_500"] = float((c.infer(images).label == labels).mean())

        # interleaved rounds, so that both see the same machine; samples of all rounds pooled
        clients = {"python": lambda t, m: run_latency(t, m, payload, args.latency_calls)}
        if exe is not None:
            clients["native"] = lambda t, m: run_native(exe, t, m, payload, 1, count=args.latency_calls)["latencies"]
        samples: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        for _ in range(args.rounds):
            for client, measure in clients.items():
                samples[client, "grpc"] += measure(srv.target, INFER)
                samples[client, "echo"] += measure(echo.target, ECHO)
        results["latency"] = collections.defaultdict(dict)
        for (client, name), lat in samples.items():
            p50, p99 = percentiles(lat)
            results["latency"][client][name] = {"calls": len(lat), "p50_ms": p50, "p99_ms": p99}
        results["latency"] = dict(results["latency"])

        thr = {}
        for c in args.concurrency:
            best = {"server": None, "echo": None}
            for _ in range(args.rounds):
                for name, target, method, pid in (
                    ("echo", echo.target, ECHO, echo.proc.pid),
                    ("server", srv.target, INFER, srv.pid),
                ):
                    before = batch_stats(_scrape(srv)) if name == "server" else None
                    if load_client == "native":
                        r = run_native(exe, target, method, payload, c, args.seconds, pid=pid)
                        del r["latencies"]
                    else:
                        r = run_load(target, method, payload, c, args.seconds, args.client_procs, pid=pid)
                    if before is not None:
                        after = batch_stats(_scrape(srv))
                        n = after["batches"] - before["batches"]
                        r["requests_per_batch"] = (after["requests"] - before["requests"]) / n if n else float("nan")
                    if best[name] is None or r["rate"] > best[name]["rate"]:
                        best[name] = r
            thr[c] = best
            print(
                f"  {c:>2} clients: server {best['server']['rate']:,.0f}/s, echo {best['echo']['rate']:,.0f}/s",
                flush=True,
            )
        results["throughput"] = thr

        learn = {}
        for c in (1, 8, 32):
            if load_client == "native":
                r = run_native(exe, srv.target, LEARN, learn_bin, c, args.learn_seconds)
                del r["latencies"]
            else:
                r = run_load(srv.target, LEARN, learn_bin, c, args.learn_seconds, min(args.client_procs, c))
            learn[c] = r
            print(f"  learning, {c:>2} clients: {r['rate']:,.0f} updates/s", flush=True)
        with Client(srv.target, token=TOKEN) as c:
            version = c.list_versions().current_version
            stats = c.stats(model="mnist").models[0]
        acked = sum(r["calls"] for r in learn.values())
        results["learning"] = {
            "runs": learn,
            "acked": acked,
            "final_version": version,
            "mean_group_size": stats.mean_group_size,
        }
        if not args.no_reliability:
            rel = {}
            codes = fuzz(srv.target, images, args.fuzz)
            rel["fuzz"] = {"tried": args.fuzz, "codes": codes, "server_alive": srv.alive()}
            with Client(srv.target) as c:
                rel["fuzz"]["serving_after"] = c.server_ready() and c.infer(images[:1]).label.shape == (1,)
            rel["no_token"] = no_token_check(srv.target, images, labels)
            results["reliability"] = rel
        results["batching"] = batch_stats(_scrape(srv))
    finally:
        echo.close()
        srv.stop()
    if not args.no_reliability:
        # fresh state for the replay check (its offline reference starts at the artefact)
        srv2 = ServerProcess(tmp / "repo", state_dir=tmp / "state2", token_file=token_file, metrics=False).start()
        try:
            results["reliability"]["learn_infer"] = torn_read_check(srv2, model_path, images, labels)
        finally:
            srv2.stop()
        results["reliability"]["kill9"] = kill9_check(tmp / "repo", tmp / "state3", token_file, images, labels)
    results["load_after"] = os.getloadavg()
    if qos is not None:
        qos.close()
    shutil.rmtree(tmp, ignore_errors=True)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


def batch_stats(lines: list[str]) -> dict:
    """Requests per executed batch over the whole run, from the server's histogram."""
    vals = {}
    for ln in lines:
        for key in ("sum", "count"):
            if ln.startswith(f"sjff_inference_batch_requests_{key}"):
                vals[key] = float(ln.split()[-1])
    buckets = {}
    for ln in lines:
        if ln.startswith("sjff_inference_batch_requests_bucket"):
            le = ln.split('le="')[1].split('"')[0]
            buckets[le] = float(ln.split()[-1])
    batches = vals.get("count", 0.0)
    return {
        "requests": vals.get("sum", 0.0),
        "batches": batches,
        "mean_requests_per_batch": vals.get("sum", 0.0) / batches if batches else float("nan"),
        "batches_of_2_or_more": 1.0 - buckets.get("1.0", 0.0) / batches if batches else float("nan"),
    }


def _scrape(srv) -> list[str]:
    import urllib.request

    try:
        return urllib.request.urlopen(srv.metrics_url, timeout=5).read().decode().splitlines()  # noqa: S310 - loopback
    except OSError:
        return []


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def ms(x: float) -> str:
    return f"{x:.3f} ms"


def print_table(r: dict) -> None:
    ip = r["in_process"]
    pinned = r.get("pinned")
    print()
    if pinned:
        print(
            f"pinned: server, echo and in-process reference on CPU {pinned['server']}, clients on {pinned['clients']}\n"
        )
    if r.get("cpu_latency_us") is not None:
        print(f"CPU wake-up latency held at {r['cpu_latency_us']} µs for the whole run (--cpu-latency-us)\n")
    print(row("measurement", "p50", "p99", "note"))
    print(row("---", "---:", "---:", "---"))
    api, eng = ip["AnalogModel.run"], ip["engine"]
    print(row("in-process `AnalogModel.run`, 1 image", ms(api[0]), ms(api[1]), "library API"))
    print(row("in-process engine call (the server's path), 1 image", ms(eng[0]), ms(eng[1]), "prepared weight feeds"))
    if "engine_after_idle" in ip:
        idle = ip["engine_after_idle"]
        note = f"each call after {IDLE_GAP_S * 1e6:.0f} µs asleep, as a lone client's call finds the CPU"
        print(row("in-process engine call after an idle gap, 1 image", ms(idle[0]), ms(idle[1]), note))
    if "handler" in ip:
        h = ip["handler"]
        note = "decode, validate, engine, encode, serialise, metrics; no gRPC"
        print(row("in-process ModelInfer handler, 1 image", ms(h[0]), ms(h[1]), note))
    names = {
        "native": "C++ client (grpc_load, 1 call in flight)",
        "python": "Python blocking client (grpc.insecure_channel)",
    }
    for client, lat in r["latency"].items():
        g, e = lat["grpc"], lat["echo"]
        who = names[client]
        print(row(f"ModelInfer over gRPC (loopback), 1 image, {client}", ms(g["p50_ms"]), ms(g["p99_ms"]), who))
        print(row(f"bare grpc.aio echo, same payload, {client}", ms(e["p50_ms"]), ms(e["p99_ms"]), who))
        over_api, over_engine = g["p50_ms"] - api[0], g["p50_ms"] - eng[0]
        note = f"vs the engine call ({ms(over_api)} vs `AnalogModel.run`); target <= 0.5 ms"
        print(row(f"**gRPC overhead (p50), {client} client**", ms(over_engine), "", note))
    print()
    print(f"throughput load generator: {r['load_generator']}")
    head = ("clients", "server inferences/s", "p50", "p99", "echo calls/s", "server / echo", "CPU/call server, echo")
    print(row(*head, "requests/batch"))
    print(row(*["---:"] * (len(head) + 1)))
    for c, b in r["throughput"].items():
        s, e = b["server"], b["echo"]
        ratio = f"{s['rate'] / e['rate']:.0%}"
        cpu = f"{s['server_cpu_us']:.0f} µs, {e['server_cpu_us']:.0f} µs"
        print(
            row(
                c,
                f"{s['rate']:,.0f}",
                f"{s['p50_ms']:.2f} ms",
                f"{s['p99_ms']:.2f} ms",
                f"{e['rate']:,.0f}",
                ratio,
                cpu,
                f"{s.get('requests_per_batch', float('nan')):.1f}",
            )
        )
    b = r.get("batching")
    if b:
        print(
            f"\nbatching over the whole run: {b['requests']:,.0f} requests in {b['batches']:,.0f} batches "
            f"({b['mean_requests_per_batch']:.2f} per batch; {b['batches_of_2_or_more']:.0%} of batches held 2 or more)"
        )
    learn = r["learning"]
    print()
    print(row("learning clients", "acknowledged durable updates/s", "p50", "p99"))
    print(row("---:", "---:", "---:", "---:"))
    for c, x in learn["runs"].items():
        print(row(c, f"{x['rate']:,.0f}", f"{x['p50_ms']:.2f} ms", f"{x['p99_ms']:.2f} ms"))
    print(
        f"\nacknowledged updates {learn['acked']}, final model version {learn['final_version']} "
        f"(+100 warm-up calls), mean fsync group {learn['mean_group_size']:.1f}"
    )
    if "reliability" in r:
        rel = r["reliability"]
        f, lt, k, nt = rel["fuzz"], rel.get("learn_infer", {}), rel.get("kill9", {}), rel["no_token"]
        print()
        print(row("reliability run", "result"))
        print(row("---", "---"))
        alive = f"server alive: {f['server_alive']}, serving after: {f['serving_after']}"
        print(row("fuzz: malformed requests", f"{f['tried']} tried, status codes {f['codes']}; {alive}"))
        if lt:
            equal = f"{lt['acked']} acknowledged, final version {lt['final_version']} (equal: {lt['versions_ok']})"
            torn = f"{lt['checked']} answers replayed offline, torn reads: {lt['torn']}"
            print(row("concurrent learn + infer", f"{equal}; {torn}"))
        if k:
            got = (
                f"{k['acked']} acknowledged (max version {k['max_acked']}), version after restart {k['after_restart']}"
            )
            print(row("kill -9 during learning, restart", f"{got}, lost: {k['lost']}"))
        unchanged = f"version unchanged: {nt['version_unchanged']}, weights unchanged: {nt['weights_unchanged']}"
        print(row("learn without the token", f"{nt['code']}; {unchanged}"))
    print(
        f"\nload average before {r['load_before'][0]:.2f}, after {r['load_after'][0]:.2f}; "
        f"accuracy on 500 test images {r['accuracy_500']:.3f}"
    )


if __name__ == "__main__":
    sys.exit(main())
