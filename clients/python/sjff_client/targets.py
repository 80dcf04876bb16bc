"""Several server replicas behind one client: a channel per target, the target calls go to, and
the bounded retry that moves a failed call to the next target (grpcio only).

Retry rules (one place, used by both clients):

- a call is tried at most ``RetryPolicy.attempts`` times in all; after a failed attempt the
  client waits ``backoff_s * 2**(attempt - 1)`` seconds (at most ``max_backoff_s``), moves to the
  next target (round robin) and tries again; each attempt has the call's full timeout;
- a ``learn`` is retried only on the statuses of :data:`RETRY_LEARN`: UNAVAILABLE (the replica
  is down, or the connection broke mid-call), UNKNOWN (outcome unknown) and DEADLINE_EXCEEDED.
  Its request keeps its ``request_id``, so the server (replicated or not) applies it once and
  answers the retry with the original result, as long as it remembers the id
  (``--idempotency-window-s``);
- an ``infer`` is retried only on UNAVAILABLE (:data:`RETRY_INFER`); every other call is tried
  once, on the current target.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from .pb import grpc_service_pb2_grpc as pb_grpc
from .pb import learning_pb2_grpc as lpb_grpc

__all__ = ["NO_RETRY", "RETRY_INFER", "RETRY_LEARN", "RetryPolicy", "Targets", "split_targets"]

_S = grpc.StatusCode
RETRY_LEARN = frozenset({_S.UNAVAILABLE, _S.UNKNOWN, _S.DEADLINE_EXCEEDED})
RETRY_INFER = frozenset({_S.UNAVAILABLE})
NO_RETRY: frozenset[grpc.StatusCode] = frozenset()


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts``: calls tried at most (1: no retry); ``backoff_s`` doubles after each failed
    attempt, up to ``max_backoff_s``."""

    attempts: int = 1
    backoff_s: float = 0.05
    max_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(f"backoff must be >= 0 s, got {self.backoff_s} / {self.max_backoff_s}")

    def delay_s(self, code: grpc.StatusCode | None, attempt: int, retry_on: frozenset) -> float | None:
        """Seconds to wait before the next attempt after attempt ``attempt`` (1-based) failed with
        ``code``, or None: give up and raise."""
        if code not in retry_on or attempt >= self.attempts:
            return None
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)


def split_targets(targets: Sequence[str]) -> list[str]:
    """``["a:1,b:1", "c:1"]`` -> ``["a:1", "b:1", "c:1"]`` (empty items dropped)."""
    return [t.strip() for item in targets for t in item.split(",") if t.strip()]


def _code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    return code() if callable(code) else None


class Targets:
    """The channels of ``targets`` (made by ``make_channel(target)``), or one given ``channel``;
    calls go to the current one until it fails with a retryable status."""

    def __init__(self, targets: Sequence[str], make_channel: Callable, policy: RetryPolicy, channel=None) -> None:
        self.targets = list(targets)
        self.channels = [channel] if channel is not None else [make_channel(t) for t in self.targets]
        self.stubs = [(pb_grpc.GRPCInferenceServiceStub(c), lpb_grpc.LearningStub(c)) for c in self.channels]
        self.policy = policy
        self.current = 0

    def stub(self, service: str, index: int | None = None):
        """The ``"inference"`` or ``"learning"`` stub of target ``index`` (default: the current one)."""
        inference, learning = self.stubs[self.current if index is None else index]
        return inference if service == "inference" else learning

    def _advance(self, failed: int) -> None:
        # another thread or task may have moved on already: move only past the target that failed
        if self.current == failed:
            self.current = (failed + 1) % len(self.stubs)

    def call(self, service: str, method: str, request, kw: dict, retry_on: frozenset = NO_RETRY):
        """A unary call, retried on the next target as :class:`RetryPolicy` says."""
        attempt = 1
        while True:
            index = self.current
            try:
                return getattr(self.stub(service, index), method)(request, **kw)
            except grpc.RpcError as exc:
                delay = self.policy.delay_s(_code(exc), attempt, retry_on)
                if delay is None:
                    raise
                self._advance(index)
            time.sleep(delay)
            attempt += 1

    async def acall(self, service: str, method: str, request, kw: dict, retry_on: frozenset = NO_RETRY):
        """:meth:`call` for ``grpc.aio`` channels."""
        attempt = 1
        while True:
            index = self.current
            try:
                return await getattr(self.stub(service, index), method)(request, **kw)
            except grpc.RpcError as exc:
                delay = self.policy.delay_s(_code(exc), attempt, retry_on)
                if delay is None:
                    raise
                self._advance(index)
            await asyncio.sleep(delay)
            attempt += 1

    def close(self) -> None:
        for c in self.channels:
            c.close()

    async def aclose(self) -> None:
        for c in self.channels:
            await c.close()
