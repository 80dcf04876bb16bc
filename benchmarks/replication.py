"""Replicated serving over Redis Streams beside the local log, in one run. Prints one table.

    python benchmarks/replication.py                  # full run (several minutes)
    python benchmarks/replication.py --quick          # smoke run, about 1-2 minutes
    python benchmarks/replication.py --seconds 20 --clients 1,8,32 --json out.json
    python benchmarks/replication.py --quick --snapshot-every 100000 --late-after 3000  # catch-up from the stream

All parts are real: a redis-server (tests/redis_utils.py: loopback, free port, temporary
directory, ``appendonly yes``, ``appendfsync always``), ``sjff serve`` processes
(``sjff_server.harness.ServerProcess``) with the tests' small analog ONNX export (layers
[128, 64], tests/serving_utils.py) and grpc.aio clients in this process.

1. Durable learns/s at 1 / 8 / 32 closed-loop clients: one server with its local fsynced log,
   then 3 replicas of one Redis stream (learns round-robin).
2. Replication lag, acknowledgement -> applied on every replica, at a paced 200 learns/s
   (see replication_load.paced_lag for the probe and its measured cost).
3. Inference/s (one image per call, closed loop) on the local server, 1 replica and 3.
4. Correctness on a fresh stream: learns round-robin while others infer; kill -9 of a replica
   mid-run and restart; kill -9 of redis-server mid-run and restart from its AOF; a replica
   started after ``--late-after`` updates; every answer and digest against an offline replay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import serving_utils as su  # noqa: E402
from common import machine, print_table  # noqa: E402
from redis_utils import RedisServer  # noqa: E402
from replication_checks import Ledger, Traffic, replay  # noqa: E402
from replication_cluster import Node, Samples, local_server, replica, wait_serving  # noqa: E402
from replication_faults import FaultRuns  # noqa: E402
from replication_load import closed_infers, closed_learns, paced_lag  # noqa: E402

LEARN_TARGET = 500.0  # learns/s through Redis at 32 clients (issue 14)
LAG_TARGET_MS = 50.0  # p99 at 200 learns/s


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt_rate(r: dict) -> str:
    err = f", {sum(r['errors'].values())} failed {r['errors']}" if r["errors"] else ""
    return f"{r['rate']:,.0f}/s (p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms{err})"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


class Bench:
    """One run: the shared parts (work dir, Redis, repository, samples) and the results."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.token_file = su.write_token(work / "token.txt")
        self.token = su.TOKEN
        self.model = su.trained_models()["analog"]
        self.repo = su.make_repository(work / "repo", {"mnist": self.model})
        images, labels = su.mnist_test(256)
        self.samples = Samples(su.as_float(images), labels)
        self.redis = RedisServer(work / "redis")
        self.results: dict = {}
        self.redis_version = "?"
        self.rows: list[list[str]] = []

    def replicas(self, n: int, prefix: str, snapshot_every: int = 0) -> list[Node]:
        url, tok = self.redis.url, self.token
        return [
            replica(self.repo, url, prefix, self.token_file, tok, f"{prefix}-r{k}", snapshot_every) for k in range(n)
        ]

    async def start(self, nodes: list[Node]) -> list[Node]:
        await asyncio.gather(*(n.start() for n in nodes))
        for n in nodes:
            await wait_serving(n, 0)
        return nodes

    # -- figures --------------------------------------------------------------------------------

    async def learn_rates(self, nodes: list[Node], key: str) -> None:
        out = self.results.setdefault("learns", {}).setdefault(key, {})
        base = 0
        for c in self.args.clients:
            log(f"{key}: durable learns, {c} clients, {self.args.seconds} s")
            out[c] = await closed_learns(nodes, self.samples, c, self.args.seconds, base)
            base += out[c]["calls"] + 10_000

    async def infer_rate(self, nodes: list[Node], key: str) -> None:
        log(f"{key}: inference, {self.args.infer_clients} clients, {self.args.seconds} s")
        got = await closed_infers(nodes, self.samples.x, self.args.infer_clients, self.args.seconds)
        self.results.setdefault("infer", {})[key] = got

    async def figures(self) -> None:
        local = await self.start([local_server(self.repo, self.work / "state", self.token_file, self.token)])
        try:
            await self.learn_rates(local, "local")
            await self.infer_rate(local, "local")
        finally:
            await local[0].stop()
        nodes = await self.start(self.replicas(3, "bench"))
        try:
            await self.learn_rates(nodes, "redis")
            a = self.args
            log(f"replication lag at {a.lag_rate:g} learns/s for {a.lag_seconds} s")
            self.results["lag"] = await paced_lag(nodes, self.samples, a.lag_rate, a.lag_seconds, base=10**7)
            await self.infer_rate(nodes[:1], "redis-1")
            await self.infer_rate(nodes, "redis-3")
        finally:
            await asyncio.gather(*(n.stop() for n in nodes))

    # -- correctness ----------------------------------------------------------------------------

    async def checks(self) -> None:
        a, ledger = self.args, Ledger()
        nodes = await self.start(self.replicas(3, "check", a.snapshot_every))
        traffic = Traffic(nodes, self.samples, ledger, a.learn_clients, a.infer_clients)

        def new_replica(name: str) -> Node:
            return replica(self.repo, self.redis.url, "check", self.token_file, self.token, name, a.snapshot_every)

        runs = FaultRuns(nodes, traffic, self.redis, new_replica)
        self.results["checks"] = runs.results
        try:
            await runs.mixed(a.mixed)
            await runs.kill_replica(a.mixed)
            await runs.kill_redis(a.mixed)
            await runs.late(a.late_after)
        finally:
            traffic.stop()
            await asyncio.gather(*(n.stop() for n in nodes), return_exceptions=True)
        log(f"offline replay of {ledger.acked} updates, {len(ledger.answers)} answers")
        runs.results["replay"] = replay(self.model, self.samples, ledger, runs.digests)

    # -- the table ------------------------------------------------------------------------------

    def table(self) -> None:
        res, a, rows = self.results, self.args, self.rows
        for c in a.clients:
            lo, re = res["learns"]["local"][c], res["learns"]["redis"][c]
            target = ""
            if c == 32:
                target = f">= {LEARN_TARGET:.0f}/s via Redis: {'met' if re['rate'] >= LEARN_TARGET else 'NOT met'}"
            rows.append([f"durable learns/s, {c} client{'s' * (c > 1)}", fmt_rate(lo), fmt_rate(re), target])
        lag = res["lag"]
        rows.append(
            [
                f"lag ack -> applied on all 3, {lag['rate']:g} learns/s paced ({lag['learns']} learns, sent at "
                f"{lag['achieved_rate']:.0f}/s)",
                "-",
                f"p50 {lag['lag_p50_ms']:.1f} ms, p99 {lag['lag_p99_ms']:.1f} ms, max {lag['lag_max_ms']:.1f} ms; "
                f"probe alone p50 {lag['probe_p50_ms']:.1f}, p99 {lag['probe_p99_ms']:.1f} ms"
                + (f"; failed {lag['errors']}" if lag["errors"] else ""),
                f"p99 <= {LAG_TARGET_MS:.0f} ms: {'met' if lag['lag_p99_ms'] <= LAG_TARGET_MS else 'NOT met'}",
            ]
        )
        inf = res["infer"]
        n = a.infer_clients
        rows.append(
            [f"inference/s, 1 server/replica, {n} clients", fmt_rate(inf["local"]), fmt_rate(inf["redis-1"]), ""]
        )
        rows.append([f"inference/s, 3 replicas, {n} clients", "-", fmt_rate(inf["redis-3"]), ""])
        self.check_rows()

    def total_answers(self) -> int:
        ch = self.results["checks"]
        return sum(ch[k]["answers"] for k in ("mixed", "kill_replica", "kill_redis"))

    def check_rows(self) -> None:
        ch, a = self.results["checks"], self.args
        rp = ch["replay"]

        def row(what: str, r: dict, text: str) -> None:
            ok = r["ok"] and rp["digest_ok"].get(r["acked"], False)  # equal digests, and = the replay's
            end = f"end v{r['acked']} x{len(r['versions'])}, {r['digests']} digest, lost {r['lost']}"
            self.rows.append([what, "-", f"{text}; {end}", verdict(ok)])

        m = ch["mixed"]
        row(
            f"3 replicas, {a.learn_clients} learners round-robin + {a.infer_clients} inferring",
            m,
            f"{m['acked']} acked, {m['answers']} inferences",
        )
        answers_ok = rp["missing"] == 0 and rp["equal"] == rp["answers"] and rp["unmatched_versions"] == 0
        self.rows.append(
            [
                f"  inference answers (first {rp['answers']:,} of {self.total_answers():,}) = replay of their version",
                "-",
                f"{rp['equal']}/{rp['answers']} equal (bit-identical {rp['bitwise']}, "
                f"max |diff| {rp['max_diff']:.1e}); "
                f"replay digest = servers' at {sum(rp['digest_ok'].values())}/{len(rp['digest_ok'])} run ends",
                verdict(answers_ok and all(rp["digest_ok"].values())),
            ]
        )
        k = ch["kill_replica"]
        row(
            "kill -9 of 1 replica mid-run, restart",
            k,
            f"killed at v{k['killed_at']}; restart began at v{k['behind']}: process ready {k['ready_s']:.1f} s, "
            f"serving v{k['behind']} after {k['serving_s']:.1f} s (shared snapshot v{k['loaded_from']} + stream); "
            f"{k['retried']} learns retried elsewhere, {k['infer_failed']} inferences failed (sent to it)",
        )
        r = ch["kill_redis"]
        row(
            "kill -9 of redis-server mid-run, restart from AOF",
            r,
            f"killed at v{r['killed_at']}, down {r['down_s']:.1f} s ({r['answers_while_down']} inferences answered "
            f"meanwhile); learns acknowledged again {r['resumed_s']:.1f} s after the kill; {r['retried']} retried",
        )
        lt = ch["late"]
        row(
            f"replica started after {lt['acked']} updates",
            lt,
            f"catch-up {lt['serving_s']:.1f} s (process ready {lt['ready_s']:.1f} s; shared snapshot "
            f"v{lt['loaded_from']} + {lt['acked'] - (lt['loaded_from'] or 0)} entries)",
        )


def fs_type(path: Path) -> str:
    """The file system holding ``path`` (fsync on tmpfs would prove nothing)."""
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        dev, mnt, typ = line.split()[:3]
        if str(path.resolve()).startswith(mnt) and len(mnt) > len(best):
            best, kind = mnt, f"{typ} ({dev})"
    return kind


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run of 1-2 minutes")
    ap.add_argument("--seconds", type=float, help="seconds per throughput point (default 10; --quick 2)")
    ap.add_argument("--clients", help="learn client counts, comma-separated (default 1,8,32)")
    ap.add_argument("--infer-clients", type=int, default=16, help="closed-loop inference clients (default 16)")
    ap.add_argument("--lag-rate", type=float, default=200.0, help="paced learns/s of the lag run (default 200)")
    ap.add_argument("--lag-seconds", type=float, help="seconds of the lag run (default 20; --quick 4)")
    ap.add_argument("--mixed", type=int, help="learns per correctness run (default 1000; --quick 120)")
    ap.add_argument("--late-after", type=int, help="updates before the late replica starts (default 5000; --quick 600)")
    ap.add_argument("--learn-clients", type=int, default=6, help="learners in the correctness runs (default 6)")
    ap.add_argument(
        "--snapshot-every",
        type=int,
        default=0,
        help="--replication-snapshot-every of the correctness replicas (default 0: the server's, 1000)",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    q = args.quick
    args.seconds = args.seconds or (2.0 if q else 10.0)
    args.lag_seconds = args.lag_seconds or (4.0 if q else 20.0)
    args.mixed = args.mixed or (120 if q else 1000)
    args.late_after = args.late_after or (600 if q else 5000)
    args.clients = [int(c) for c in (args.clients or "1,8,32").split(",")]
    args.infer_clients = max(1, args.infer_clients)
    return args


async def run(bench: Bench) -> None:
    await bench.figures()
    await bench.checks()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="sjff-repl-bench-"))
    disk = fs_type(work)
    t0 = time.perf_counter()
    try:
        bench = Bench(args, work)
        bench.redis.start()
        bench.redis_version = bench.redis.client().info()["redis_version"]
        try:
            asyncio.run(run(bench))
        finally:
            bench.redis.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    bench.table()
    loads = f"{'/'.join(f'{x:.2f}' for x in load_before)}, after {'/'.join(f'{x:.2f}' for x in load_after)}"
    note = (
        f"{'--quick run. ' if args.quick else ''}Machine: {machine()}; load average (1/5/15 min) before {loads}; "
        f"run took {time.perf_counter() - t0:.0f} s. Model: tests/serving_utils.py analog export "
        f"({bench.model.name}), one image per learn/inference call. Work dir (local log, Redis AOF) on {disk}. "
        "Local: 1 server, --state-dir log fsynced per group (--max-group 64). "
        f"Redis: redis-server {bench.redis_version} on loopback, appendonly yes + appendfsync always; 3 replicas, "
        "every replica applies every entry; clients: grpc.aio coroutines in one process (the benchmark's) on the "
        "same machine as every server. Lag probe: ModelInfer with min_version=v on each other replica right after "
        "the ack (answered when v is applied, event-driven); 'probe alone' is that call once v is already applied."
    )
    print_table(
        "Replicated serving (Redis Streams) vs the local log, one run",
        ["run", "local log", "Redis, 3 replicas", "target / check"],
        bench.rows,
        note,
    )
    bench.results.update(load_before=load_before, load_after=load_after, cpus=os.cpu_count(), args=vars(args))
    if args.json:
        Path(args.json).write_text(json.dumps(bench.results, indent=2, default=str))
    ok = all(r[3] != "FAIL" for r in bench.rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
