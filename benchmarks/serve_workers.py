"""The client processes benchmarks/serve.py times the server with, and the bare echo server it
compares against: a closed-loop ``grpc.aio`` load generator, a blocking latency client and the
C++ load generator (benchmarks/native/grpc_load.cc), each in a process of its own so that it
competes with the server for the cores as any client on the machine would.

The Python modes are commands of this file (the parent starts it with :func:`run_load`,
:func:`run_latency` or :class:`Echo`; results travel back as JSON files):

    python benchmarks/serve_workers.py echo READY_FILE [CPUS]
    python benchmarks/serve_workers.py load TARGET METHOD PAYLOAD CONCURRENCY SECONDS COUNT OUT
    python benchmarks/serve_workers.py latency TARGET METHOD PAYLOAD COUNT OUT

Requests are pre-serialised bytes and answers are not parsed, so a client costs the server and
the echo the same.
"""

from __future__ import annotations

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
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "spikingjelly-ff" / "bench"
TOKEN = "benchmark-token-0123456789abcdef"
INFER = "/inference.GRPCInferenceService/ModelInfer"
LEARN = "/spikingjelly_ff.v1.Learning/Learn"
ECHO = "/bench.Echo/Echo"
#: with ``serve.py --pin``: ["taskset", "-c", LIST], confining every client process to the client CPUs
CLIENT_PREFIX: list[str] = []
WARM_UP_CALLS = 20  # per coroutine group of the Python load generator, before timing starts


def _metadata() -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKEN}"),)


# -- the worker processes ------------------------------------------------------------------------


def echo_server(ready_file: str, cpus: str = "") -> None:
    """A bare grpc.aio server that returns the request bytes (no parsing, no work) until SIGTERM;
    writes {"port": P} to ``ready_file`` once it listens. With ``cpus`` ("1,2") it runs only
    there, like ``sjff serve --cpus``. It imports grpc as the server does, under the server's
    gRPC core settings (``sjff_server.tuning.grpc_experiments``), so that the two compare
    handlers over the same transport."""
    # first: importing the server package imports grpc under its settings (sjff_server.tuning)
    from sjff_server import GRPC_EXPERIMENTS_IN_FORCE  # noqa: F401

    # isort: split
    import grpc
    from grpc import aio

    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})  # before any thread starts

    async def serve() -> None:
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
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(0)

    asyncio.run(serve())


def load_generator(
    target: str, method: str, payload_file: str, concurrency: int, seconds: float, count: int, out: str
) -> None:
    """``concurrency`` coroutines calling ``method`` back to back for ``seconds`` (or ``count``
    calls in total); writes {calls, errors, elapsed (s), latencies (s)} to ``out``."""
    import grpc
    from grpc import aio

    payload = Path(payload_file).read_bytes()
    metadata = _metadata()

    async def drive() -> dict:
        async with aio.insecure_channel(target) as channel:
            call = channel.unary_unary(method)  # bytes in, bytes out: no client-side (de)serialisation
            for _ in range(WARM_UP_CALLS):
                await call(payload, metadata=metadata)
            lat: list[float] = []
            errors: collections.Counter = collections.Counter()
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

    Path(out).write_text(json.dumps(asyncio.run(drive())))


def latency_client(target: str, method: str, payload_file: str, count: int, out: str) -> None:
    """One blocking client (``grpc.insecure_channel``, as an edge device or tritonclient's sync
    API calls) sending ``count`` sequential calls after 200 warm-up calls; writes the
    latencies (s) to ``out``."""
    import grpc

    payload = Path(payload_file).read_bytes()
    metadata = _metadata()
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


# -- the parent's side ---------------------------------------------------------------------------


def _command(mode: str, *args: object) -> list[str]:
    return [*CLIENT_PREFIX, sys.executable, __file__, mode, *map(str, args)]


def cpu_seconds(pid: int | tuple[int, ...]) -> float:
    """User + system CPU time (s) of a process, all its threads, from /proc (of several
    processes: their sum)."""
    total = 0
    for one in (pid,) if isinstance(pid, int) else pid:
        fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def summarise(latencies: list[float], calls: int, elapsed: float, errors: dict, cpu_per_call_s: float) -> dict:
    """One load point: {calls, rate (calls/s), p50_ms, p99_ms, errors, server_cpu_us}."""
    lat = np.array(latencies)
    return {
        "calls": calls,
        "rate": calls / elapsed,
        "p50_ms": float(np.percentile(lat, 50) * 1e3) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99) * 1e3) if len(lat) else float("nan"),
        "errors": errors,
        "server_cpu_us": cpu_per_call_s * 1e6,
    }


def run_latency(target: str, method: str, payload: Path, count: int) -> list[float]:
    """Latencies (s) of ``count`` sequential blocking calls, from a separate client process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lat.json"
        cmd = _command("latency", target, method, payload, count, out)
        subprocess.run(cmd, check=True, timeout=count * 0.05 + 120)
        return json.loads(out.read_text())


def run_load(
    target: str,
    method: str,
    payload: Path,
    concurrency: int,
    seconds: float,
    procs: int,
    count: int = 0,
    pid: int | tuple[int, ...] | None = None,
) -> dict:
    """The Python load generator in ``procs`` processes (splitting the concurrency), results
    merged as :func:`summarise`; with ``pid`` (one or several), also those processes' CPU time
    per call."""
    procs = max(1, min(procs, concurrency))
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    cpu0 = cpu_seconds(pid) if pid else 0.0
    with tempfile.TemporaryDirectory() as tmp:
        children = []
        for i, share in enumerate(shares):
            out = Path(tmp) / f"load{i}.json"
            cmd = _command("load", target, method, payload, share, seconds, count // procs, out)
            children.append((subprocess.Popen(cmd), out))
        results = []
        for child, out in children:
            if child.wait(seconds + 120) != 0:
                raise RuntimeError(f"load generator failed ({child.returncode})")
            results.append(json.loads(out.read_text()))
    cpu = cpu_seconds(pid) - cpu0 if pid else float("nan")
    calls = sum(r["calls"] for r in results)
    errors: collections.Counter = collections.Counter()
    for r in results:
        errors.update(r["errors"])
    return summarise(
        [x for r in results for x in r["latencies"]],
        calls,
        max(r["elapsed"] for r in results),
        dict(errors),
        cpu / max(calls + WARM_UP_CALLS * procs, 1),
    )


class Echo:
    """The echo server in its own process (on ``cpus`` if given); ``target`` is its address."""

    def __init__(self, cpus: set[int] | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        ready = Path(self._tmp.name) / "ready.json"
        pin = ",".join(map(str, sorted(cpus))) if cpus else ""
        self.proc = subprocess.Popen([sys.executable, __file__, "echo", str(ready), pin])
        for _ in range(600):
            if ready.exists():
                break
            time.sleep(0.05)
        self.target = f"127.0.0.1:{json.loads(ready.read_text())['port']}"

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self._tmp.cleanup()


# -- the C++ load generator (benchmarks/native/grpc_load.cc) ---------------------------------------
# It keeps N calls in flight over a few connections for a few microseconds of client work per
# call, so the cores are left to the servers being measured.

NATIVE_SRC = ROOT / "benchmarks" / "native" / "grpc_load.cc"
NATIVE_WARM_UP_CALLS = 20  # grpc_load's warm-up calls on each channel, before timing starts
NATIVE_CHANNELS = 2  # grpc_load's connections unless told otherwise


def native_client() -> tuple[Path | None, str]:
    """The C++ load generator, built on first use into the benchmark cache (named by the
    source's digest), or (None, reason) where g++ or the gRPC C++ library (pkg-config grpc++)
    is missing."""
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
    tmp.rename(exe)  # atomic: a concurrent run never executes a half-written file
    return exe, ""


def run_native(
    exe: Path,
    target: str,
    method: str,
    payload: Path,
    concurrency: int,
    seconds: float = 0.0,
    count: int = 0,
    channels: int = NATIVE_CHANNELS,
    pid: int | tuple[int, ...] | None = None,
) -> dict:
    """``concurrency`` calls in flight over ``channels`` connections for ``seconds`` (or
    ``count`` calls): the keys of :func:`summarise` plus ``latencies`` (s).
    Raises RuntimeError when the generator fails (a refused warm-up call included)."""
    import grpc

    channels = min(channels, concurrency)
    cmd = [*CLIENT_PREFIX, str(exe), "--target", target, "--method", method, "--payload", str(payload)]
    cmd += ["--concurrency", str(concurrency), "--channels", str(channels)]
    cmd += ["--seconds", str(seconds)] if seconds else ["--count", str(count)]
    cmd += ["--metadata", f"authorization=Bearer {TOKEN}"]
    cpu0 = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + count * 0.05 + 120)
    if out.returncode != 0:
        raise RuntimeError(f"grpc_load failed ({out.returncode}): {out.stderr.strip()}")
    cpu = cpu_seconds(pid) - cpu0 if pid else float("nan")
    names = {code.value[0]: code.name for code in grpc.StatusCode}
    r = json.loads(out.stdout)
    errors = {names.get(int(k), k): n for k, n in r["errors"].items()}
    result = summarise(
        r["latencies"], r["calls"], r["elapsed"], errors, cpu / max(r["calls"] + NATIVE_WARM_UP_CALLS * channels, 1)
    )
    return {**result, "latencies": r["latencies"]}


def main(argv: list[str]) -> int:
    mode, args = argv[0], argv[1:]
    if mode == "echo":
        echo_server(*args[:2])
    elif mode == "load":
        t, m, p, c, s, n, o = args
        load_generator(t, m, p, int(c), float(s), int(n), o)
    elif mode == "latency":
        t, m, p, n, o = args
        latency_client(t, m, p, int(n), o)
    else:
        raise SystemExit(f"unknown worker mode {mode!r}; expected echo, load or latency")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
