"""Run a server in a child process (integration tests, benchmarks, examples).

    with ServerProcess(repo, state_dir=state, token_file=tok) as srv:
        Client(srv.target).infer(images)
    # leaving the block sends SIGTERM (graceful: drain + final snapshot)

The child is ``python -m sjff_server`` on 127.0.0.1 with OS-chosen ports; the ready file it
writes tells the ports. ``kill()`` is a SIGKILL (crash test), ``stop()`` a SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["ServerProcess", "free_port"]


def free_port() -> int:
    """A TCP port free on loopback now, for a child that must be told its port (processes
    sharing one with ``--reuse-port``); another process may take it before it is used."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A ``sjff serve`` child process on loopback."""

    def __init__(
        self,
        model_repository: str | os.PathLike,
        *,
        state_dir: str | os.PathLike | None = None,
        token_file: str | os.PathLike | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        metrics: bool = True,
        log_path: str | os.PathLike | None = None,
        startup_timeout: float = 90.0,
        python: str = sys.executable,
        file_size_limit: int | None = None,
    ) -> None:
        self.repo = Path(model_repository)
        self.state_dir = Path(state_dir) if state_dir else None
        self.token_file = Path(token_file) if token_file else None
        self.extra_args = list(extra_args or [])
        self.env = env
        self.metrics = metrics
        self._tmp = tempfile.TemporaryDirectory(prefix="sjff-server-")
        self.log_path = Path(log_path) if log_path else Path(self._tmp.name) / "server.log"
        self.ready_file = Path(self._tmp.name) / "ready.json"
        self.startup_timeout = startup_timeout
        self.python = python
        self.file_size_limit = file_size_limit  # RLIMIT_FSIZE of the child: makes writes fail (EFBIG)
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    # -- lifecycle ------------------------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [
            self.python,
            "-m",
            "sjff_server",
            "--model-repository",
            str(self.repo),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ]
        cmd += ["--metrics-port", "0" if self.metrics else "-1", "--ready-file", str(self.ready_file)]
        if self.state_dir is not None:
            cmd += ["--state-dir", str(self.state_dir)]
        if self.token_file is not None:
            cmd += ["--token-file", str(self.token_file)]
        return cmd + self.extra_args

    def start(self) -> ServerProcess:
        self.ready_file.unlink(missing_ok=True)
        if self.env is None:
            env = dict(os.environ)
            env.pop("SJFF_TOKEN", None)  # only what the test gives counts
        else:
            env = dict(self.env)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        limit = self.file_size_limit

        def limits() -> None:  # runs in the child before exec
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        self.proc = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=limits if limit is not None else None,  # noqa: PLW1509 - only a setrlimit
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                self.info = json.loads(self.ready_file.read_text())
                return self
            if self.proc.poll() is not None:
                self._reap()
                raise RuntimeError(f"server exited with {self.proc.returncode} during startup:\n{self.log()[-4000:]}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server not ready after {self.startup_timeout}s:\n{self.log()[-4000:]}")

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        if self.alive():
            self.stop()
        self._tmp.cleanup()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the server drains calls and writes final snapshots."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._reap()
        return rc

    def kill(self) -> None:
        """SIGKILL (kill -9): no drain, no snapshot."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reap()

    def restart(self, file_size_limit: int | None = None) -> ServerProcess:
        """Start again on new ports with the same repository and state."""
        if self.alive():
            self.stop()
        self.proc = None
        self.file_size_limit = file_size_limit
        return self.start()

    def _reap(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()

    # -- facts ----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self.info["port"])

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.info['metrics_port']}/metrics"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_records(self) -> list[dict]:
        """The server's JSON log lines, parsed."""
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out
