"""The correctness runs of benchmarks/replication.py, on one fresh stream, one after the other:
learns round-robin while others infer, kill -9 of a replica mid-run, kill -9 of redis-server
mid-run, then a replica started after N updates. Each run ends with every replica serving the
version = acknowledged count; the digests they report there are kept for the offline replay.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

from redis_utils import RedisServer
from replication_checks import Ledger, Traffic
from replication_cluster import Node, converge, wait_serving

FOREVER = 10**12  # a Traffic target never reached: stopped by setting a real one


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class FaultRuns:
    """The runs on ``nodes`` (3 replicas) with ``traffic`` (learners + inference clients)."""

    def __init__(self, nodes: list[Node], traffic: Traffic, redis: RedisServer, new_replica: Callable[[str], Node]):
        self.nodes, self.traffic, self.redis, self.new_replica = nodes, traffic, redis, new_replica
        self.ledger: Ledger = traffic.ledger
        self.digests: dict[int, str] = {}  # version -> the replicas' common weights_sha256 there
        self.results: dict[str, dict] = {}
        self._before = (0, 0, 0)  # ledger counters at the end of the previous run

    async def settle(self, name: str, group: list[Node]) -> dict:
        """Wait until ``group`` serves the acknowledged count; the run's checks."""
        led = self.ledger
        states = await converge(group, led.acked)
        self.digests[led.acked] = states[0][1]
        retried, answered, failed = self._before
        r = {
            "acked": led.acked,
            "versions": [s[0] for s in states],
            "digests": len({s[1] for s in states}),
            "lost": led.lost(min(s[0] for s in states)),
            "retried": led.retried - retried,
            "answers": led.answered - answered,
            "infer_failed": sum(led.infer_failed.values()) - failed,
        }
        r["ok"] = r["digests"] == 1 and r["lost"] == 0 and set(r["versions"]) == {led.acked}
        self._before = (led.retried, led.answered, sum(led.infer_failed.values()))
        self.results[name] = r
        log(f"{name}: {r}")
        return r

    async def mixed(self, n: int) -> None:
        log(f"correctness: {n} learns round-robin over 3 replicas while others infer")
        await self.traffic.start(self.ledger.acked + n).finish()
        await self.settle("mixed", self.nodes)

    async def _run_on(self, n: int) -> None:
        """Let the traffic acknowledge ``n`` more updates, then stop it."""
        self.traffic.target = self.ledger.acked + n
        await self.traffic.finish()

    async def kill_replica(self, n: int) -> None:
        """kill -9 of replica 3 after n/3 updates; restart 1 s later (learns go on meanwhile);
        n/3 more once it serves again."""
        log("kill -9 of a replica mid-run")
        led, victim = self.ledger, self.nodes[2]
        self.traffic.start(FOREVER)
        await self.traffic.until_acked(led.acked + n // 3)
        await victim.kill9()
        killed_at = max(led.by_version)
        await asyncio.sleep(1.0)
        behind = max(led.by_version)  # acknowledged when the restart begins: it must reach that
        t = time.perf_counter()
        await victim.restart()
        ready_s = time.perf_counter() - t
        await wait_serving(victim, behind)
        serving_s = time.perf_counter() - t
        await self._run_on(n // 3)
        r = await self.settle("kill_replica", self.nodes)
        r.update(
            killed_at=killed_at, behind=behind, ready_s=ready_s, serving_s=serving_s, loaded_from=victim.loaded_from()
        )

    async def kill_redis(self, n: int) -> None:
        """kill -9 of redis-server after n/3 updates; restart 1 s later on the same AOF; the
        learners retry (same request ids) until it answers; n/3 more after that."""
        log("kill -9 of redis-server mid-run, restart from its AOF")
        led = self.ledger
        self.traffic.start(FOREVER)
        await self.traffic.until_acked(led.acked + n // 3)
        answered = led.answered
        self.redis.kill9()
        killed_at = max(led.by_version)
        t = time.perf_counter()
        await asyncio.sleep(1.0)
        answers_down = led.answered - answered
        await asyncio.to_thread(self.redis.start)  # same directory and port: replays the AOF
        down_s = time.perf_counter() - t
        await self.traffic.until_acked(led.acked + 1)
        resumed_s = time.perf_counter() - t
        await self._run_on(n // 3)
        r = await self.settle("kill_redis", self.nodes)
        r.update(killed_at=killed_at, down_s=down_s, answers_while_down=answers_down, resumed_s=resumed_s)

    async def late(self, after: int, fill_clients: int = 32) -> None:
        """Fill the stream to ``after`` updates, then start a 4th replica: seconds to serve the
        last version with the others' digest."""
        led = self.ledger
        log(f"filling the stream to {after} updates ({fill_clients} learners), then a late replica")
        fill = Traffic(self.nodes, self.traffic.samples, led, fill_clients, 0)
        await fill.start(max(after, led.acked)).finish()
        await self.settle("filled", self.nodes)
        late = self.new_replica("check-late")
        self.nodes.append(late)  # stopped with the others
        t = time.perf_counter()
        await late.start()
        ready_s = time.perf_counter() - t
        await wait_serving(late, led.acked)
        serving_s = time.perf_counter() - t
        r = await self.settle("late", [late, *self.nodes[:3]])
        r.update(ready_s=ready_s, serving_s=serving_s, loaded_from=late.loaded_from())
