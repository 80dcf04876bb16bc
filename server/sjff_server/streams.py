"""Bidirectional streams answered in request order while requests run concurrently."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from .errors import RequestError

__all__ = ["StreamService", "answer_stream", "ordered_responses"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def ordered_responses(
    requests: AsyncIterator[Req], handle: Callable[[Req], Awaitable[Resp]], window: int = 64
) -> AsyncIterator[Resp]:
    """Start ``handle(request)`` for each request as it arrives (at most ``window`` unanswered
    at a time: back-pressure on the client) and yield the results in request order.
    ``handle`` must report failures in its result rather than raise."""
    slots = asyncio.Semaphore(max(1, window))
    pending: asyncio.Queue = asyncio.Queue()

    async def read() -> None:
        try:
            async for req in requests:
                await slots.acquire()
                pending.put_nowait(asyncio.ensure_future(handle(req)))
        finally:
            pending.put_nowait(None)

    reader = asyncio.ensure_future(read())
    try:
        while True:
            item = await pending.get()
            if item is None:
                break
            response = await item
            slots.release()
            yield response
        await reader  # surfaces a broken request stream
    finally:
        reader.cancel()
        while not pending.empty():
            item = pending.get_nowait()
            if item is not None:
                item.cancel()


async def _rechecked(
    requests: AsyncIterator[Req],
    context: Any,
    authorize: Callable[[Any], None],
    generation: Callable[[], int],
    seen: int,
) -> AsyncIterator[Req]:
    """``requests``, re-authorising the call before the next one whenever the token set has
    changed since generation ``seen``: a revoked token raises :class:`RequestError` there, so
    requests read before it are still answered and none after it is started."""
    async for request in requests:
        now = generation()
        if now != seen:
            authorize(context)
            seen = now
        yield request


async def answer_stream(
    method: str,
    requests: AsyncIterator[Req],
    context: Any,
    *,
    authorize: Callable[[Any], None],
    handle: Callable[[Req, float | None], Awaitable[Resp]],
    window: int,
    metrics: Any,
    token_generation: Callable[[], int] | None = None,
) -> AsyncIterator[Resp]:
    """The body of a bidirectional RPC: ``authorize(context)`` (a :class:`RequestError` ends the
    call with its status), then ``handle(request, deadline)`` for every request via
    :func:`ordered_responses`, where ``deadline`` is the call's ``time.monotonic()`` deadline
    (or None). With ``token_generation`` (the authenticator's ``refresh``) the call is
    authorised again whenever the tokens change, and ends once its token is revoked. The whole
    call is counted in ``metrics`` under ``method``."""
    t0 = time.perf_counter()
    code = "OK"
    try:
        authorize(context)
        if token_generation is not None:  # the token set this authorisation saw
            requests = _rechecked(requests, context, authorize, token_generation, token_generation())
    except RequestError as exc:
        metrics.request(method, exc.code.name, time.perf_counter() - t0)
        await context.abort(exc.code, exc.message)
    remaining = context.time_remaining()
    deadline = None if remaining is None else time.monotonic() + remaining
    revoked = None
    try:
        async for response in ordered_responses(requests, lambda r: handle(r, deadline), window):
            yield response
    except RequestError as exc:  # the token was revoked during the stream
        code = exc.code.name
        revoked = exc
    except asyncio.CancelledError:
        code = "CANCELLED"
        raise
    finally:
        metrics.request(method, code, time.perf_counter() - t0)
    if revoked is not None:
        await context.abort(revoked.code, f"{revoked.message} (the token was revoked during the stream)")


class StreamService:
    """Mixin for a servicer with ``_authorize(context)``, ``_stream_one(request, deadline)``,
    ``stream_window``, ``metrics`` and ``auth`` (an Authenticator, or None when the service
    is open): :meth:`_answer` is the body of its streaming RPCs."""

    def _answer(self, method: str, requests: AsyncIterator, context: Any) -> AsyncIterator:
        auth = getattr(self, "auth", None)
        return answer_stream(
            method,
            requests,
            context,
            authorize=self._authorize,
            handle=self._stream_one,
            window=self.stream_window,
            metrics=self.metrics,
            token_generation=auth.refresh if auth is not None else None,
        )
