"""``sjff serve``: the gRPC inference server with continual on-line learning.

    sjff serve --model-repository models/ --state-dir state/ --token-file token.txt

Inference speaks the Open Inference Protocol (KServe v2, ``inference.GRPCInferenceService``);
learning is ``spikingjelly_ff.v1.Learning`` (bearer token required). See docs/server.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import socket
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from .app import ServerApp, ServerConfig, check_port_sharing
from .learning.options import LearnOptions
from .learning.replica_options import ReplicationOptions
from .logs import setup_logging
from .processes import die_with_parent, run_processes
from .serving.repository import scan_repository
from .tuning import hold_cpu_latency, parse_cpu_list, pin_process

__all__ = ["build_parser", "config_from_args", "main"]

log = logging.getLogger("sjff_server")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("spikingjelly-ff")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "0+unknown"


def _int_in(lo: int, hi: int | None = None):
    """An argparse ``type=``: an integer in ``[lo, hi]`` (no upper bound if ``hi`` is None)."""
    want = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {want}, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be an integer {want}, got {v}")
        return v

    return parse


def _float_in(lo: float, hi: float | None = None, *, lo_open: bool = False):
    """An argparse ``type=``: a finite number in ``[lo, hi]`` (``(lo, hi]`` if ``lo_open``);
    NaN and infinities are refused."""
    want = ("> " if lo_open else ">= ") + f"{lo:g}" + ("" if hi is None else f" and <= {hi:g}")

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a finite number {want}, got {text!r}") from None
        if not math.isfinite(v) or v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be a finite number {want}, got {text}")
        return v

    return parse


_port = _int_in(0, 65535)  # 0: any free port


def _port_or_off(text: str) -> int | None:
    """A TCP port, 0 = any free one, -1 = off (None)."""
    if text.strip() == "-1":
        return None
    try:
        return _port(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a port in [0, 65535] or -1 (off), got {text!r}") from None


def _cpu_list(text: str) -> frozenset[int]:
    try:
        return parse_cpu_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_INT32_MAX = 2**31 - 1  # gRPC channel arguments and the PM QoS value are C ints


class _Parser(argparse.ArgumentParser):
    """Reports a bad argument in one line (``sjff serve: error: argument --X: ...``, exit 2)
    rather than after the whole usage text, where it would scroll out of sight."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


#: ``sjff serve``'s options by ``--help`` section: (flag, type, default, other argparse
#: keywords, help); a type or default of None is left to argparse.
_OPTIONS: dict[str, tuple[tuple[str, Any, Any, dict[str, Any], str | None], ...]] = {
    "models": (
        (
            "--model-repository",
            Path,
            None,
            {"required": True, "metavar": "DIR"},
            "REPO/<model>/<version>/model.onnx|model.nir",
        ),
        (
            "--ort-threads",
            _int_in(1, 1024),
            1,
            {},
            "onnxruntime intra-op threads per model (default 1: best for small batches)",
        ),
        (
            "--batch-window-us",
            _int_in(0, 1_000_000),
            4000,
            {},
            "under load, how long a request may wait for others to share its batch (0..1000000; default 4000; 0: "
            "never)",
        ),
        ("--workers", _int_in(1, 1024), 1, {}, "threads running spiking-model batches (default 1)"),
        (
            "--skip-bad-models",
            None,
            None,
            {"action": "store_true"},
            "serve the other models if one fails to load (default: exit)",
        ),
    ),
    "network": (
        ("--host", None, "0.0.0.0", {}, "address to listen on (default 0.0.0.0)"),  # noqa: S104
        ("--port", _port, 8001, {}, "gRPC port (default 8001; 0: any free port)"),
        ("--metrics-port", _port_or_off, 8002, {}, "Prometheus HTTP port (default 8002; -1: off; 0: any)"),
        ("--metrics-host", None, "0.0.0.0", {}, "address of the metrics endpoint"),  # noqa: S104
        (
            "--health-port",
            _port_or_off,
            None,
            {},
            "extra plaintext port serving only grpc.health.v1 (for probes under TLS)",
        ),
        ("--ready-file", Path, None, {}, "write {port, metrics_port, ...} as JSON here once ready"),
        (
            "--reuse-port",
            None,
            None,
            {"action": "store_true"},
            "share --port with other sjff serve processes of this user (SO_REUSEPORT: the kernel spreads "
            "connections over them); read-only, or learning with --replication",
        ),
    ),
    "security": (
        ("--token-file", Path, None, {}, "file with the bearer token(s), one per line (re-read when it changes)"),
        ("--token-env", None, "SJFF_TOKEN", {}, "environment variable holding the token (default SJFF_TOKEN)"),
        (
            "--token-recheck-s",
            _float_in(0.0, 3600.0),
            5.0,
            {},
            "seconds between checks of the token file for changes (default 5; 0: at every call)",
        ),
        ("--protect-inference", None, None, {"action": "store_true"}, "inference needs the token too (default: open)"),
        ("--tls-cert", Path, None, {}, "server certificate chain (PEM); enables TLS"),
        ("--tls-key", Path, None, {}, "server private key (PEM)"),
        ("--tls-client-ca", Path, None, {}, "CA bundle (PEM) to verify client certificates: enables mutual TLS"),
    ),
    "limits": (
        (
            "--max-message-bytes",
            _int_in(4096, _INT32_MAX),
            16 * 1024 * 1024,
            {},
            "largest request/response (4096..2**31-1; default 16 MiB)",
        ),
        (
            "--max-concurrent-rpcs",
            _int_in(0),
            1024,
            {},
            "calls in progress before RESOURCE_EXHAUSTED (default 1024; 0: unlimited)",
        ),
        ("--max-request-rows", _int_in(1), 4096, {}, "images per inference request (default 4096)"),
        ("--max-learn-samples", _int_in(1), 1024, {}, "samples per learning update (default 1024)"),
        (
            "--max-inflight-mb",
            _int_in(1),
            256,
            {},
            "MiB the requests queued or running for one model may hold (decoded images, message and the "
            "working memory of scoring them) before RESOURCE_EXHAUSTED (default 256)",
        ),
        (
            "--max-inline-mmacs",
            _int_in(0),
            16,
            {},
            "largest analog batch run on the event loop, in million multiply-accumulates (images x the model's cost "
            "per image; default 16, about 0.5 ms; 0: none); larger batches run on the --workers threads",
        ),
        ("--max-eta", _float_in(0.0, lo_open=True), 1000.0, {}, "largest per-request learning rate (default 1000)"),
        ("--shutdown-grace", _float_in(0.0), 10.0, {}, "seconds to drain calls on SIGTERM (default 10)"),
        (
            "--cpus",
            _cpu_list,
            None,
            {"metavar": "LIST"},
            "run only on these CPUs, e.g. 1 or 0-3 (default: wherever the scheduler puts it)",
        ),
        (
            "--processes",
            _int_in(1, 1024),
            1,
            {"metavar": "N"},
            "serve from N processes sharing --port, each on a CPU of its own (of --cpus, else of those this one may "
            "use); their metrics and health ports count up from the given ones (default 1)",
        ),
        (
            "--cpu-latency-us",
            _int_in(0, _INT32_MAX),
            None,
            {"metavar": "N"},
            "keep CPU wake-up latency <= N microseconds while serving (Linux PM QoS, /dev/cpu_dma_latency; 0: idle "
            "CPUs poll instead of sleeping; costs power; default: the kernel's choice)",
        ),
    ),
    "learning": (
        ("--state-dir", Path, None, {}, "update logs and snapshots; enables on-line learning"),
        ("--snapshot-every", _int_in(0), 1000, {}, "snapshot after this many updates (default 1000; 0: never)"),
        ("--snapshot-interval", _float_in(0.0), 60.0, {}, "snapshot every N seconds if changed (default 60; 0: never)"),
        ("--keep-snapshots", _int_in(1), 10, {}, "snapshots kept per model (default 10); older log segments go too"),
        ("--max-group", _int_in(1), 64, {}, "updates made durable by one fsync at most (default 64)"),
        ("--max-learn-queue", _int_in(1), 4096, {}, "queued updates per model before RESOURCE_EXHAUSTED"),
        (
            "--segment-mb",
            _int_in(1, 1 << 20),
            64,
            {},
            "start a new update-log segment past this many MiB (default 64; segments also end at snapshots)",
        ),
        (
            "--digest-every",
            _int_in(0),
            100,
            {},
            "log a sha256 of the weights every N versions, checked when the log is replayed (default 100; 0: never)",
        ),
        (
            "--idempotency-window-s",
            _float_in(1.0, 30 * 86400.0),
            86400.0,
            {"metavar": "S"},
            "how long a Learn's request_id and its answer are remembered: a retry within it is answered, not "
            "applied again (default 86400 s; with or without --replication)",
        ),
        (
            "--idempotency-max-mb",
            _int_in(1, 1 << 20),
            64,
            {"metavar": "MB"},
            "memory for remembered request ids per model without --replication; past it the oldest are forgotten "
            "early (default 64)",
        ),
        (
            "--reset-changed-models",
            None,
            None,
            {"action": "store_true"},
            "archive the learning state of an artefact that changed",
        ),
    ),
    "replication": (
        (
            "--replication",
            None,
            None,
            {"metavar": "URL"},
            "redis://HOST:PORT/DB or rediss:// (TLS): learn through one Redis stream per model shared by every "
            "replica (no --state-dir needed); see docs/server.md",
        ),
        (
            "--replication-password-file",
            Path,
            None,
            {},
            "file holding the Redis password (or $SJFF_REDIS_PASSWORD_FILE); never in the URL",
        ),
        ("--replication-ca", Path, None, {}, "CA bundle (PEM) verifying the Redis server (rediss://)"),
        ("--replication-cert", Path, None, {}, "client certificate (PEM) for Redis (rediss://)"),
        ("--replication-key", Path, None, {}, "client key (PEM) for Redis (rediss://)"),
        ("--replication-prefix", None, "sjff", {}, "prefix of every Redis key (default sjff)"),
        (
            "--replication-wait",
            _int_in(0, 64),
            0,
            {"metavar": "N"},
            "Redis replicas that must hold an update before it is acknowledged (WAIT; default 0: the primary's AOF)",
        ),
        (
            "--replication-max-lag",
            _int_in(0),
            100,
            {"metavar": "N"},
            "entries behind the stream above which a model reports NOT_SERVING (default 100)",
        ),
        (
            "--replication-snapshot-every",
            _int_in(1),
            1000,
            {"metavar": "N"},
            "versions between snapshots shared in Redis (default 1000)",
        ),
        (
            "--replication-snapshots-keep",
            _int_in(1, 1000),
            3,
            {"metavar": "N"},
            "shared snapshots kept per model (default 3): the oldest bounds rollback and the stream's trim",
        ),
        (
            "--replica-timeout-s",
            _float_in(1.0, 86400.0),
            30.0,
            {"metavar": "S"},
            "a replica silent this long no longer holds back the stream's trim (default 30)",
        ),
        ("--replica-id", None, None, {"metavar": "ID"}, "this replica's name in Redis (default HOSTNAME-PID)"),
    ),
    "logging": (
        ("--log-level", None, "info", {"choices": ["debug", "info", "warning", "error"]}, None),
        ("--log-format", None, "json", {"choices": ["json", "text"]}, None),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="sjff serve", description="gRPC inference server with continual on-line learning")
    for section, options in _OPTIONS.items():
        g = ap.add_argument_group(section)
        for flag, kind, default, other, text in options:
            kw = {"type": kind, "default": default, "help": text, **other}
            g.add_argument(flag, **{k: v for k, v in kw.items() if v is not None})
    return ap


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    # an option named like a ServerConfig field sets that field as parsed; the rest differ
    same = {f.name: getattr(args, f.name) for f in fields(ServerConfig) if hasattr(args, f.name)}
    learn = LearnOptions(
        max_group=args.max_group,
        snapshot_every=args.snapshot_every,
        snapshot_interval_s=args.snapshot_interval,
        keep_snapshots=args.keep_snapshots,
        max_queue=args.max_learn_queue,
        segment_bytes=args.segment_mb << 20,
        digest_every=args.digest_every,
        reset_changed=args.reset_changed_models,
        request_window_s=args.idempotency_window_s,
        request_window_bytes=args.idempotency_max_mb << 20,
    )
    replica = None
    if args.replication:
        replica = ReplicationOptions(
            replica_id=args.replica_id or f"{socket.gethostname()}-{os.getpid()}",
            prefix=args.replication_prefix,
            wait_replicas=args.replication_wait,
            max_lag=args.replication_max_lag,
            snapshot_every=args.replication_snapshot_every,
            snapshots_keep=args.replication_snapshots_keep,
            digest_every=args.digest_every,
            idempotency_window_s=args.idempotency_window_s,
            replica_timeout_s=args.replica_timeout_s,
            max_group=args.max_group,
        )
    other = {
        "replica": replica,
        "token_env": args.token_env or None,
        "max_concurrent_rpcs": args.max_concurrent_rpcs or None,
        "learn": learn,
        "shutdown_grace_s": args.shutdown_grace,
        "version": _version(),
    }
    return ServerConfig(**{**same, **other})


async def serve(config: ServerConfig, token_recheck_s: float | None = None) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
    app = ServerApp(config)
    if token_recheck_s is not None:
        app.auth.recheck_s = token_recheck_s
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
    except BaseException:
        await app.stop()
        raise
    await stop.wait()
    await app.stop()


def _check_before_processes(config: ServerConfig) -> None:
    """What every process of ``--processes`` would refuse alike, refused once before any starts."""
    check_port_sharing(replace(config, reuse_port=True))
    scan_repository(config.model_repository)  # a repository that is not there


def main(argv: list[str] | None = None) -> int:
    die_with_parent()  # a process of `sjff serve --processes N` goes when that command goes
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--token" or a.startswith("--token=") for a in argv):
        print(
            "sjff serve: error: tokens are never taken from the command line; use --token-file or --token-env",
            file=sys.stderr,
        )
        return 2
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    config = config_from_args(args)
    try:
        if args.processes > 1:  # a parent standing for N ordinary server processes
            return run_processes(argv, args, lambda: _check_before_processes(config))
        if args.cpus is not None:
            pin_process(args.cpus)
            log.info("pinned to CPUs", extra={"cpus": sorted(args.cpus)})
        qos = None
        if args.cpu_latency_us is not None:
            qos = hold_cpu_latency(args.cpu_latency_us)  # released when the process exits
            log.info("CPU wake-up latency held", extra={"max_us": args.cpu_latency_us})
        asyncio.run(serve(config, args.token_recheck_s))
        if qos is not None:
            qos.close()
    except (RuntimeError, ValueError, OSError) as exc:
        log.error("server failed", extra={"error": str(exc)})
        print(f"sjff serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
