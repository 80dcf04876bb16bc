"""The gRPC side of every call: domain errors to status codes (the one place that maps
them), authorisation, per-call metrics, and the body of the streaming RPCs.

:class:`RpcService` is the base of both servicers: ``_unary`` wraps a unary call
(authorise, run, map a failure to a status, count it), ``_answer`` a bidirectional stream
and ``_item`` each request of one (failures answered in-band).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from ..auth import Authenticator
from ..errors import (
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    ModelNotFound,
    OutOfRange,
    PermissionDenied,
    PreconditionFailed,
    RequestError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    UnknownOutcome,
    VersionConflict,
)
from .streams import ordered_responses, rechecked

__all__ = ["STATUS", "RpcService", "deadline_of", "status_of"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Code = grpc.StatusCode

#: the gRPC status of each refusal
STATUS: dict[type[RequestError], grpc.StatusCode] = {
    InvalidInput: Code.INVALID_ARGUMENT,
    ModelNotFound: Code.NOT_FOUND,
    Unavailable: Code.UNAVAILABLE,
    UnknownOutcome: Code.UNKNOWN,
    VersionConflict: Code.ABORTED,
    PreconditionFailed: Code.FAILED_PRECONDITION,
    OutOfRange: Code.OUT_OF_RANGE,
    ResourceExhausted: Code.RESOURCE_EXHAUSTED,
    DeadlineExceeded: Code.DEADLINE_EXCEEDED,
    InternalError: Code.INTERNAL,
    Unauthenticated: Code.UNAUTHENTICATED,
    PermissionDenied: Code.PERMISSION_DENIED,
}


def status_of(exc: BaseException, timeout_message: str = "deadline exceeded") -> tuple[grpc.StatusCode, str]:
    """Status code and message for a failure: a refusal's own, DEADLINE_EXCEEDED for a
    timeout, INTERNAL (no details) for anything else."""
    if isinstance(exc, RequestError):
        code = next((STATUS[c] for c in type(exc).__mro__ if c in STATUS), Code.UNKNOWN)
        return code, exc.message
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return Code.DEADLINE_EXCEEDED, timeout_message
    return Code.INTERNAL, f"internal error: {type(exc).__name__}"


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as a ``time.monotonic()`` instant (None: no deadline)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class RpcService:
    """Base of a servicer. Subclasses set ``metrics``, ``auth`` (None: the service is open),
    ``stream_window`` and ``log``, and define ``_stream_one(request, deadline)`` for their
    streams; ``timeout_message`` is what a timed-out call is told."""

    metrics: Any
    auth: Authenticator | None = None
    stream_window: int = 64
    log: logging.Logger = logging.getLogger("sjff_server")
    timeout_message: str = "deadline exceeded"

    def _status(self, exc: BaseException) -> tuple[grpc.StatusCode, str]:
        return status_of(exc, self.timeout_message)

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if self.auth is not None:
            err = self.auth.check(context.invocation_metadata())
            if err is not None:
                raise err

    async def _unary(
        self, method: str, context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable[Resp]], model: str = ""
    ) -> Resp:
        """Authorise, await ``fn()`` and return its answer; a failure ends the call with its
        status (INTERNAL ones are logged, naming ``model``). Counted under ``method``.
        (``InferenceService.ModelInfer`` writes these steps out for the busiest call: keep the
        two alike; tests/test_server_messages.py checks they answer failures the same way.)"""
        t0 = time.perf_counter()
        code = "OK"
        try:
            self._authorize(context)
            return await fn()
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a crash
            status, message = self._failure(method, exc, model)
            code = status.name
            await context.abort(status, message)
        finally:
            self.metrics.request(method, code, time.perf_counter() - t0)

    def _failure(self, method: str, exc: Exception, model: str = "") -> tuple[grpc.StatusCode, str]:
        """The status a call that failed with ``exc`` ends with; INTERNAL ones are logged
        (naming ``model``)."""
        status, message = self._status(exc)
        if status == Code.INTERNAL:
            self.log.exception(f"{method} failed", extra={"model": model} if model else None)
        return status, message

    async def _item(
        self,
        method: str,
        fn: Callable[[], Awaitable[Resp]],
        answer_error: Callable[[grpc.StatusCode, str], Resp],
        model: str = "",
    ) -> Resp:
        """One request of a stream: await ``fn()``; a failure is answered in-band with
        ``answer_error(status, message)`` and the stream goes on. Counted under ``method``."""
        t0 = time.perf_counter()
        code = "OK"
        try:
            return await fn()
        except Exception as exc:  # noqa: BLE001 - reported in-band; the stream goes on
            status, message = self._failure(method, exc, model)
            code = status.name
            return answer_error(status, message)
        finally:
            self.metrics.request(method, code, time.perf_counter() - t0)

    async def _answer(
        self, method: str, requests: AsyncIterator[Req], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """The body of a bidirectional RPC: authorise, then ``_stream_one(request, deadline)``
        for every request (concurrently, answered in order, at most ``stream_window``
        unanswered), where ``deadline`` is the call's. With tokens, the call is authorised
        again whenever they change, and ends once its token is revoked. The whole call is
        counted under ``method``; each request's failure is answered in-band by
        ``_stream_one``."""
        t0 = time.perf_counter()
        code = "OK"
        auth = self.auth
        try:
            self._authorize(context)
            if auth is not None:  # the token set this authorisation saw
                requests = rechecked(requests, context, self._authorize, auth.refresh, auth.refresh())
        except RequestError as exc:
            status, message = self._status(exc)
            self.metrics.request(method, status.name, time.perf_counter() - t0)
            await context.abort(status, message)
        deadline = deadline_of(context)
        revoked = None
        try:
            handle = self._stream_one
            async for response in ordered_responses(requests, lambda r: handle(r, deadline), self.stream_window):
                yield response
        except RequestError as exc:  # the token was revoked during the stream
            revoked = self._status(exc)
            code = revoked[0].name
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            self.metrics.request(method, code, time.perf_counter() - t0)
        if revoked is not None:
            await context.abort(revoked[0], f"{revoked[1]} (the token was revoked during the stream)")

    async def _stream_one(self, request: Any, deadline: float | None) -> Any:
        raise NotImplementedError
