"""A real ``redis-server`` for tests and benchmarks: a free loopback port, a temporary
directory, AOF fsynced on every write (``appendonly yes``, ``appendfsync always``, no RDB
saves), so a ``kill -9`` and a restart on the same directory replay what it acknowledged.

Tests use the ``redis_server`` fixture (``from redis_utils import redis_server``): it skips
when ``redis-server`` is not installed, unless ``SJFF_REQUIRE_REDIS=1`` (CI), which makes
that a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

__all__ = ["RedisServer", "redis_server", "require_redis_server"]

START_TIMEOUT_S = 20.0


def require_redis_server() -> str:
    """The path of ``redis-server``; skips the test if absent (fails with SJFF_REQUIRE_REDIS=1)."""
    path = shutil.which("redis-server")
    if path is None:
        reason = "redis-server is not installed (Debian: apt install redis-server)"
        if os.environ.get("SJFF_REQUIRE_REDIS") == "1":
            pytest.fail(f"{reason}, and SJFF_REQUIRE_REDIS=1 requires it")
        pytest.skip(f"{reason}; set SJFF_REQUIRE_REDIS=1 to make this a failure")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` in ``directory`` on a free loopback port (``.port``, ``.url``);
    ``password``: started with ``--requirepass``. A context manager (start / stop)."""

    def __init__(self, directory: Path, password: str | None = None, executable: str | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.executable = executable or shutil.which("redis-server")
        if self.executable is None:
            raise FileNotFoundError("redis-server is not installed (Debian: apt install redis-server)")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, db: int = 0) -> redis.Redis:
        """A synchronous client (for checks from the test itself)."""
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password, socket_timeout=10)

    def start(self) -> RedisServer:
        cmd = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        cmd += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        cmd += ["--daemonize", "no", "--logfile", "redis.log"]
        if self.password is not None:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # poll until it answers: it may be replaying a long AOF
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with self.client() as c:
                    if c.ping():
                        return self
            except redis.exceptions.ConnectionError:  # not listening yet, or still loading the AOF
                pass
            if time.monotonic() > deadline:
                self.kill9()
                raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT_S} s: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        log = self.dir / "redis.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else "(no log)"

    def kill9(self) -> None:
        """SIGKILL: no shutdown, no final save; only what the AOF holds survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> RedisServer:
        """Start again on the same directory and port (replaying the AOF)."""
        self.stop()
        return self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def redis_server(tmp_path):
    """A started :class:`RedisServer` in a temporary directory, stopped after the test."""
    require_redis_server()
    with RedisServer(tmp_path / "redis") as server:
        yield server
