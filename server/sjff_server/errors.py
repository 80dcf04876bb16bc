"""Errors that map to gRPC status codes."""

from __future__ import annotations

import grpc

__all__ = ["RequestError", "invalid", "not_found"]


class RequestError(Exception):
    """A request the server refuses; ``code`` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


def invalid(message: str) -> RequestError:
    """INVALID_ARGUMENT."""
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> RequestError:
    """NOT_FOUND."""
    return RequestError(grpc.StatusCode.NOT_FOUND, message)
