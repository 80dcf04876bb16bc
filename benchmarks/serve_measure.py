"""The measurements of benchmarks/serve.py: in-process reference latencies, gRPC latency and
throughput against a running server beside the bare echo server, learning rates, batching.
Times are milliseconds (``*_ms``) or seconds (lists of latencies); rates are calls per second."""

from __future__ import annotations

import asyncio
import collections
import shutil
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from serve_workers import ECHO, INFER, LEARN, run_latency, run_load, run_native

IDLE_GAP_S = 400e-6  # about one loopback round trip of the echo server


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) in ms of latencies in s."""
    a = np.array(samples) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _timed(fn, n: int, idle_s: float = 0.0) -> tuple[float, float]:
    """(p50, p99) ms of ``n`` calls of ``fn`` after 200 warm-up calls, each after ``idle_s`` asleep."""
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


def in_process_service(model_path: Path, root: Path, busy_delay_s: float = 0.0):
    """``(InferenceService, ServedModel, WorkerPool)`` serving ``model_path`` as model "mnist"
    from a repository made under ``root``, as ``sjff serve`` loads it; no gRPC, no learning.
    Close the pool when done."""
    from sjff_server.interrupt import WorkerPool
    from sjff_server.learning.options import LearnOptions
    from sjff_server.metrics import Metrics
    from sjff_server.protocol.inference_service import InferenceService, ServerState
    from sjff_server.serving.models import ModelRegistry, load_served_model
    from sjff_server.serving.repository import scan_repository

    repo = root / "mnist" / "1"
    repo.mkdir(parents=True)
    shutil.copy(model_path, repo / "model.onnx")
    specs, _ = scan_repository(root)
    metrics = Metrics("")
    pool = WorkerPool(1, "bench")
    served, _ = load_served_model(
        specs[0],
        state_dir=None,
        ort_threads=1,
        learn_options=LearnOptions(),
        pool=pool,
        metrics=metrics,
        busy_delay_s=busy_delay_s,
    )
    registry = ModelRegistry()
    registry.add(served)
    state = ServerState()
    state.ready = True
    return InferenceService(registry, state, metrics), served, pool


def _handler_latency(model_path: Path, n: int, payload: bytes) -> tuple[float, float]:
    """(p50, p99) ms of the server's whole ModelInfer handler (parse the request bytes,
    validate, engine, encode, serialise the response, metrics) called directly, no gRPC."""
    from sjff_client.pb import grpc_service_pb2 as pb
    from sjff_server.protocol.registration import serialize_answer

    class Context:  # what the handler asks of a grpc.aio context on the success path
        def time_remaining(self) -> None:
            return None

    async def run() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as tmp:
            svc, _, pool = in_process_service(model_path, Path(tmp))
            svc.busy_gap_s = 0.0  # back-to-back calls here are a lone client's, not load
            ctx = Context()
            lat = []
            for i in range(n + 200):
                t = time.perf_counter()
                serialize_answer(await svc.ModelInfer(pb.ModelInferRequest.FromString(payload), ctx))
                if i >= 200:
                    lat.append(time.perf_counter() - t)
            pool.close()
            return percentiles(lat)

    return asyncio.run(run())


def in_process_latency(model_path: Path, x: np.ndarray, n: int, payload: bytes) -> dict:
    """(p50, p99) ms of one-image calls ``x`` [1, 784] without gRPC: ``AnalogModel.run``, the
    server's engine call (back to back and after an idle gap) and its ModelInfer handler."""
    from sjff_server.inference.engine import AnalogEngine, InferOptions

    from spikingjelly_ff.runtime import load_exported

    model = load_exported(model_path, threads=1)
    engine = AnalogEngine(model)
    pub = engine.publish(0, model)
    out = {
        "AnalogModel.run": _timed(lambda: model.run(x), n),
        "engine": _timed(lambda: engine.run(pub, x, InferOptions()), n),
    }
    # a lone client's call finds the server's CPU idle since the previous answer: the same
    # engine call after a sleep as long as a round trip shows what waking up costs
    out["engine_after_idle"] = _timed(lambda: engine.run(pub, x, InferOptions()), n, IDLE_GAP_S)
    out["handler"] = _handler_latency(model_path, n, payload)
    return out


@dataclass
class LoadClient:
    """The throughput load generator: the C++ one (``exe``, over ``channels`` connections) or
    ``procs`` Python processes (a connection each)."""

    exe: Path | None
    procs: int
    channels: int

    @property
    def name(self) -> str:
        return "native" if self.exe is not None else "python"

    def run(
        self, target: str, method: str, payload: Path, concurrency: int, seconds: float, pid: int | tuple | None = None
    ) -> dict:
        """One load point (see :func:`serve_workers.summarise`), without per-call latencies."""
        if self.exe is not None:
            r = run_native(self.exe, target, method, payload, concurrency, seconds, channels=self.channels, pid=pid)
            del r["latencies"]
            return r
        return run_load(target, method, payload, concurrency, seconds, min(self.procs, concurrency), pid=pid)


def latency(server: str, echo: str, payload: Path, exe: Path | None, calls: int, rounds: int) -> dict:
    """{client: {"grpc" | "echo": {calls, p50_ms, p99_ms}}} of one-call-in-flight ModelInfer
    against the server and the echo, from the Python blocking client and (with ``exe``) the
    C++ one; server and echo alternate over ``rounds`` so that both see the same machine."""
    clients = {"python": lambda t, m: run_latency(t, m, payload, calls)}
    if exe is not None:
        clients["native"] = lambda t, m: run_native(exe, t, m, payload, 1, count=calls)["latencies"]
    samples: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for _ in range(rounds):
        for client, measure in clients.items():
            samples[client, "grpc"] += measure(server, INFER)
            samples[client, "echo"] += measure(echo, ECHO)
    out: dict = collections.defaultdict(dict)
    for (client, name), lat in samples.items():
        p50, p99 = percentiles(lat)
        out[client][name] = {"calls": len(lat), "p50_ms": p50, "p99_ms": p99}
    return dict(out)


def throughput(srv, echo, payload: Path, load: LoadClient, concurrency: list[int], seconds: float, rounds: int) -> dict:
    """{clients: {"server" | "echo": load point}}: the best of ``rounds`` interleaved runs
    (echo, then server) per concurrency; the server's points add ``requests_per_batch``."""
    out = {}
    for c in concurrency:
        best: dict = {"server": None, "echo": None}
        for _ in range(rounds):
            for name, target, method, pid in (
                ("echo", echo.target, ECHO, echo.proc.pid),
                ("server", srv.target, INFER, srv.pid),
            ):
                before = batch_stats(scrape(srv)) if name == "server" else None
                r = load.run(target, method, payload, c, seconds, pid=pid)
                if before is not None:
                    after = batch_stats(scrape(srv))
                    n = after["batches"] - before["batches"]
                    r["requests_per_batch"] = (after["requests"] - before["requests"]) / n if n else float("nan")
                if best[name] is None or r["rate"] > best[name]["rate"]:
                    best[name] = r
        out[c] = best
        server, echo_rate = best["server"]["rate"], best["echo"]["rate"]
        print(f"  {c:>2} clients: server {server:,.0f}/s, echo {echo_rate:,.0f}/s", flush=True)
    return out


def learning(srv, payload: Path, load: LoadClient, seconds: float, token: str) -> dict:
    """Acknowledged (fsync'ed) Learn updates per second at 1, 8 and 32 clients, the number
    acknowledged, the model's final version and its mean fsync group size."""
    from sjff_client import Client

    runs = {}
    for c in (1, 8, 32):
        runs[c] = load.run(srv.target, LEARN, payload, c, seconds)
        print(f"  learning, {c:>2} clients: {runs[c]['rate']:,.0f} updates/s", flush=True)
    with Client(srv.target, token=token) as client:
        version = client.list_versions().current_version
        stats = client.stats(model="mnist").models[0]
    return {
        "runs": runs,
        "acked": sum(r["calls"] for r in runs.values()),
        "final_version": version,
        "mean_group_size": stats.mean_group_size,
    }


def hist_totals(lines: list[str], name: str) -> tuple[float, float]:
    """(sum, count) of Prometheus histogram ``name`` over every label set and process."""
    total = count = 0.0
    for ln in lines:  # several models' and processes' lines add up
        if ln.startswith(f"{name}_sum"):
            total += float(ln.split()[-1])
        elif ln.startswith(f"{name}_count"):
            count += float(ln.split()[-1])
    return total, count


def batch_stats(lines: list[str]) -> dict:
    """Requests per executed batch since the server started, from its Prometheus histogram."""
    requests, batches = hist_totals(lines, "sjff_inference_batch_requests")
    buckets: dict[str, float] = {}
    for ln in lines:
        if ln.startswith("sjff_inference_batch_requests_bucket"):
            le = ln.split('le="')[1].split('"')[0]
            buckets[le] = buckets.get(le, 0.0) + float(ln.split()[-1])
    return {
        "requests": requests,
        "batches": batches,
        "mean_requests_per_batch": requests / batches if batches else float("nan"),
        "batches_of_2_or_more": 1.0 - buckets.get("1.0", 0.0) / batches if batches else float("nan"),
    }


def model_run(lines: list[str]) -> tuple[float, float]:
    """(seconds, batches): how long the server's model ran, over how many batches, since it
    started (its ``sjff_inference_batch_seconds`` histogram, all models and processes)."""
    return hist_totals(lines, "sjff_inference_batch_seconds")


def images_inferred(lines: list[str]) -> float:
    """Images a server has answered (its ``sjff_inference_images_total``, all models)."""
    return sum(float(ln.split()[-1]) for ln in lines if ln.startswith("sjff_inference_images_total"))


def scrape(srv) -> list[str]:
    """The server's /metrics lines (of a :class:`ServerGroup`: every process's); none where
    they cannot be read."""
    lines: list[str] = []
    for one in getattr(srv, "members", (srv,)):
        try:
            lines += urllib.request.urlopen(one.metrics_url, timeout=5).read().decode().splitlines()  # noqa: S310
        except OSError:
            return []  # some processes' counts alone would not add up to the whole
    return lines
