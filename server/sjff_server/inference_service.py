"""``inference.GRPCInferenceService``: the Open Inference Protocol (KServe v2) over gRPC."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
from sjff_client.pb import grpc_service_pb2 as pb
from sjff_client.pb import grpc_service_pb2_grpc as pb_grpc

from .auth import Authenticator
from .errors import RequestError, invalid
from .metrics import Metrics
from .models import ModelRegistry
from .registration import Malformed
from .streams import StreamService
from .validation import IMAGE_DTYPES, decode_infer, encode_infer

__all__ = ["InferenceService", "ServerState"]

log = logging.getLogger("sjff_server.inference")
SERVER_NAME = "spikingjelly-ff"
EXTENSIONS = ["classification", "model_repository_versions", "sjff_learning"]
_FP32 = IMAGE_DTYPES["FP32"]


class ServerState:
    """Readiness shared by the services (false while loading and while shutting down)."""

    def __init__(self) -> None:
        self.ready = False


def _status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, RequestError):
        return exc.code, exc.message
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the inference finished"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


class InferenceService(pb_grpc.GRPCInferenceServiceServicer, StreamService):
    """Serves every model of a :class:`ModelRegistry`."""

    def __init__(
        self,
        registry: ModelRegistry,
        state: ServerState,
        metrics: Metrics,
        *,
        auth: Authenticator | None = None,
        max_rows: int = 4096,
        version: str = "",
        stream_window: int = 64,
    ) -> None:
        self.registry = registry
        self.state = state
        self.metrics = metrics
        self.auth = auth  # None: inference is open
        self.max_rows = max_rows
        self.version = version
        self.stream_window = stream_window
        # Load detection for the batch window: grpc.aio accepts one call per event-loop turn, so
        # under load a call arrives just as (or before) the previous one leaves; a lone client's
        # next call comes a network round trip later.
        self.active = 0  # inference requests between decoding and their answer
        self.last_exit = 0.0  # time.perf_counter() when the last one got its answer
        self.busy_gap_s = 150e-6

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if self.auth is not None:
            err = self.auth.check(context.invocation_metadata())
            if err is not None:
                raise RequestError(*err)

    async def _simple(self, method: str, context, fn):
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            self._authorize(context)
            return fn()
        except RequestError as exc:
            code = exc.code
            await context.abort(exc.code, exc.message)
        finally:
            self.metrics.request(method, code.name, time.perf_counter() - t0)

    # -- health and metadata -------------------------------------------------------------------

    async def ServerLive(self, request, context):
        return await self._simple("ServerLive", context, lambda: pb.ServerLiveResponse(live=True))

    async def ServerReady(self, request, context):
        return await self._simple("ServerReady", context, lambda: pb.ServerReadyResponse(ready=self.state.ready))

    async def ModelReady(self, request, context):
        def ready():
            self.registry.get(request.name, request.version)
            return pb.ModelReadyResponse(ready=self.state.ready)

        return await self._simple("ModelReady", context, ready)

    async def ServerMetadata(self, request, context):
        return await self._simple(
            "ServerMetadata",
            context,
            lambda: pb.ServerMetadataResponse(name=SERVER_NAME, version=self.version, extensions=EXTENSIONS),
        )

    async def ModelMetadata(self, request, context):
        def metadata():
            served = self.registry.get(request.name, request.version)
            md = pb.ModelMetadataResponse()
            md.CopyFrom(served.metadata)
            md.versions.extend(self.registry.versions(served.name))
            return md

        return await self._simple("ModelMetadata", context, metadata)

    # -- inference -------------------------------------------------------------------------------

    async def _infer(self, request: pb.ModelInferRequest, deadline: float | None) -> pb.ModelInferResponse:
        if type(request) is Malformed:  # in a stream (unary calls are answered before)
            raise invalid(request.message)
        served = self.registry.get(request.model_name, request.model_version)
        x, plan = decode_infer(request, served, self.max_rows)
        busy = self.active > 0 or time.perf_counter() - self.last_exit < self.busy_gap_s
        self.active += 1
        try:
            # the message (its input tensor as sent) stays alive with the request while it waits
            wire = x.size * IMAGE_DTYPES.get(request.inputs[0].datatype, _FP32).itemsize
            outs, version = await served.batcher.infer(x, plan.opts, deadline, busy, wire)
        finally:
            self.active -= 1
            self.last_exit = time.perf_counter()
        return encode_infer(request, served, plan, outs, version)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        t0 = time.perf_counter()
        code = "OK"
        try:
            if self.auth is not None:
                self._authorize(context)
            remaining = context.time_remaining()
            return await self._infer(request, None if remaining is None else time.monotonic() + remaining)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a crash
            status, message = _status(exc)
            code = status.name
            if status == grpc.StatusCode.INTERNAL:
                log.exception("ModelInfer failed", extra={"model": request.model_name})
            await context.abort(status, message)
        finally:
            self.metrics.request("ModelInfer", code, time.perf_counter() - t0)

    async def _stream_one(self, request: pb.ModelInferRequest, deadline: float | None) -> pb.ModelStreamInferResponse:
        t0 = time.perf_counter()
        code = "OK"
        try:
            return pb.ModelStreamInferResponse(infer_response=await self._infer(request, deadline))
        except Exception as exc:  # noqa: BLE001 - reported in-band; the stream goes on
            status, message = _status(exc)
            code = status.name
            if status == grpc.StatusCode.INTERNAL:
                log.exception("ModelStreamInfer request failed", extra={"model": getattr(request, "model_name", "")})
            err = pb.ModelStreamInferResponse(error_message=f"{status.name}: {message}")
            if type(request) is not Malformed:
                err.infer_response.id = request.id
                err.infer_response.model_name = request.model_name
                err.infer_response.model_version = request.model_version
            return err
        finally:
            self.metrics.request("ModelStreamInfer.item", code, time.perf_counter() - t0)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # requests run concurrently (so they can share batches) and are answered in order
        # grpc.aio runs only async generator functions as stream handlers on the loop
        async for response in self._answer("ModelStreamInfer", request_iterator, context):
            yield response
