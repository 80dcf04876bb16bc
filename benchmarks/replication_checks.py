"""The correctness runs of benchmarks/replication.py: learners (round-robin, retried with the
same request id on another replica) and inference clients on a replicated cluster, through
kill -9 of a replica and of redis-server, and the offline replay every answer is compared to.

Every learn has a request id derived from its sample index ``i``; the :class:`Ledger` holds
what was acknowledged (version -> i). "0 acknowledged lost" means: every replica ends at
version = the number of acknowledged updates, the acknowledged versions are exactly 1..that
number, each given to one update, and the offline replay of those updates in version order
has the replicas' weights digest.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from replication_cluster import Node, Samples, learn_retrying

MAX_ANSWERS = 20_000  # inference answers kept for the replay check


@dataclass
class Ledger:
    """What the cluster acknowledged and answered."""

    by_version: dict[int, int] = field(default_factory=dict)  # acknowledged version -> update index
    conflicts: list[tuple[int, int, int]] = field(default_factory=list)  # (version, first i, second i)
    retried: int = 0  # learns acknowledged only after a retry on another replica
    sent: int = 0  # update indices handed out
    answers: list[tuple[int, int, np.ndarray]] = field(default_factory=list)  # (version, image j, scores [2, C])
    answered: int = 0  # inference answers received (kept or not)
    infer_failed: dict[str, int] = field(default_factory=dict)

    @property
    def acked(self) -> int:
        return len(self.by_version)

    def record(self, version: int, i: int) -> None:
        first = self.by_version.setdefault(version, i)
        if first != i:  # two updates answered with one version: a lost or doubled update
            self.conflicts.append((version, first, i))

    def lost(self, final_version: int) -> int:
        """Acknowledged versions the final state does not hold, plus versions given twice."""
        return sum(v > final_version for v in self.by_version) + len(self.conflicts)


async def learners(nodes: list[Node], samples: Samples, ledger: Ledger, clients: int, until: Callable[[], bool]):
    """``clients`` coroutines learning update after update (round-robin over ``nodes``) until
    ``until()``; a failed call is retried with the same request id on the next replica."""

    async def worker() -> None:
        while not until():
            i = ledger.sent
            ledger.sent += 1
            resp, retries = await learn_retrying(nodes, i, samples.learn_request(i, f"bench-{i}"))
            ledger.retried += retries > 0
            ledger.record(resp.version, i)

    await asyncio.gather(*(worker() for _ in range(clients)))


async def inferers(nodes: list[Node], samples: Samples, ledger: Ledger, clients: int, until: Callable[[], bool]):
    """``clients`` coroutines inferring two images at a time on ``nodes`` round-robin, keeping
    each answer with the version it reports; a call to a node that is down is counted."""
    count = 0

    async def worker(w: int) -> None:
        nonlocal count
        while not until():
            count += 1
            node, j = nodes[(count + w) % len(nodes)], count % (len(samples.labels) - 1)
            if not node.up:
                await asyncio.sleep(0.01)
                continue
            try:
                v, scores = await node.infer(samples.x[j : j + 2], timeout=10)
            except grpc.RpcError as exc:
                ledger.infer_failed[exc.code().name] = ledger.infer_failed.get(exc.code().name, 0) + 1
                await asyncio.sleep(0.01)
                continue
            ledger.answered += 1
            if len(ledger.answers) < MAX_ANSWERS:
                ledger.answers.append((v, j, scores))

    await asyncio.gather(*(worker(w) for w in range(clients)))


class Traffic:
    """Learners and inference clients running in the background until :meth:`stop` or until
    ``target`` updates are acknowledged."""

    def __init__(self, nodes: list[Node], samples: Samples, ledger: Ledger, learn_clients: int, infer_clients: int):
        self.nodes, self.samples, self.ledger = nodes, samples, ledger
        self.learn_clients, self.infer_clients = learn_clients, infer_clients
        self.target = 0
        self._stop = False

    def _done(self) -> bool:
        return self._stop or self.ledger.acked >= self.target

    def start(self, target: int) -> Traffic:
        self.target, self._stop = target, False
        self._learn = asyncio.ensure_future(
            learners(self.nodes, self.samples, self.ledger, self.learn_clients, self._done)
        )
        self._infer = asyncio.ensure_future(
            inferers(self.nodes, self.samples, self.ledger, self.infer_clients, self._done)
        )
        return self

    async def until_acked(self, n: int) -> None:
        while self.ledger.acked < n and not self._learn.done():
            await asyncio.sleep(0.01)
        if self._learn.done():
            self._learn.result()  # raise what stopped the learners

    def stop(self) -> None:
        """End the traffic at the callers' next turn (without waiting for it)."""
        self._stop = True

    async def finish(self) -> None:
        await self._learn
        self._stop = True
        await self._infer


def replay(model_path: Path, samples: Samples, ledger: Ledger, digests: dict[int, str]) -> dict:
    """Replay the acknowledged updates in version order on the exported model and compare
    every kept inference answer with the scores of the version it reports, and the replay's
    state digest with ``digests`` (version -> the servers' ``weights_sha256`` there)."""
    from sjff_server.storage.snapshots import state_digest

    from spikingjelly_ff.runtime import load_exported

    ref = load_exported(model_path, threads=1)
    by_v: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for v, j, scores in ledger.answers:
        by_v[v].append((j, scores))
    final = max(ledger.by_version, default=0)
    checked = equal = bitwise = 0
    max_diff = 0.0
    digest_ok: dict[int, bool] = {}
    missing = [v for v in range(1, final + 1) if v not in ledger.by_version]
    t0 = time.perf_counter()
    for v in range(final + 1):
        if v > 0:
            if v not in ledger.by_version:
                break  # an acknowledged order with a hole cannot be replayed
            i = ledger.by_version[v]
            x, y, pos = samples.update(i)
            ref.learn(x, y, pos, seed=v)  # the server's seed for an update without one: its version
            if v in digests:
                digest_ok[v] = state_digest(ref.weights, ref.eligibility) == digests[v]
        for j, scores in by_v.get(v, ()):
            want = ref.run(samples.x[j : j + 2])["scores"]
            checked += 1
            diff = float(np.max(np.abs(want - scores)))
            max_diff = max(max_diff, diff)
            equal += diff <= 1e-5 + 1e-5 * float(np.max(np.abs(want)))
            bitwise += bool(np.array_equal(want, scores))
    unknown = sum(v > final for v in by_v)  # answers at a version nobody acknowledged (e.g. a retried learn)
    return {
        "final": final,
        "missing": len(missing),
        "answers": checked,
        "equal": equal,
        "bitwise": bitwise,
        "max_diff": max_diff,
        "unmatched_versions": unknown,
        "digest_ok": digest_ok,
        "replay_s": time.perf_counter() - t0,
    }
