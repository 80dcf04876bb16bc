"""``inference.GRPCInferenceService``: the Open Inference Protocol (KServe v2) over gRPC."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
from sjff_client.pb import grpc_service_pb2 as pb
from sjff_client.pb import grpc_service_pb2_grpc as pb_grpc

from ..auth import Authenticator
from ..errors import DeadlineExceeded, InvalidInput, PreconditionFailed, ResourceExhausted, Unavailable
from ..inference.batching import Queued
from ..metrics import Metrics
from ..serving.models import ModelRegistry, ServedModel
from .messages import ModelMessages, stream_answer
from .registration import Malformed
from .rpc import RpcService, deadline_of
from .validation import IMAGE_DTYPES, MAX_VERSION_WAIT_MS, decode_infer, min_version_of, version_wait_of

__all__ = ["InferenceService", "ServerState"]

SERVER_NAME = "spikingjelly-ff"
EXTENSIONS = ["classification", "model_repository_versions", "sjff_learning"]
_FP32 = IMAGE_DTYPES["FP32"]
_POLL_S = 0.002
# what a stream's answer adds around an inference answer (a field tag and its length)
_STREAM_WRAP = 16
# the wait for min_version ends this much before the call's deadline, so that the server's
# DEADLINE_EXCEEDED (which names both versions) reaches the client before its own timer fires
_REPLY_MARGIN_S, _REPLY_MARGIN_FRACTION = 0.25, 0.2


def version_wait_end(deadline: float | None, wait_s: float | None, now: float) -> float:
    """When a ``min_version`` wait gives up (a ``time.monotonic()`` instant): after ``wait_s``
    if given, and in any case a reply margin before the call's ``deadline`` (at most
    ``MAX_VERSION_WAIT_MS`` without one)."""
    end = now + (MAX_VERSION_WAIT_MS / 1e3 if wait_s is None else wait_s)
    if deadline is not None:
        left = max(0.0, deadline - now)
        end = min(end, deadline - min(_REPLY_MARGIN_S, _REPLY_MARGIN_FRACTION * left))
    return end


async def wait_for_version(served: ServedModel, version: int, deadline: float) -> None:
    """Return once ``served`` publishes learning ``version`` or later (read-your-writes), else
    :class:`DeadlineExceeded` at ``deadline`` (see :func:`version_wait_end`);
    :class:`PreconditionFailed` at once for a model that does not learn (its version never moves)."""
    if served.published.version >= version:
        return
    learner = served.learner
    if learner is None:
        raise PreconditionFailed(
            f"min_version {version} can never be reached: {served.name}/{served.version} does not learn "
            f"(learning is off for it) and stays at version {served.published.version}"
        )
    if hasattr(learner, "wait_version"):  # replicated: woken when the version is applied
        await learner.wait_version(version, deadline)
        return
    while served.published.version < version:  # local learning publishes on this loop's learns: poll
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(
                f"min_version {version} not reached before the deadline: {served.name}/{served.version} is at "
                f"version {served.published.version}"
            )
        await asyncio.sleep(min(_POLL_S, left))


class ServerState:
    """Readiness shared by the services (false while loading and while shutting down)."""

    def __init__(self) -> None:
        self.ready = False


class InferenceService(pb_grpc.GRPCInferenceServiceServicer, RpcService):
    """Serves every model of a :class:`ModelRegistry`."""

    log = logging.getLogger("sjff_server.inference")
    timeout_message = "deadline exceeded before the inference finished"

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
        max_answer_bytes: int | None = None,
    ) -> None:
        self.registry = registry
        # gRPC's send limit (--max-message-bytes): a larger answer is refused here, as this
        # request's error, rather than by gRPC, which would end the call (a whole stream)
        self.max_answer_bytes = max_answer_bytes
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
        self._messages: dict[ServedModel, ModelMessages] = {}

    def _messages_of(self, served: ServedModel) -> ModelMessages:
        m = self._messages.get(served)
        if m is None:
            m = self._messages[served] = ModelMessages(served)
        return m

    # -- health and metadata -------------------------------------------------------------------

    async def ServerLive(self, request, context):
        async def live():
            return pb.ServerLiveResponse(live=True)

        return await self._unary("ServerLive", context, live)

    async def ServerReady(self, request, context):
        async def ready():
            return pb.ServerReadyResponse(ready=self.state.ready)

        return await self._unary("ServerReady", context, ready)

    async def ModelReady(self, request, context):
        async def ready():
            served = self.registry.get(request.name, request.version)
            serving = getattr(served.learner, "serving", True)  # replicated: caught up and not diverged
            return pb.ModelReadyResponse(ready=self.state.ready and serving)

        return await self._unary("ModelReady", context, ready)

    async def ServerMetadata(self, request, context):
        async def metadata():
            return pb.ServerMetadataResponse(name=SERVER_NAME, version=self.version, extensions=EXTENSIONS)

        return await self._unary("ServerMetadata", context, metadata)

    async def ModelMetadata(self, request, context):
        async def metadata():
            served = self.registry.get(request.name, request.version)
            return self._messages_of(served).metadata(self.registry.versions(served.name))

        return await self._unary("ModelMetadata", context, metadata)

    # -- inference -------------------------------------------------------------------------------

    async def _infer(self, request: pb.ModelInferRequest, deadline: float | None) -> bytes | pb.ModelInferResponse:
        """The answer to one inference request (serialised for the default outputs)."""
        if type(request) is Malformed:
            raise InvalidInput(request.message)
        served = self.registry.get(request.model_name, request.model_version)
        x, plan = decode_infer(request, served, self.max_rows)
        if request.parameters:  # both validated
            min_version, wait_s = min_version_of(request), version_wait_of(request)
            if min_version is not None:
                await wait_for_version(served, min_version, version_wait_end(deadline, wait_s, time.monotonic()))
        diverged = getattr(served.learner, "diverged", None)
        if diverged:
            raise Unavailable(f"{served.name}/{served.version} is not available on this replica: {diverged}")
        busy = self.active > 0 or time.perf_counter() - self.last_exit < self.busy_gap_s
        # the message (its input tensor as sent) stays alive with the request while it waits
        wire = x.size * IMAGE_DTYPES.get(request.inputs[0].datatype, _FP32).itemsize
        batcher = served.batcher
        self.active += 1
        try:
            # waited for here, in this frame: an answer resumes two coroutines, not a chain
            result = batcher.submit(x, plan.opts, deadline, busy, wire)
            if type(result) is Queued:
                try:
                    result = await result.future
                except BaseException:
                    batcher.withdraw(result)
                    raise
        finally:
            self.active -= 1
            self.last_exit = time.perf_counter()
        answer = self._messages_of(served).infer_answer(request, plan, result)
        limit = self.max_answer_bytes
        if limit is not None:
            size = len(answer) if type(answer) is bytes else answer.ByteSize()
            if size + _STREAM_WRAP > limit:
                raise ResourceExhausted(
                    f"the answer to this request ({size} bytes) exceeds the server's message limit "
                    f"(--max-message-bytes {limit}); send fewer images per request or ask for fewer outputs"
                )
        return answer

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> bytes | pb.ModelInferResponse:
        # _unary's steps written out: the busiest call runs in one frame plus _infer's
        t0 = time.perf_counter()
        code = "OK"
        try:
            self._authorize(context)
            return await self._infer(request, deadline_of(context))
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a crash
            status, message = self._failure("ModelInfer", exc, getattr(request, "model_name", ""))
            code = status.name
            await context.abort(status, message)
        finally:
            self.metrics.request("ModelInfer", code, time.perf_counter() - t0)

    ModelInfer.accepts_malformed = True  # _infer answers a Malformed request (no _guard wrapper)

    async def _stream_one(
        self, request: pb.ModelInferRequest, deadline: float | None
    ) -> bytes | pb.ModelStreamInferResponse:
        async def answer() -> bytes | pb.ModelStreamInferResponse:
            return stream_answer(await self._infer(request, deadline))

        def error(status: grpc.StatusCode, message: str) -> pb.ModelStreamInferResponse:
            err = pb.ModelStreamInferResponse(error_message=f"{status.name}: {message}")
            if type(request) is not Malformed:
                err.infer_response.id = request.id
                err.infer_response.model_name = request.model_name
                err.infer_response.model_version = request.model_version
            return err

        return await self._item("ModelStreamInfer.item", answer, error, getattr(request, "model_name", ""))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # requests run concurrently (so they can share batches) and are answered in order
        # grpc.aio runs only async generator functions as stream handlers on the loop
        async for response in self._answer("ModelStreamInfer", request_iterator, context):
            yield response
