"""The figures of benchmarks/replication.py: closed-loop learn and inference throughput and the
replication lag at a paced learn rate. Clients are coroutines of one grpc.aio process (the
benchmark's), sending to the given servers round-robin. Rates are calls per second, latencies
milliseconds."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import grpc
import numpy as np
from replication_cluster import Node, Samples

WARM_UP_S = 0.5  # calls in the first half second are not counted (channels, caches)


def pct(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) in ms of durations in s (NaN, NaN without samples)."""
    if not samples:
        return float("nan"), float("nan")
    a = np.asarray(samples) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


async def _closed_loop(call, clients: int, seconds: float) -> dict:
    """``clients`` coroutines each awaiting ``call(k)`` back to back for ``seconds`` (after the
    warm-up); rate, latency percentiles and failures by status."""
    counter = itertools.count()
    lat: list[float] = []
    errors: dict[str, int] = {}
    t_start = time.perf_counter()
    t_count, t_end = t_start + WARM_UP_S, t_start + WARM_UP_S + seconds

    async def client() -> None:
        while (now := time.perf_counter()) < t_end:
            try:
                await call(next(counter))
            except grpc.RpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                continue
            if now >= t_count:
                lat.append(time.perf_counter() - now)

    await asyncio.gather(*(client() for _ in range(clients)))
    p50, p99 = pct(lat)
    return {
        "clients": clients,
        "calls": len(lat),
        "rate": len(lat) / seconds,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": errors,
    }


async def closed_learns(nodes: list[Node], samples: Samples, clients: int, seconds: float, base: int = 0) -> dict:
    """Durable learns/s: each call one image, a fresh request id, to ``nodes`` round-robin; a
    call counts once the server acknowledged it (local: fsynced; replicated: in Redis's AOF
    and applied by the accepting replica)."""

    async def call(k: int) -> None:
        await nodes[k % len(nodes)].learn(samples.learn_request(base + k, uuid.uuid4().hex))

    return await _closed_loop(call, clients, seconds)


async def closed_infers(nodes: list[Node], x: np.ndarray, clients: int, seconds: float) -> dict:
    """Inferences/s of one image each (``x`` [n, 784]), to ``nodes`` round-robin."""

    async def call(k: int) -> None:
        j = k % len(x)
        await nodes[k % len(nodes)].infer(x[j : j + 1])

    return await _closed_loop(call, clients, seconds)


async def paced_lag(nodes: list[Node], samples: Samples, rate: float, seconds: float, base: int = 0) -> dict:
    """Replication lag at an open-loop ``rate`` of learns/s (each sent at its scheduled time,
    whether or not earlier ones are answered) to ``nodes`` round-robin.

    Probe: once learn ``k`` is acknowledged at version v by node A, every other node gets an
    inference of one image with ``min_version = v``, which the server answers as soon as it has
    applied v (it waits on the apply task's event, no polling). lag = the last probe's answer
    - the acknowledgement. The probe's own cost (one inference round trip) is measured under
    the same load by a second call with the same, already reached, ``min_version`` on one node
    for every 4th learn; it is reported beside the lag, not subtracted."""
    lags: list[float] = []
    overhead: list[float] = []
    late: list[float] = []  # how far behind schedule each learn was sent (the pacer's honesty)
    errors: dict[str, int] = {}
    n = int(rate * seconds)
    x1 = samples.x[:1]

    async def one(k: int) -> None:
        a = nodes[k % len(nodes)]
        others = [o for o in nodes if o is not a]
        try:
            v = (await a.learn(samples.learn_request(base + k, uuid.uuid4().hex))).version
            t_ack = time.perf_counter()
            await asyncio.gather(*(o.infer(x1, min_version=v, timeout=30) for o in others))
            lags.append(time.perf_counter() - t_ack)
            if k % 4 == 0 and others:
                t = time.perf_counter()
                await others[0].infer(x1, min_version=v)
                overhead.append(time.perf_counter() - t)
        except grpc.RpcError as exc:
            errors[exc.code().name] = errors.get(exc.code().name, 0) + 1

    tasks = []
    t0 = time.perf_counter() + 0.05
    for k in range(n):
        due = t0 + k / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        late.append(time.perf_counter() - due)
        tasks.append(asyncio.ensure_future(one(k)))
    sent_s = time.perf_counter() - t0  # the rate the learns were sent at (answers not awaited)
    await asyncio.gather(*tasks)
    p50, p99 = pct(lags)
    o50, o99 = pct(overhead)
    return {
        "rate": rate,
        "learns": n,
        "achieved_rate": n / sent_s if sent_s > 0 else 0.0,
        "lag_p50_ms": p50,
        "lag_p99_ms": p99,
        "lag_max_ms": max(lags) * 1e3 if lags else float("nan"),
        "probe_p50_ms": o50,
        "probe_p99_ms": o99,
        "send_late_p99_ms": pct(late)[1],
        "errors": errors,
    }
