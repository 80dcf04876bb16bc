"""The real parts of benchmarks/replication.py: server processes (one with its local log, or
replicas of one Redis stream) with their asyncio gRPC stubs, the samples learnt, and the waits
on versions and digests. The redis-server is tests/redis_utils.py's ``RedisServer``.

Learn and infer requests are built as tests/test_replication.py builds them
(``sjff_client.messages``); blocking process control runs in a thread so that the load on the
other servers goes on meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc import aio
from sjff_client.messages import build_infer_request, build_learn_request
from sjff_client.pb import grpc_service_pb2 as pb
from sjff_client.pb import grpc_service_pb2_grpc as pb_grpc
from sjff_client.pb import learning_pb2 as lpb
from sjff_client.pb import learning_pb2_grpc as lpb_grpc
from sjff_server.harness import ServerProcess

MODEL = "mnist"
#: a failed call worth retrying (same request id) on another server: it may be down or restarting
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


@dataclass(frozen=True)
class Samples:
    """The updates learnt: update ``i`` is MNIST image ``i % n`` (float32 [1, 784] in [0, 1])
    with its true label when positive (2 in 3), else a wrong one, so every entry is known
    from ``i`` alone (the offline replay rebuilds it)."""

    x: np.ndarray  # [n, 784] float32
    labels: np.ndarray  # [n] int64

    def update(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images [1, 784], labels [1], positive [1] float32) of update ``i``."""
        j = i % len(self.labels)
        pos = i % 3 != 2
        label = int(self.labels[j]) if pos else (int(self.labels[j]) + 1 + i % 9) % 10
        return self.x[j : j + 1], np.array([label]), np.array([1.0 if pos else 0.0], np.float32)

    def learn_request(self, i: int, request_id: str) -> lpb.LearnRequest:
        x, y, pos = self.update(i)
        return build_learn_request(x, y, pos > 0, MODEL, request_id=request_id)


class Node:
    """One ``sjff serve`` process (ServerProcess) and its grpc.aio stubs."""

    def __init__(self, proc: ServerProcess, token: str, name: str) -> None:
        self.proc = proc
        self.name = name
        self.meta = (("authorization", f"Bearer {token}"),)
        self.channel: aio.Channel | None = None
        self.down = True  # not to be called: not started, killed or restarting

    async def start(self) -> Node:
        await asyncio.to_thread(self.proc.start)
        self._connect()
        return self

    async def restart(self) -> Node:
        await asyncio.to_thread(self.proc.restart)  # new ports: new channel
        old = self.channel
        self._connect()
        if old is not None:  # its calls all failed when the process died (closing it earlier would cancel them)
            await old.close()
        return self

    def _connect(self) -> None:
        self.channel = aio.insecure_channel(self.proc.target)
        self.learning = lpb_grpc.LearningStub(self.channel)
        self.inference = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.down = False

    async def _close_channel(self) -> None:
        self.down = True
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    async def kill9(self) -> None:
        """SIGKILL: no drain, nothing written on the way out. The channel stays open so that the
        calls in flight fail as a client sees it (UNAVAILABLE), not cancelled by us."""
        self.down = True
        await asyncio.to_thread(self.proc.kill)

    async def stop(self) -> None:
        await self._close_channel()
        if self.proc.alive():
            await asyncio.to_thread(self.proc.stop)

    @property
    def up(self) -> bool:
        return not self.down and self.proc.alive()

    async def learn(self, req: lpb.LearnRequest, timeout: float = 30.0) -> lpb.LearnResponse:
        return await self.learning.Learn(req, metadata=self.meta, timeout=timeout)

    async def infer(
        self, x: np.ndarray, min_version: int | None = None, timeout: float = 30.0
    ) -> tuple[int, np.ndarray]:
        """(learning version of the answer, scores [n, classes])."""
        params = {} if min_version is None else {"min_version": int(min_version)}
        resp = await self.inference.ModelInfer(build_infer_request(x, MODEL, parameters=params), timeout=timeout)
        i = [o.name for o in resp.outputs].index("scores")
        scores = np.frombuffer(resp.raw_output_contents[i], dtype=np.float32).reshape(len(x), -1)
        return int(resp.parameters["sjff_version"].int64_param), scores

    async def ready(self) -> bool:
        try:
            return (await self.inference.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=10)).ready
        except grpc.RpcError:
            return False

    async def stats(self) -> tuple[int, str]:
        """(learning version, sha256 of weights + eligibility) from GetStats."""
        req = lpb.GetStatsRequest(model_name=MODEL)
        s = (await self.learning.GetStats(req, metadata=self.meta, timeout=30)).models[0]
        return int(s.learning_version), s.weights_sha256

    def loaded_from(self) -> int | None:
        """The version of the shared snapshot this replica last bootstrapped from (its log)."""
        got = [r for r in self.proc.log_records() if r.get("msg") == "replica state loaded"]
        return int(got[-1]["learning_version"]) if got else None


def local_server(repo: Path, state: Path, token_file: Path, token: str) -> Node:
    """The default: one server with its own fsynced update log (group commit, --max-group 64)."""
    args = ["--snapshot-interval", "0", "--log-level", "warning"]
    return Node(ServerProcess(repo, state_dir=state, token_file=token_file, extra_args=args), token, "local")


def replica(
    repo: Path, url: str, prefix: str, token_file: Path, token: str, name: str, snapshot_every: int = 0
) -> Node:
    """A replica of the stream ``{prefix}:mnist/1:log`` on ``url`` (default lag settings; shared
    snapshots every ``snapshot_every`` versions, 0: the server's default)."""
    args = ["--replication", url, "--replication-prefix", prefix, "--snapshot-interval", "0"]
    args += ["--replica-id", name]
    if snapshot_every:
        args += ["--replication-snapshot-every", str(snapshot_every)]
    return Node(ServerProcess(repo, token_file=token_file, extra_args=args), token, name)


async def wait_serving(node: Node, version: int, timeout: float = 300.0) -> float:
    """Seconds until ``node`` is ready and at learning ``version`` or later."""
    t0 = time.perf_counter()
    while True:
        if await node.ready() and (await node.stats())[0] >= version:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{node.name} not serving v{version} after {timeout:.0f} s")
        await asyncio.sleep(0.02)


async def converge(nodes: list[Node], version: int, timeout: float = 300.0) -> list[tuple[int, str]]:
    """Wait until each node serves ``version``; each one's (version, digest)."""
    for n in nodes:
        await wait_serving(n, version, timeout)
    return [await n.stats() for n in nodes]


async def learn_retrying(nodes: list[Node], first: int, req: lpb.LearnRequest, give_up_s: float = 180.0):
    """Learn ``req`` on ``nodes[first]``; on a retryable failure the SAME request (same
    request_id) on the next live node, until acknowledged. (response, retries)."""
    t0, k = time.monotonic(), 0
    while True:
        node = nodes[(first + k) % len(nodes)]
        if node.up:
            try:
                return await node.learn(req, timeout=10.0), k
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or time.monotonic() - t0 > give_up_s:
                    raise
        k += 1
        if k % len(nodes) == 0:
            await asyncio.sleep(0.05)  # every node refused: Redis or the servers are restarting
