"""Clients of the spikingjelly-ff server: :class:`Client` (blocking) and :class:`AsyncClient`
(asyncio). Needs numpy, grpcio and protobuf only.

    from sjff_client import Client
    with Client("localhost:8001", token_file="token.txt") as c:
        r = c.infer(images)                 # images: [N, 784] float32 in [0, 1] or uint8 0..255
        r.label, r.scores, r.version        # [N] int64, [N, C] float32, learning version
        c.learn(images, labels)             # one on-line update -> LearnResult(version, log_odds)

The two classes have the same public methods with the same parameters (tests/test_clients.py
checks it): requests are built once, in ``messages.py``; each class only makes the call.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

from .channel import DEFAULT_TARGET, make_channel, read_token
from .messages import (
    DEFAULT_MODEL,
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
from .pb import grpc_service_pb2_grpc as pb_grpc
from .pb import learning_pb2 as lpb
from .pb import learning_pb2_grpc as lpb_grpc

__all__ = [
    "AsyncClient",
    "Client",
    "InferResult",
    "LearnResult",
    "RequestFailed",
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


class _Base:
    """Connection, token and call options; the subclasses make the calls."""

    _aio = False

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        model: str = DEFAULT_MODEL,
        token: str | None = None,
        token_file: str | os.PathLike | None = None,
        timeout: float | None = 30.0,
        token_for_inference: bool = False,
        channel=None,
        **tls,
    ) -> None:
        self.target = target
        self.model = model
        self.timeout = timeout
        tok = read_token(token, token_file)
        self._metadata = (("authorization", f"Bearer {tok}"),) if tok else ()
        # the token goes only where it is needed: a server shares it with nobody else
        self._inference_metadata = self._metadata if token_for_inference else ()
        self.channel = channel if channel is not None else make_channel(target, asyncio=self._aio, **tls)
        self.inference = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.learning = lpb_grpc.LearningStub(self.channel)

    def _kw(self, timeout: float | None, *, token: bool = False) -> dict:
        """Call options: the token only for learning calls (``token``), or for every call if
        the client was made with ``token_for_inference``."""
        md = self._metadata if token else self._inference_metadata
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": md}

    def _model(self, model: str | None) -> str:
        return model or self.model


def _learn_outcome(resp: lpb.LearnResponse) -> LearnResult | RequestFailed:
    """A stream goes on past a refused sample: its RequestFailed is yielded, not raised."""
    try:
        return learn_result(resp)
    except RequestFailed as exc:
        return exc


class Client(_Base):
    """Blocking client. ``token``/``token_file`` (else ``$SJFF_TOKEN``) is sent with the Learning
    service's calls, and with inference calls too only if ``token_for_inference`` (for a server
    started with ``--protect-inference``); TLS keywords: ``tls``, ``root_ca``, ``client_cert``,
    ``client_key``, ``server_name``."""

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # inference
    def server_live(self, timeout: float | None = None) -> bool:
        return self.inference.ServerLive(pb.ServerLiveRequest(), **self._kw(timeout)).live

    def server_ready(self, timeout: float | None = None) -> bool:
        return self.inference.ServerReady(pb.ServerReadyRequest(), **self._kw(timeout)).ready

    def model_ready(self, model: str | None = None, version: str = "", timeout: float | None = None) -> bool:
        return self.inference.ModelReady(model_ready_request(self._model(model), version), **self._kw(timeout)).ready

    def server_metadata(self, timeout: float | None = None) -> pb.ServerMetadataResponse:
        return self.inference.ServerMetadata(pb.ServerMetadataRequest(), **self._kw(timeout))

    def model_metadata(
        self, model: str | None = None, version: str = "", timeout: float | None = None
    ) -> pb.ModelMetadataResponse:
        return self.inference.ModelMetadata(model_metadata_request(self._model(model), version), **self._kw(timeout))

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
        timeout: float | None = None,
    ) -> InferResult:
        """Infer images ``[N, D]``; ``typed`` asks for typed output contents, ``raw=False``
        sends typed input contents."""
        params = infer_parameters(seed, steps, return_latent, typed)
        req = build_infer_request(
            images, self._model(model), version, outputs=outputs, parameters=params, raw=raw, request_id=request_id
        )
        return parse_infer_response(self.inference.ModelInfer(req, **self._kw(timeout)))

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
        for resp in self.inference.ModelStreamInfer(reqs, **self._kw(timeout)):
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
        timeout: float | None = None,
    ) -> LearnResult:
        """One durable on-line update from images ``[N, D]`` with ``labels`` ``[N]``."""
        req = build_learn_request(
            images, labels, positive, self._model(model), version, seed=seed, eta=eta, expected_version=expected_version
        )
        return learn_result(self.learning.Learn(req, **self._kw(timeout, token=True)))

    def learn_stream(
        self, samples: Iterable[tuple], *, model: str | None = None, version: str = "", timeout: float | None = None
    ) -> Iterator[LearnResult | RequestFailed]:
        """LearnStream over ``(images, labels[, positive])`` tuples, pulled lazily (a sample may
        depend on the previous result); yields a LearnResult per sample or the RequestFailed of
        a refused one (the stream goes on)."""
        reqs = (stream_learn_request(i, s, self._model(model), version) for i, s in enumerate(samples))
        for resp in self.learning.LearnStream(reqs, **self._kw(timeout, token=True)):
            yield _learn_outcome(resp)

    def snapshot(
        self, *, model: str | None = None, version: str = "", export: bool = False, timeout: float | None = None
    ) -> lpb.SnapshotResponse:
        """Write a snapshot now (``export``: also a complete model file)."""
        req = snapshot_request(self._model(model), version, export)
        return self.learning.Snapshot(req, **self._kw(timeout, token=True))

    def list_versions(
        self, *, model: str | None = None, version: str = "", limit: int = 100, timeout: float | None = None
    ) -> lpb.ListVersionsResponse:
        """Current learning version, restorable snapshots and the latest ``limit`` history entries."""
        req = list_versions_request(self._model(model), version, limit)
        return self.learning.ListVersions(req, **self._kw(timeout, token=True))

    def rollback(
        self, to_version: int, *, model: str | None = None, version: str = "", timeout: float | None = None
    ) -> lpb.RollbackResponse:
        """Restore the weights of ``to_version`` (as a new version)."""
        req = rollback_request(to_version, self._model(model), version)
        return self.learning.Rollback(req, **self._kw(timeout, token=True))

    def stats(self, *, model: str = "", version: str = "", timeout: float | None = None) -> lpb.GetStatsResponse:
        """Learning statistics of one model, or of all (``model=""``)."""
        req = stats_request(model, version)
        return self.learning.GetStats(req, **self._kw(timeout, token=True))


class AsyncClient(_Base):
    """asyncio client (``grpc.aio``); the methods of :class:`Client`, as coroutines (the streams
    as async generators, which also accept async iterables)."""

    _aio = True

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # inference
    async def server_live(self, timeout: float | None = None) -> bool:
        return (await self.inference.ServerLive(pb.ServerLiveRequest(), **self._kw(timeout))).live

    async def server_ready(self, timeout: float | None = None) -> bool:
        return (await self.inference.ServerReady(pb.ServerReadyRequest(), **self._kw(timeout))).ready

    async def model_ready(self, model: str | None = None, version: str = "", timeout: float | None = None) -> bool:
        req = model_ready_request(self._model(model), version)
        return (await self.inference.ModelReady(req, **self._kw(timeout))).ready

    async def server_metadata(self, timeout: float | None = None) -> pb.ServerMetadataResponse:
        return await self.inference.ServerMetadata(pb.ServerMetadataRequest(), **self._kw(timeout))

    async def model_metadata(
        self, model: str | None = None, version: str = "", timeout: float | None = None
    ) -> pb.ModelMetadataResponse:
        req = model_metadata_request(self._model(model), version)
        return await self.inference.ModelMetadata(req, **self._kw(timeout))

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
        timeout: float | None = None,
    ) -> InferResult:
        """See :meth:`Client.infer`."""
        params = infer_parameters(seed, steps, return_latent, typed)
        req = build_infer_request(
            images, self._model(model), version, outputs=outputs, parameters=params, raw=raw, request_id=request_id
        )
        return parse_infer_response(await self.inference.ModelInfer(req, **self._kw(timeout)))

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

        async for resp in self.inference.ModelStreamInfer(reqs(), **self._kw(timeout)):
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
        timeout: float | None = None,
    ) -> LearnResult:
        """See :meth:`Client.learn`."""
        req = build_learn_request(
            images, labels, positive, self._model(model), version, seed=seed, eta=eta, expected_version=expected_version
        )
        return learn_result(await self.learning.Learn(req, **self._kw(timeout, token=True)))

    async def learn_stream(
        self,
        samples: AsyncIterable[tuple] | Iterable[tuple],
        *,
        model: str | None = None,
        version: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[LearnResult | RequestFailed]:
        """See :meth:`Client.learn_stream`."""

        async def reqs():
            i = 0
            async for s in _aiter(samples):
                yield stream_learn_request(i, s, self._model(model), version)
                i += 1

        async for resp in self.learning.LearnStream(reqs(), **self._kw(timeout, token=True)):
            yield _learn_outcome(resp)

    async def snapshot(
        self, *, model: str | None = None, version: str = "", export: bool = False, timeout: float | None = None
    ) -> lpb.SnapshotResponse:
        """See :meth:`Client.snapshot`."""
        req = snapshot_request(self._model(model), version, export)
        return await self.learning.Snapshot(req, **self._kw(timeout, token=True))

    async def list_versions(
        self, *, model: str | None = None, version: str = "", limit: int = 100, timeout: float | None = None
    ) -> lpb.ListVersionsResponse:
        """See :meth:`Client.list_versions`."""
        req = list_versions_request(self._model(model), version, limit)
        return await self.learning.ListVersions(req, **self._kw(timeout, token=True))

    async def rollback(
        self, to_version: int, *, model: str | None = None, version: str = "", timeout: float | None = None
    ) -> lpb.RollbackResponse:
        """See :meth:`Client.rollback`."""
        req = rollback_request(to_version, self._model(model), version)
        return await self.learning.Rollback(req, **self._kw(timeout, token=True))

    async def stats(self, *, model: str = "", version: str = "", timeout: float | None = None) -> lpb.GetStatsResponse:
        """See :meth:`Client.stats`."""
        req = stats_request(model, version)
        return await self.learning.GetStats(req, **self._kw(timeout, token=True))
