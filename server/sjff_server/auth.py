"""Bearer-token authentication (``authorization: Bearer <token>`` metadata).

Tokens come from a file (one per line, ``#`` comments; several lines allow rotation without
downtime; the file is re-read when it changes, and emptying it revokes them) or from an environment variable, never from
the command line (it would show in ``ps`` and shell history). Every presented token is
compared with every configured one by :func:`hmac.compare_digest` (constant time).
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from pathlib import Path

from .errors import PermissionDenied, RequestError, Unauthenticated

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
    """Checks call metadata against the configured tokens.

    The token file is checked for changes (mtime, size, inode) at most every ``recheck_s``
    seconds, at a call. Its tokens are then replaced by what it holds now: an empty (or
    all-comment) file means no token from the file, so every protected call is refused
    (revocation without a restart); a file that cannot be read, or holds an invalid token,
    fails closed the same way until it is fixed. Tokens from ``token_env`` stay valid.
    ``generation`` counts the changes, so an open stream can re-check its token cheaply.
    """

    def __init__(
        self, token_file: str | os.PathLike | None = None, token_env: str | None = None, recheck_s: float = 5.0
    ) -> None:
        self.token_file = Path(token_file) if token_file else None
        self.token_env = token_env
        self._tokens = load_tokens(token_file, token_env)
        self._env_tokens = load_tokens(None, token_env)
        # a server that has had tokens refuses a bad one with UNAUTHENTICATED; one that never
        # had any answers PERMISSION_DENIED (a configuration matter, not a credential one)
        self._had_tokens = bool(self._tokens)
        self._stamp = self._stat()
        self._checked = time.monotonic()
        self.recheck_s = recheck_s
        self.generation = 0

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def _stat(self) -> tuple[int, int, int] | None:
        if self.token_file is None:
            return None
        try:
            st = self.token_file.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _set(self, tokens: list[bytes]) -> None:
        if tokens != self._tokens:
            self._tokens = tokens
            self._had_tokens |= bool(tokens)
            self.generation += 1

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self.token_file is None or now - self._checked < self.recheck_s:
            return
        self._checked = now
        stamp = self._stat()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            file_tokens = _parse(self.token_file.read_text(), str(self.token_file))
        except (OSError, UnicodeDecodeError, AuthError) as exc:
            why = str(exc) if isinstance(exc, AuthError) else f"cannot read {self.token_file}: {exc}"
            self._set(self._env_tokens)
            log.error(
                "token file changed and is unusable: its tokens are no longer accepted (fail closed) until it is fixed",
                extra={"error": why, "tokens": len(self._tokens)},
            )
            return
        self._set(file_tokens + self._env_tokens)
        if file_tokens:
            log.info("tokens reloaded", extra={"count": len(self._tokens)})
        else:
            log.warning(
                "token file is now empty: its tokens are revoked"
                + ("" if self._tokens else "; every protected call is refused"),
                extra={"file": str(self.token_file), "tokens": len(self._tokens)},
            )

    def refresh(self) -> int:
        """Re-read the token file if it is due and changed; the current ``generation``."""
        self._maybe_reload()
        return self.generation

    def check(self, metadata: tuple | None) -> RequestError | None:
        """None if ``metadata`` carries a valid token, else the refusal to answer with."""
        self._maybe_reload()
        if not self._tokens and not self._had_tokens:
            return PermissionDenied("this call needs a token but the server has none configured")
        header = None
        for key, value in metadata or ():
            if key == "authorization":
                header = value
                break
        if header is None:
            return Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return Unauthenticated("authorization metadata must be 'Bearer <token>'")
        given = presented.strip().encode("latin-1", "replace")
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(given, token)  # no early exit: timing reveals nothing
        if not ok:
            return Unauthenticated("invalid token")
        return None
