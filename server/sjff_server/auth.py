"""Bearer-token authentication (``authorization: Bearer <token>`` metadata).

Tokens come from a file (one per line, ``#`` comments; several lines allow rotation without
downtime; the file is re-read when it changes) or from an environment variable, never from
the command line (it would show in ``ps`` and shell history). Every presented token is
compared with every configured one by :func:`hmac.compare_digest` (constant time).
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from pathlib import Path

import grpc

__all__ = ["Authenticator", "AuthError", "load_tokens"]

log = logging.getLogger("sjff_server.auth")
MIN_TOKEN_LENGTH = 16


class AuthError(ValueError):
    """The token configuration is unusable."""


def _parse(text: str, where: str) -> list[bytes]:
    tokens = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) < MIN_TOKEN_LENGTH:
            raise AuthError(f"{where}: tokens must be at least {MIN_TOKEN_LENGTH} characters")
        tokens.append(line.encode())
    return tokens


def load_tokens(token_file: str | os.PathLike | None, token_env: str | None) -> list[bytes]:
    """Tokens from ``token_file`` and/or the environment variable ``token_env``."""
    tokens: list[bytes] = []
    if token_file:
        path = Path(token_file)
        try:
            tokens += _parse(path.read_text(), str(path))
        except OSError as exc:
            raise AuthError(f"cannot read token file {path}: {exc.strerror or exc}") from exc
    if token_env and os.environ.get(token_env):
        tokens += _parse(os.environ[token_env], f"${token_env}")
    return tokens


class Authenticator:
    """Checks call metadata against the configured tokens."""

    def __init__(
        self, token_file: str | os.PathLike | None = None, token_env: str | None = None, recheck_s: float = 5.0
    ) -> None:
        self.token_file = Path(token_file) if token_file else None
        self.token_env = token_env
        self._tokens = load_tokens(token_file, token_env)
        self._mtime = self._stat()
        self._checked = time.monotonic()
        self._recheck_s = recheck_s

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def _stat(self) -> float | None:
        if self.token_file is None:
            return None
        try:
            return self.token_file.stat().st_mtime
        except OSError:
            return None

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self.token_file is None or now - self._checked < self._recheck_s:
            return
        self._checked = now
        mtime = self._stat()
        if mtime is not None and mtime != self._mtime:
            try:
                tokens = load_tokens(self.token_file, self.token_env)
            except AuthError as exc:
                log.error("token file changed but is unusable; keeping the old tokens", extra={"error": str(exc)})
                return
            if tokens:
                self._tokens = tokens
                self._mtime = mtime
                log.info("tokens reloaded", extra={"count": len(tokens)})

    def check(self, metadata: tuple | None) -> tuple[grpc.StatusCode, str] | None:
        """None if ``metadata`` carries a valid token, else the status to answer with."""
        self._maybe_reload()
        if not self._tokens:
            return grpc.StatusCode.PERMISSION_DENIED, "this call needs a token but the server has none configured"
        header = None
        for key, value in metadata or ():
            if key == "authorization":
                header = value
                break
        if header is None:
            return grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata"
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return grpc.StatusCode.UNAUTHENTICATED, "authorization metadata must be 'Bearer <token>'"
        given = presented.strip().encode("latin-1", "replace")
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(given, token)  # no early exit: timing reveals nothing
        if not ok:
            return grpc.StatusCode.UNAUTHENTICATED, "invalid token"
        return None
