"""Why the server refuses a request, independent of any wire protocol.

Models, batching and learning raise these; the protocol layer (``rpc.py``) alone maps them
to gRPC status codes. ``reason`` is the stable name of a refusal in metrics
(``sjff_learning_updates{outcome="refused_<reason>"}``).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "DeadlineExceeded",
    "InternalError",
    "InvalidInput",
    "ModelNotFound",
    "OutOfRange",
    "PermissionDenied",
    "PreconditionFailed",
    "RequestError",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "UnknownOutcome",
    "VersionConflict",
    "check_retry",
]


class RequestError(Exception):
    """A request the server refuses; ``message`` is what the client is told."""

    reason: ClassVar[str] = "unknown"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(RequestError):
    """The request itself is wrong (shape, range, type, unknown name)."""

    reason = "invalid_argument"


def check_retry(request_id: str, digest: bytes, first: bytes, where: str) -> None:
    """A Learn whose ``request_id`` was seen before must carry the same samples (``digest``
    against the ``first`` one's sha256, ``where`` it stands): another update under a used id
    would otherwise be dropped silently."""
    if digest != first:
        raise InvalidInput(
            f"request_id {request_id!r} names another update ({where}) with other samples; a new update needs a "
            "new request_id"
        )


class ModelNotFound(RequestError):
    """No such model or version in the repository."""

    reason = "not_found"


class Unavailable(RequestError):
    """Not now: shutting down, learning stopped, or the model's state needs an operator.
    An update refused this way was not applied; a retry later may succeed."""

    reason = "unavailable"


class UnknownOutcome(RequestError):
    """A storage failure left it unknown whether the update was applied."""

    reason = "unknown"


class VersionConflict(RequestError):
    """The model is not at the version the request expected (optimistic concurrency)."""

    reason = "aborted"


class PreconditionFailed(RequestError):
    """The request is valid but the model cannot take it (learning disabled, an update that
    would make the weights non-finite)."""

    reason = "failed_precondition"


class OutOfRange(RequestError):
    """A version that does not exist (yet) or can no longer be restored."""

    reason = "out_of_range"


class ResourceExhausted(RequestError):
    """A queue or memory budget is spent; retry later or send less."""

    reason = "resource_exhausted"


class DeadlineExceeded(RequestError):
    """The caller's deadline passed before the work started."""

    reason = "deadline_exceeded"


class InternalError(RequestError):
    """A server fault (a bug), told to the caller without details."""

    reason = "internal"


class Unauthenticated(RequestError):
    """No valid token."""

    reason = "unauthenticated"


class PermissionDenied(RequestError):
    """The call needs a token but the server has none configured."""

    reason = "permission_denied"
