"""The Redis connection of replicated serving: URL and secrets, TLS, key names, errors.

A password is read from a file only (``--replication-password-file`` or the environment
variable ``SJFF_REDIS_PASSWORD_FILE``): one in the URL would show in the process list, shell
history and logs, so it is refused. Every Redis failure reaches callers as
:class:`sjff_server.errors.Unavailable` (see :func:`translate_errors`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ParamSpec, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import Unavailable

__all__ = [
    "HEALTH_CHECK_S",
    "PASSWORD_FILE_ENV",
    "CredentialsRefused",
    "check_durability",
    "connect",
    "model_key",
    "redact",
    "retrying",
    "translate_errors",
]

PASSWORD_FILE_ENV = "SJFF_REDIS_PASSWORD_FILE"  # noqa: S105 (the name of a variable, not a secret)
P = ParamSpec("P")
T = TypeVar("T")
E = TypeVar("E", bound=BaseException)
#: a pooled connection idle longer than this is PINGed before use (and replaced if dead)
HEALTH_CHECK_S = 1.0
_TRANSIENT = (RedisConnectionError, RedisTimeoutError)


class CredentialsRefused(Unavailable):
    """Redis refused the password or the user, or its TLS certificate failed verification
    against ``--replication-ca``: a configuration error, not an outage."""


def model_key(prefix: str, model: str, *parts: str) -> str:
    """``{prefix}:{{model}}:part:...``; the braces are a Redis Cluster hash tag, so all keys of
    one model live in one slot (the append script touches several of them)."""
    return ":".join((prefix, "{" + model + "}", *parts))


def redact(url: str) -> str:
    """``url`` without userinfo and query (for messages and logs)."""
    s = urlsplit(url)
    host = s.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if s.port is not None:
        netloc += f":{s.port}"
    return urlunsplit((s.scheme, netloc, s.path, "", ""))


def translate_errors(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorate a coroutine function so Redis and socket errors leave it as ``Unavailable``."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except (AuthenticationError, AuthorizationError) as exc:
            raise Unavailable(f"replication: Redis refused the credentials: {exc}") from exc
        except (RedisError, OSError) as exc:  # connection, timeout (an OSError), READONLY, OOM, ...
            raise Unavailable(f"replication: Redis unreachable: {exc or type(exc).__name__}") from exc

    return wrapper


def retrying(times: int = 1) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorate a coroutine function that is safe to repeat (a read, an idempotent write): a lost
    connection or a timeout is tried again ``times`` times, on a new connection (the pool
    replaces a connection that failed). Refused credentials are not retried."""

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            for _ in range(times):
                try:
                    return await fn(*args, **kwargs)
                except (AuthenticationError, AuthorizationError):
                    raise
                except _TRANSIENT:
                    continue
            return await fn(*args, **kwargs)

        return wrapper

    return decorate


class _CheckedConnection(Connection):
    """A connection whose idle-time health check replaces it when it is dead.

    redis-py's own check PINGs through the retry policy shared with commands, which is off
    (an append resent blindly could be applied twice), so a stale pooled connection (Redis
    restarted, a proxy dropped it) would fail the next command. Here a failed PING reconnects
    and PINGs once more before the command is sent: nothing was sent yet, so this is safe for
    every command."""

    async def check_health(self) -> None:
        if not self.health_check_interval or asyncio.get_running_loop().time() <= self.next_health_check:
            return
        try:
            await self._send_ping()
        except (*_TRANSIENT, OSError):
            await self.disconnect()
            await self._send_ping()  # on a new connection; a failure now is an outage


class _CheckedSSLConnection(_CheckedConnection, SSLConnection):
    pass


def _password(password_file: str | os.PathLike[str] | None) -> str | None:
    path = password_file if password_file is not None else os.environ.get(PASSWORD_FILE_ENV) or None
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"replication: cannot read the Redis password file {path}: {exc.strerror}") from exc
    password = text.rstrip("\r\n")  # an editor's final newline is not part of the password
    if not password:
        raise ValueError(f"replication: the Redis password file {path} is empty")
    return password


def _check_url(url: str, tls_files: dict[str, str | os.PathLike[str] | None]) -> None:
    s = urlsplit(url)
    if s.scheme not in ("redis", "rediss"):
        raise ValueError(f"replication: the Redis URL must start with redis:// or rediss:// (TLS), got {redact(url)!r}")
    if s.password is not None or "password" in parse_qs(s.query):
        raise ValueError(
            "replication: a password in the Redis URL is refused (it would show in the process list and logs): "
            f"put it in a file and pass --replication-password-file FILE (or set {PASSWORD_FILE_ENV})"
        )
    if not s.hostname:
        raise ValueError(f"replication: the Redis URL names no host, got {redact(url)!r}")
    db = s.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"replication: the Redis URL's path is the database number (redis://host:port/0), got {db!r}")
    given = {k: v for k, v in tls_files.items() if v is not None}
    if given and s.scheme != "rediss":
        raise ValueError(f"replication: {', '.join(f'--replication-{k}' for k in given)} need a rediss:// URL")
    for name, path in given.items():
        if not Path(path).is_file():
            raise ValueError(f"replication: the TLS {name} file {path} does not exist")


async def connect(
    url: str,
    password_file: str | os.PathLike[str] | None = None,
    *,
    ca: str | os.PathLike[str] | None = None,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    timeout_s: float = 5.0,
    ping: bool = True,
) -> aioredis.Redis:
    """A client of the Redis at ``url`` (``redis://HOST:PORT/DB``, or ``rediss://`` for TLS with
    the CA, client certificate and key files), checked with a PING within ``timeout_s``.

    ``ValueError``: a malformed URL, a password in it, unreadable files. ``Unavailable``: Redis
    does not answer, or (:class:`CredentialsRefused`) refuses the credentials or fails TLS
    certificate verification (``ping=False``: not checked, the client
    connects on first use). Commands time out after ``timeout_s`` and are never resent by
    redis-py: an append resent after a timeout could be applied twice; idempotent calls
    are retried by :func:`retrying`. A pooled connection idle over :data:`HEALTH_CHECK_S`
    is PINGed and replaced if dead before a command goes out on it.
    """
    _check_url(url, {"ca": ca, "cert": cert, "key": key})
    options: dict[str, object] = {}
    if url.startswith("rediss:"):
        options = {"ssl_ca_certs": ca and str(ca), "ssl_certfile": cert and str(cert), "ssl_keyfile": key and str(key)}
    client = aioredis.Redis.from_url(
        url,
        password=_password(password_file),
        decode_responses=False,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=HEALTH_CHECK_S,
        connection_class=_CheckedSSLConnection if url.startswith("rediss:") else _CheckedConnection,
        retry=Retry(NoBackoff(), 0),  # see _CheckedConnection and retrying()
        **options,
    )
    if not ping:
        return client
    try:
        await asyncio.wait_for(client.ping(), timeout_s)
    except (AuthenticationError, AuthorizationError) as exc:
        await client.aclose()
        raise CredentialsRefused(
            f"replication: Redis at {redact(url)} refused the credentials ({exc}): check "
            f"--replication-password-file (or {PASSWORD_FILE_ENV})"
        ) from exc
    except (RedisError, OSError) as exc:
        await client.aclose()
        cert = _cause(exc, ssl.SSLCertVerificationError)
        if cert is not None:
            raise CredentialsRefused(
                f"replication: the TLS certificate of Redis at {redact(url)} failed verification "
                f"({cert.verify_message}): check --replication-ca (the CA that signed Redis's certificate) "
                "and the host name in the URL"
            ) from exc
        raise Unavailable(
            f"replication: Redis unreachable at {redact(url)}: {exc or type(exc).__name__}{_hint(url, exc)}"
        ) from exc
    return client


def _cause(exc: BaseException, kind: type[E]) -> E | None:
    """The exception of type ``kind`` in the chain of ``exc`` (redis-py wraps socket errors)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kind):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _hint(url: str, exc: BaseException) -> str:
    """Why Redis may have closed a connection it accepted without answering: a TLS mismatch."""
    if _cause(exc, ConnectionResetError) is None and "closed by server" not in str(exc):
        return ""
    if url.startswith("rediss:"):
        return " (if Redis requires client certificates, give --replication-cert and --replication-key)"
    return " (Redis closed the connection without answering: if that port speaks TLS, use a rediss:// URL)"


@translate_errors
async def check_durability(client: aioredis.Redis) -> list[str]:
    """Warnings (empty if none) when Redis may lose an acknowledged append: AOF off or not
    fsynced on every write. A managed Redis that hides CONFIG gets one warning saying so."""
    try:
        config = await client.config_get("append*")
    except ResponseError as exc:  # CONFIG disabled or renamed (managed Redis)
        return [f"cannot read the Redis configuration ({exc}): make sure appendonly yes, appendfsync always"]
    config = {k.decode() if isinstance(k, bytes) else k: v for k, v in config.items()}
    warnings = []
    if config.get("appendonly") not in (b"yes", "yes"):
        warnings.append("Redis has appendonly no: a Redis restart loses acknowledged learns (set appendonly yes)")
    if config.get("appendfsync") not in (b"always", "always"):
        warnings.append(
            "Redis has appendfsync other than always: a Redis crash can lose the last acknowledged learns "
            "(set appendfsync always)"
        )
    return warnings
