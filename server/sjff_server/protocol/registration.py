"""Register servicers with deserializers that never fail, and serializers that also pass
through answers a handler has serialised itself.

The generated ``add_*Servicer_to_server`` helpers parse requests with ``FromString``; bytes that
are not a valid message then make gRPC answer UNKNOWN ("Exception deserializing request").
Here an undecodable request becomes a :class:`Malformed` value instead, which unary methods
answer with INVALID_ARGUMENT and stream handlers report in-band, like any other bad request.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import grpc

from ..errors import InvalidInput
from .rpc import status_of

__all__ = ["Malformed", "add_service", "serialize_answer"]


class Malformed:
    """A request whose bytes do not parse as the expected message."""

    __slots__ = ("type_name", "error")

    def __init__(self, type_name: str, error: str) -> None:
        self.type_name = type_name
        self.error = error

    @property
    def message(self) -> str:
        return f"the request is not a valid {self.type_name} message ({self.error})"


def _deserializer(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError and friends: reported to the caller
            return Malformed(cls.DESCRIPTOR.full_name, str(exc) or type(exc).__name__)

    return parse


def serialize_answer(message: Any) -> bytes:
    """A handler's answer as bytes: a message, or bytes it serialised itself (messages.py)."""
    return message if type(message) is bytes else message.SerializeToString()


def _guard(fn: Callable) -> Callable:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if type(request) is Malformed:
            await context.abort(*status_of(InvalidInput(request.message)))
        return await fn(request, context)

    return handler


async def _refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
    if type(request) is Malformed:
        await context.abort(*status_of(InvalidInput(request.message)))
    return request


def _guard_unary_stream(fn: Callable) -> Callable:
    """A server-streaming method that reads its one request's fields (gRPC's health Watch)."""

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await fn(await _refuse(request, context), context)

    return handler


def _guard_stream_stream(fn: Callable) -> Callable:
    """A bidirectional method that reads every request's fields (gRPC's reflection, an async
    generator): a malformed request ends the call with INVALID_ARGUMENT."""

    async def handler(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        async def checked() -> Any:
            async for request in requests:
                yield await _refuse(request, context)

        async for answer in fn(checked(), context):
            yield answer

    return handler


def add_service(
    server: grpc.aio.Server, servicer: Any, module: ModuleType, service: str, in_band: bool = True
) -> str:
    """Register every method of ``service`` (defined in the generated ``module``) on ``server``
    with tolerant deserializers. Returns the service's full name. ``in_band``: our stream
    methods report a malformed item in the stream; False, for gRPC's own servicers (health,
    reflection), which read every request's fields: a malformed request is INVALID_ARGUMENT
    whatever the method's kind (their generated helpers answered UNKNOWN)."""
    desc = module.DESCRIPTOR.services_by_name[service]
    handlers = {}
    for m in desc.methods:
        req = getattr(module, m.input_type.name)
        fn = getattr(servicer, m.name)
        kw = {"request_deserializer": _deserializer(req), "response_serializer": serialize_answer}
        if not in_band and m.server_streaming:
            fn = _guard_stream_stream(fn) if m.client_streaming else _guard_unary_stream(fn)
        if m.client_streaming and m.server_streaming:
            handlers[m.name] = grpc.stream_stream_rpc_method_handler(fn, **kw)
        elif m.client_streaming:
            handlers[m.name] = grpc.stream_unary_rpc_method_handler(fn, **kw)
        elif m.server_streaming:
            handlers[m.name] = grpc.unary_stream_rpc_method_handler(fn, **kw)
        else:
            # a method that answers a Malformed request itself skips the wrapper's extra frame
            unwrapped = getattr(fn, "accepts_malformed", False)
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(fn if unwrapped else _guard(fn), **kw)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(desc.full_name, handlers),))
    server.add_registered_method_handlers(desc.full_name, handlers)
    return desc.full_name
