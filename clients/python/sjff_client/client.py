"""Clients of the spikingjelly-ff server: :class:`Client` (blocking) and :class:`AsyncClient`
(asyncio). Needs numpy, grpcio and protobuf only.

    from sjff_client import Client
    with Client("localhost:8001", token_file="token.txt") as c:
        r = c.infer(images)                 # images: [N, 784] float32 in [0, 1] or uint8 0..255
        r.label, r.scores, r.version        # [N] int64, [N, C] float32, learning version
        c.learn(images, labels)             # one on-line update -> LearnResult(version, log_odds)

    Client(targets=["a:8001", "b:8001", "c:8001"])  # replicas: a failed learn moves to the next
                                                    # target with the same request_id (targets.py)

The two classes have the same public methods with the same parameters (tests/test_clients.py
checks it): requests are built once, in ``messages.py``; connections, options and retries
live in ``base.py`` / ``targets.py``; each class only makes the call.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

from .base import ClientBase
from .channel import make_channel
from .messages import (
    InferResult,
    LearnResult,
    RequestFailed,
    build_infer_request,
    build_learn_request,
    infer_parameters,
    learn_result,
    list_versions_request,
    model_metadata_request,
    model_ready_request,
    outcome_unknown,
    parse_infer_response,
    rollback_request,
    snapshot_request,
    stats_request,
    stream_infer_request,
    stream_infer_result,
    stream_learn_request,
)
from .pb import grpc_service_pb2 as pb
from .pb import learning_pb2 as lpb
from .targets import RETRY_INFER, RETRY_LEARN, RetryPolicy

__all__ = [
    "AsyncClient",
    "Client",
    "InferResult",
    "LearnResult",
    "RequestFailed",
    "RetryPolicy",
    "build_infer_request",
    "build_learn_request",
    "make_channel",
    "outcome_unknown",
    "parse_infer_response",
]

_T = TypeVar("_T")


async def _aiter(items: AsyncIterable[_T] | Iterable[_T]) -> AsyncIterator[_T]:
    """``items`` as an async iterator, pulled one at a time (never collected into a list)."""
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def _learn_outcome(resp: lpb.LearnResponse, sent: dict[str, str]) -> LearnResult | RequestFailed:
    """A stream goes on past a refused sample: its RequestFailed is yielded, not raised.
    ``sent``: request id -> idempotency key of the requests not answered yet."""
    try:
        return learn_result(resp, sent.pop(resp.id, ""))
    except RequestFailed as exc:
        return exc


def _sent(req: lpb.LearnRequest, sent: dict[str, str]) -> lpb.LearnRequest:
    sent[req.id] = req.request_id
    return req


class Client(ClientBase):
    """Blocking client. ``token``/``token_file`` (else ``$SJFF_TOKEN``) is sent with the Learning
    service's calls, and with inference calls too only if ``token_for_inference`` (for a server
    started with ``--protect-inference``); TLS keywords: ``tls``, ``root_ca``, ``client_cert``,
    ``client_key``, ``server_name``."""

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, service: str, method: str, request, kw: dict, retry_on: frozenset = frozenset()):
        return self._pool.call(service, method, request, kw, retry_on)

    # inference
    def server_live(self, timeout: float | None = None) -> bool:
        return self._call("inference", "ServerLive", pb.ServerLiveRequest(), self._kw(timeout)).live

    def server_ready(self, timeout: float | None = None) -> bool:
        return self._call("inference", "ServerReady", pb.ServerReadyRequest(), self._kw(timeout)).ready

    def model_ready(self, model: str | None = None, version: str = "", timeout: float | None = None) -> bool:
        req = model_ready_request(self._model(model), version)
        return self._call("inference", "ModelReady", req, self._kw(timeout)).ready

    def server_metadata(self, timeout: float | None = None) -> pb.ServerMetadataResponse:
        return self._call("inference", "ServerMetadata", pb.ServerMetadataRequest(), self._kw(timeout))

    def model_metadata(
        self, model: str | None = None, version: str = "", timeout: float | None = None
    ) -> pb.ModelMetadataResponse:
        req = model_metadata_request(self._model(model), version)
        return self._call("inference", "ModelMetadata", req, self._kw(timeout))

    def infer(
        self,
        images: np.ndarray,
        *,
        model: str | None = None,
        version: str = "",
        outputs: Sequence[str] | None = None,
        seed: int | None = None,
        steps: int | None = None,
        return_latent: bool = False,
        typed: bool = False,
        raw: bool = True,
        request_id: str = "",
        min_version: int | None = None,
        timeout: float | None = None,
    ) -> InferResult:
        """Infer images ``[N, D]``; ``typed`` asks for typed output contents, ``raw=False``
        sends typed input contents. ``min_version``: answer from learning version >= this one
        (read your writes across replicas: pass the version a learn returned); the server waits
        for it within the timeout, else DEADLINE_EXCEEDED. UNAVAILABLE moves to the next target."""
        params = infer_parameters(seed, steps, return_latent, typed, min_version)
        req = self._infer_request(images, model, version, outputs, params, raw, request_id)
        return parse_infer_response(self._call("inference", "ModelInfer", req, self._kw(timeout), RETRY_INFER))

    def infer_stream(
        self,
        batches: Iterable[np.ndarray],
        *,
        model: str | None = None,
        version: str = "",
        timeout: float | None = None,
    ) -> Iterator[InferResult]:
        """ModelStreamInfer: one result per batch, in order (a refused one raises RequestFailed).
        ``batches`` is pulled lazily, as the stream sends."""
        reqs = (stream_infer_request(i, b, self._model(model), version) for i, b in enumerate(batches))
        for resp in self._pool.stub("inference").ModelStreamInfer(reqs, **self._kw(timeout)):
            yield stream_infer_result(resp)

    # learning
    def learn(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        positive: Sequence[bool] | np.ndarray | None = None,
        *,
        model: str | None = None,
        version: str = "",
        seed: int | None = None,
        eta: float | None = None,
        expected_version: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> LearnResult:
        """One durable on-line update from images ``[N, D]`` with ``labels`` ``[N]``.
        ``request_id`` (default: a fresh uuid4) is its idempotency key: on UNAVAILABLE, UNKNOWN or
        DEADLINE_EXCEEDED the call is retried on the next target with the same key (see
        ``targets.py``), which a replicated server applies once."""
        req = self._learn_request(images, labels, positive, model, version, seed, eta, expected_version, request_id)
        resp = self._call("learning", "Learn", req, self._kw(timeout, token=True), RETRY_LEARN)
        return learn_result(resp, req.request_id)

    def learn_stream(
        self, samples: Iterable[tuple], *, model: str | None = None, version: str = "", timeout: float | None = None
    ) -> Iterator[LearnResult | RequestFailed]:
        """LearnStream over ``(images, labels[, positive[, request_id]])`` tuples, pulled lazily (a
        sample may depend on the previous result); yields a LearnResult per sample or the
        RequestFailed of a refused one (the stream goes on). A sample without a request_id gets a
        fresh uuid4 (``LearnResult.request_id``); a stream is never retried."""
        sent: dict[str, str] = {}
        reqs = (_sent(stream_learn_request(i, s, self._model(model), version), sent) for i, s in enumerate(samples))
        for resp in self._pool.stub("learning").LearnStream(reqs, **self._kw(timeout, token=True)):
            yield _learn_outcome(resp, sent)

    def snapshot(
        self, *, model: str | None = None, version: str = "", export: bool = False, timeout: float | None = None
    ) -> lpb.SnapshotResponse:
        """Write a snapshot now (``export``: also a complete model file)."""
        req = snapshot_request(self._model(model), version, export)
        return self._call("learning", "Snapshot", req, self._kw(timeout, token=True))

    def list_versions(
        self, *, model: str | None = None, version: str = "", limit: int = 100, timeout: float | None = None
    ) -> lpb.ListVersionsResponse:
        """Current learning version, restorable snapshots and the latest ``limit`` history entries."""
        req = list_versions_request(self._model(model), version, limit)
        return self._call("learning", "ListVersions", req, self._kw(timeout, token=True))

    def rollback(
        self, to_version: int, *, model: str | None = None, version: str = "", timeout: float | None = None
    ) -> lpb.RollbackResponse:
        """Restore the weights of ``to_version`` (as a new version)."""
        req = rollback_request(to_version, self._model(model), version)
        return self._call("learning", "Rollback", req, self._kw(timeout, token=True))

    def stats(self, *, model: str = "", version: str = "", timeout: float | None = None) -> lpb.GetStatsResponse:
        """Learning statistics of one model, or of all (``model=""``)."""
        req = stats_request(model, version)
        return self._call("learning", "GetStats", req, self._kw(timeout, token=True))


class AsyncClient(ClientBase):
    """asyncio client (``grpc.aio``); the methods of :class:`Client`, as coroutines (the streams
    as async generators, which also accept async iterables)."""

    _aio = True

    async def close(self) -> None:
        await self._pool.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, service: str, method: str, request, kw: dict, retry_on: frozenset = frozenset()):
        return await self._pool.acall(service, method, request, kw, retry_on)

    # inference
    async def server_live(self, timeout: float | None = None) -> bool:
        return (await self._call("inference", "ServerLive", pb.ServerLiveRequest(), self._kw(timeout))).live

    async def server_ready(self, timeout: float | None = None) -> bool:
        return (await self._call("inference", "ServerReady", pb.ServerReadyRequest(), self._kw(timeout))).ready

    async def model_ready(self, model: str | None = None, version: str = "", timeout: float | None = None) -> bool:
        req = model_ready_request(self._model(model), version)
        return (await self._call("inference", "ModelReady", req, self._kw(timeout))).ready

    async def server_metadata(self, timeout: float | None = None) -> pb.ServerMetadataResponse:
        return await self._call("inference", "ServerMetadata", pb.ServerMetadataRequest(), self._kw(timeout))

    async def model_metadata(
        self, model: str | None = None, version: str = "", timeout: float | None = None
    ) -> pb.ModelMetadataResponse:
        req = model_metadata_request(self._model(model), version)
        return await self._call("inference", "ModelMetadata", req, self._kw(timeout))

    async def infer(
        self,
        images: np.ndarray,
        *,
        model: str | None = None,
        version: str = "",
        outputs: Sequence[str] | None = None,
        seed: int | None = None,
        steps: int | None = None,
        return_latent: bool = False,
        typed: bool = False,
        raw: bool = True,
        request_id: str = "",
        min_version: int | None = None,
        timeout: float | None = None,
    ) -> InferResult:
        """See :meth:`Client.infer`."""
        params = infer_parameters(seed, steps, return_latent, typed, min_version)
        req = self._infer_request(images, model, version, outputs, params, raw, request_id)
        return parse_infer_response(await self._call("inference", "ModelInfer", req, self._kw(timeout), RETRY_INFER))

    async def infer_stream(
        self,
        batches: AsyncIterable[np.ndarray] | Iterable[np.ndarray],
        *,
        model: str | None = None,
        version: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[InferResult]:
        """See :meth:`Client.infer_stream`."""

        async def reqs():
            i = 0
            async for b in _aiter(batches):
                yield stream_infer_request(i, b, self._model(model), version)
                i += 1

        async for resp in self._pool.stub("inference").ModelStreamInfer(reqs(), **self._kw(timeout)):
            yield stream_infer_result(resp)

    # learning
    async def learn(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        positive: Sequence[bool] | np.ndarray | None = None,
        *,
        model: str | None = None,
        version: str = "",
        seed: int | None = None,
        eta: float | None = None,
        expected_version: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> LearnResult:
        """See :meth:`Client.learn`."""
        req = self._learn_request(images, labels, positive, model, version, seed, eta, expected_version, request_id)
        resp = await self._call("learning", "Learn", req, self._kw(timeout, token=True), RETRY_LEARN)
        return learn_result(resp, req.request_id)

    async def learn_stream(
        self,
        samples: AsyncIterable[tuple] | Iterable[tuple],
        *,
        model: str | None = None,
        version: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[LearnResult | RequestFailed]:
        """See :meth:`Client.learn_stream`."""
        sent: dict[str, str] = {}

        async def reqs():
            i = 0
            async for s in _aiter(samples):
                yield _sent(stream_learn_request(i, s, self._model(model), version), sent)
                i += 1

        async for resp in self._pool.stub("learning").LearnStream(reqs(), **self._kw(timeout, token=True)):
            yield _learn_outcome(resp, sent)

    async def snapshot(
        self, *, model: str | None = None, version: str = "", export: bool = False, timeout: float | None = None
    ) -> lpb.SnapshotResponse:
        """See :meth:`Client.snapshot`."""
        req = snapshot_request(self._model(model), version, export)
        return await self._call("learning", "Snapshot", req, self._kw(timeout, token=True))

    async def list_versions(
        self, *, model: str | None = None, version: str = "", limit: int = 100, timeout: float | None = None
    ) -> lpb.ListVersionsResponse:
        """See :meth:`Client.list_versions`."""
        req = list_versions_request(self._model(model), version, limit)
        return await self._call("learning", "ListVersions", req, self._kw(timeout, token=True))

    async def rollback(
        self, to_version: int, *, model: str | None = None, version: str = "", timeout: float | None = None
    ) -> lpb.RollbackResponse:
        """See :meth:`Client.rollback`."""
        req = rollback_request(to_version, self._model(model), version)
        return await self._call("learning", "Rollback", req, self._kw(timeout, token=True))

    async def stats(self, *, model: str = "", version: str = "", timeout: float | None = None) -> lpb.GetStatsResponse:
        """See :meth:`Client.stats`."""
        req = stats_request(model, version)
        return await self._call("learning", "GetStats", req, self._kw(timeout, token=True))
