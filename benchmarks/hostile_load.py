"""The server under hostile inference load: event-loop stalls and queued memory. Prints tables.

    python benchmarks/hostile_load.py                  # both parts, about 2 minutes on 2 cores
    python benchmarks/hostile_load.py --part stall --seconds 20
    python benchmarks/hostile_load.py --part memory --flood-streams 32 --flood-rows 256

1. **Stall** (``--max-inline-mmacs``). ``--hostile`` clients send ``--rows``-image requests
   (4,096: the default --max-request-rows, 12.8 MB) back to back to a large analog model
   (spikingjelly_ff/configs/analog-deep.yaml: 784 -> 2000 -> 2000, five views; about 208 M multiply-accumulates
   per image, so one such request computes for tens of seconds on one core). Meanwhile a probe
   sends a ``grpc.health.v1`` Check and a one-image ModelInfer to a small analog model every
   ``--probe-ms``, open loop (a probe does not wait for the previous one), and measures each
   answer's latency. Two servers: ``--max-inline-mmacs 1000000000`` (every analog batch on the
   event loop: the behaviour before the option) and the default (16: batches over about 0.5 ms
   run on the worker threads). A probe may wait until ``--drain`` seconds after the probing
   ends; one still unanswered then shows as "> N s".
2. **Memory** (``--max-inflight-mb``). ``--flood-streams`` ModelStreamInfer streams each keep
   the server's stream window (64 unanswered requests) full of ``--flood-rows``-image FP32
   requests to a spiking model served by one worker, for ``--flood-seconds``. Reported: the
   server's peak resident memory (``VmHWM`` in /proc/PID/status) and how many requests were
   answered or refused, without a budget (``--max-inflight-mb 1000000``) and with budgets.

The analog-deep model is trained for one epoch on 500 images of the shipped MNIST subset
(tests/data/mnist-mini: the weights do not matter, only the cost) and cached in
~/.cache/spikingjelly-ff/bench/; the small models are the test suite's (tests/serving_utils.py).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import print_table  # noqa: E402

CACHE = Path.home() / ".cache" / "spikingjelly-ff" / "bench"
INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
UNLIMITED_MACS = "1000000000"  # 10^15 multiply-accumulates: every analog batch inline
UNLIMITED_MB = "1000000"


def deep_model() -> Path:
    """The shipped config analog-deep, one epoch on 500 images of the MNIST subset, as ONNX (cached)."""
    out = CACHE / "analog-deep-mini.onnx"
    if out.is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sjff-deep-"))
    cli = [sys.executable, "-c", "import sys; from spikingjelly_ff.cli import main; sys.exit(main())"]
    sets = ["train.epochs=1", "train.limit=500", f"data.dataset={ROOT / 'tests/data/mnist-mini'}"]
    sets += ["data.download=false", "train.eval_every=0"]
    args = [a for s in sets for a in ("--set", s)]
    subprocess.run([*cli, "train", "analog-deep", *args, "--out", str(work), "--quiet"], check=True, cwd=ROOT)
    subprocess.run([*cli, "export", str(work / "model"), "--format", "onnx", "--out", str(out)], check=True, cwd=ROOT)
    return out


def quantiles(values: list[float]) -> list[float]:
    """p50, p99, max in ms; an unanswered probe is +inf (it waited longer than the run allowed)."""
    a = np.asarray(values) * 1e3
    return [float(np.percentile(a, 50, method="higher")), float(np.percentile(a, 99, method="higher")), float(a.max())]


def fmt_ms(v: float, limit_s: float) -> str:
    if v == float("inf"):
        return f"> {limit_s:g} s"
    return f"{v:,.1f} ms" if v < 1000 else f"{v / 1e3:,.1f} s"


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of a process in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmHWM"], fields["VmRSS"]


# -- 1. event-loop stalls -------------------------------------------------------------------------


async def stall_run(target: str, big: bytes, small: bytes, args) -> dict:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    hostile_ch = grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
    probe_ch = grpc.aio.insecure_channel(target)
    infer_hostile = hostile_ch.unary_unary(INFER)
    infer_probe = probe_ch.unary_unary(INFER)
    health = health_pb2_grpc.HealthStub(probe_ch)
    check = health_pb2.HealthCheckRequest(service="")
    await health.Check(check, timeout=30)
    await infer_probe(small, timeout=30)
    stop = asyncio.Event()
    sent = {"big": 0}

    async def hostile() -> None:
        while not stop.is_set():
            sent["big"] += 1
            try:
                await infer_hostile(big)
            except grpc.aio.AioRpcError:
                return  # the server went away at the end of the run

    lat: dict[str, list[float]] = {"health": [], "infer": []}
    late = {"health": 0, "infer": 0}
    limit = args.seconds + args.drain

    async def probe(kind: str, t_end: float) -> None:
        t0 = time.perf_counter()
        try:
            if kind == "health":
                await health.Check(check, timeout=max(1.0, t_end - time.monotonic()))
            else:
                await infer_probe(small, timeout=max(1.0, t_end - time.monotonic()))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            late[kind] += 1
            lat[kind].append(float("inf"))
            return
        lat[kind].append(time.perf_counter() - t0)

    hostiles = [asyncio.ensure_future(hostile()) for _ in range(args.hostile)]
    await asyncio.sleep(1.0)  # the first large requests are on their way (12.8 MB each)
    t_end = time.monotonic() + limit
    probes = []
    start = time.monotonic()
    while time.monotonic() - start < args.seconds:
        probes.append(asyncio.ensure_future(probe("health", t_end)))
        probes.append(asyncio.ensure_future(probe("infer", t_end)))
        await asyncio.sleep(args.probe_ms / 1e3)
    await asyncio.gather(*probes)
    stop.set()
    for h in hostiles:
        h.cancel()
    await hostile_ch.close(None)
    await probe_ch.close(None)
    return {"lat": lat, "late": late, "big_sent": sent["big"]}


def stall_part(args) -> list[list]:
    import serving_utils as su
    from sjff_client.client import build_infer_request
    from sjff_server.harness import ServerProcess

    models = su.trained_models()
    images, _ = su.mnist_test(256)
    big = build_infer_request(su.as_float(np.resize(images, (args.rows, 784))), "deep").SerializeToString()
    small = build_infer_request(images[:1], "mnist").SerializeToString()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = su.make_repository(Path(tmp) / "repo", {"deep": deep_model(), "mnist": models["analog"]})
        for label, value in (("before: every analog batch inline", UNLIMITED_MACS), ("after: default", "16")):
            extra = ["--max-inline-mmacs", value, "--max-message-bytes", str(64 << 20), "--log-level", "warning"]
            srv = ServerProcess(repo, extra_args=extra, metrics=False).start()
            try:
                res = asyncio.run(stall_run(srv.target, big, small, args))
            finally:
                srv.kill()  # the large requests would compute for minutes more
            h, i = res["lat"]["health"], res["lat"]["infer"]
            limit = args.seconds + args.drain  # the longest a probe was allowed to wait
            hq = " / ".join(fmt_ms(v, limit) for v in quantiles(h))
            iq = " / ".join(fmt_ms(v, limit) for v in quantiles(i)[:2])
            answered = f"{len(h) - res['late']['health']} of {len(h)}"
            rows.append([f"{label} (--max-inline-mmacs {value})", hq, iq, answered, res["big_sent"]])
    return rows


# -- 2. memory under a flood of queued requests ---------------------------------------------------


async def flood_run(target: str, request: bytes, args, pid: int) -> dict:
    import grpc
    from sjff_client.pb import grpc_service_pb2 as pb

    counts = {"ok": 0, "refused": 0, "other": 0}
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
        for _ in range(max(1, args.flood_streams // 8))
    ]
    stop = asyncio.Event()

    async def stream(k: int) -> None:
        call = channels[k % len(channels)].stream_stream(STREAM)

        async def requests():
            while not stop.is_set():
                yield request

        try:
            async for raw in call(requests()):
                resp = pb.ModelStreamInferResponse.FromString(raw)
                if not resp.error_message:
                    counts["ok"] += 1
                elif resp.error_message.startswith("RESOURCE_EXHAUSTED"):
                    counts["refused"] += 1
                else:
                    counts["other"] += 1
        except grpc.aio.AioRpcError:
            pass  # the server went away at the end of the run

    base = peak_rss_mb(pid)[1]
    tasks = [asyncio.ensure_future(stream(k)) for k in range(args.flood_streams)]
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.flood_seconds:
        await asyncio.sleep(0.5)
    hwm, rss = peak_rss_mb(pid)
    stop.set()
    for t in tasks:
        t.cancel()
    for ch in channels:
        await ch.close(None)
    return {"base": base, "hwm": hwm, "rss": rss, **counts}


def memory_part(args) -> list[list]:
    import serving_utils as su
    from sjff_client.client import build_infer_request
    from sjff_server.harness import ServerProcess

    models = su.trained_models()
    images, _ = su.mnist_test(256)
    x = su.as_float(np.resize(images, (args.flood_rows, 784)))
    request = build_infer_request(x, "snn").SerializeToString()
    mib = x.nbytes / 2**20
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = su.make_repository(Path(tmp) / "repo", {"snn": models["spike"]})
        for budget in [UNLIMITED_MB, *args.budgets]:
            extra = ["--max-inflight-mb", budget, "--workers", "1", "--max-message-bytes", str(64 << 20)]
            srv = ServerProcess(repo, extra_args=[*extra, "--log-level", "warning"], metrics=False).start()
            try:
                res = asyncio.run(flood_run(srv.target, request, args, srv.pid))
            finally:
                srv.kill()
            label = "no budget (before)" if budget == UNLIMITED_MB else f"--max-inflight-mb {budget}"
            rows.append(
                [
                    label,
                    f"{res['base']:,.0f} MiB",
                    f"{res['hwm']:,.0f} MiB",
                    f"{res['ok']:,} / {res['refused']:,}" + (f" (+{res['other']} other)" if res["other"] else ""),
                ]
            )
    print(f"(each request: {args.flood_rows} images, {mib:.2f} MiB of float32)")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["stall", "memory", "both"], default="both")
    ap.add_argument("--seconds", type=float, default=20.0, help="probing time per server (stall part)")
    ap.add_argument("--drain", type=float, default=30.0, help="longest wait for a probe after the run")
    ap.add_argument("--probe-ms", type=float, default=50.0, help="interval between probes")
    ap.add_argument("--hostile", type=int, default=2, help="clients sending large requests")
    ap.add_argument("--rows", type=int, default=4096, help="images per large request")
    ap.add_argument("--flood-streams", type=int, default=16)
    ap.add_argument("--flood-rows", type=int, default=512, help="images per flood request")
    ap.add_argument("--flood-seconds", type=float, default=15.0)
    ap.add_argument("--budgets", nargs="+", default=["256", "64"], help="--max-inflight-mb values to compare")
    args = ap.parse_args(argv)
    if args.part in ("stall", "both"):
        rows = stall_part(args)
        print_table(
            f"Event-loop stalls: {args.hostile} clients send {args.rows}-image requests to analog-deep; "
            f"probes every {args.probe_ms:g} ms for {args.seconds:g} s",
            [
                "server",
                "health Check p50 / p99 / max",
                "1-image ModelInfer, small model, p50 / p99",
                "checks answered",
                "large sent",
            ],
            rows,
        )
    if args.part in ("memory", "both"):
        rows = memory_part(args)
        print_table(
            f"Queued memory: {args.flood_streams} streams keep 64 requests each in flight to a spiking model "
            f"(--workers 1) for {args.flood_seconds:g} s",
            ["server", "RSS before", "peak RSS (VmHWM)", "answered / refused"],
            rows,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
