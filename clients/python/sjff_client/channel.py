"""gRPC channels and bearer tokens of the clients (grpcio only)."""

from __future__ import annotations

import os
from pathlib import Path

import grpc

__all__ = ["DEFAULT_TARGET", "make_channel", "read_token"]

DEFAULT_TARGET = "localhost:8001"
_MAX_MESSAGE = 64 * 1024 * 1024  # a 4096-image FP32 request of 784 values is 12.8 MB


def _read(path: str | os.PathLike | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def read_token(token: str | None, token_file: str | os.PathLike | None) -> str | None:
    """``token``, else the first line of ``token_file`` that is not a comment, else ``$SJFF_TOKEN``."""
    if token:
        return token
    if token_file:
        lines = [
            ln.strip() for ln in Path(token_file).read_text().splitlines() if ln.strip() and not ln.startswith("#")
        ]
        return lines[0] if lines else None
    return os.environ.get("SJFF_TOKEN") or None


def make_channel(
    target: str = DEFAULT_TARGET,
    *,
    tls: bool = False,
    root_ca: str | os.PathLike | None = None,
    client_cert: str | os.PathLike | None = None,
    client_key: str | os.PathLike | None = None,
    server_name: str | None = None,
    asyncio: bool = False,
):
    """A gRPC channel (``grpc.aio`` if ``asyncio``); TLS if ``tls`` or any certificate is given
    (``client_cert`` + ``client_key`` for mutual TLS)."""
    options = [("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    mod = grpc.aio if asyncio else grpc
    if tls or root_ca or client_cert:
        creds = grpc.ssl_channel_credentials(_read(root_ca), _read(client_key), _read(client_cert))
        return mod.secure_channel(target, creds, options=options)
    return mod.insecure_channel(target, options=options)
