"""Bidirectional streams answered in request order while requests run concurrently
(the RPC around them: ``rpc.RpcService._answer``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["ordered_responses", "rechecked"]

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


async def rechecked(
    requests: AsyncIterator[Req],
    context: Any,
    authorize: Callable[[Any], None],
    generation: Callable[[], int],
    seen: int,
) -> AsyncIterator[Req]:
    """``requests``, re-authorising the call before the next one whenever the token set has
    changed since generation ``seen``: a revoked token raises its refusal there, so
    requests read before it are still answered and none after it is started."""
    async for request in requests:
        now = generation()
        if now != seen:
            authorize(context)
            seen = now
        yield request
