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
import signal
import sys
from pathlib import Path

from .app import ServerApp, ServerConfig
from .logs import setup_logging
from .options import LearnOptions
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


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="sjff serve", description="gRPC inference server with continual on-line learning")
    g = ap.add_argument_group("models")
    g.add_argument(
        "--model-repository",
        required=True,
        type=Path,
        metavar="DIR",
        help="REPO/<model>/<version>/model.onnx|model.nir",
    )
    g.add_argument(
        "--ort-threads",
        type=_int_in(1, 1024),
        default=1,
        help="onnxruntime intra-op threads per model (default 1: best for small batches)",
    )
    g.add_argument(
        "--batch-window-us",
        type=_int_in(0, 1_000_000),
        default=1000,
        help="under load, how long a request may wait for others to share its batch (0..1000000; default 1000; "
        "0: never)",
    )
    g.add_argument(
        "--workers", type=_int_in(1, 1024), default=1, help="threads running spiking-model batches (default 1)"
    )
    g.add_argument(
        "--skip-bad-models", action="store_true", help="serve the other models if one fails to load (default: exit)"
    )
    g = ap.add_argument_group("network")
    g.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")  # noqa: S104
    g.add_argument("--port", type=_port, default=8001, help="gRPC port (default 8001; 0: any free port)")
    g.add_argument(
        "--metrics-port", type=_port_or_off, default=8002, help="Prometheus HTTP port (default 8002; -1: off; 0: any)"
    )
    g.add_argument("--metrics-host", default="0.0.0.0", help="address of the metrics endpoint")  # noqa: S104
    g.add_argument(
        "--health-port",
        type=_port_or_off,
        default=None,
        help="extra plaintext port serving only grpc.health.v1 (for probes under TLS)",
    )
    g.add_argument("--ready-file", type=Path, help="write {port, metrics_port, ...} as JSON here once ready")
    g = ap.add_argument_group("security")
    g.add_argument(
        "--token-file", type=Path, help="file with the bearer token(s), one per line (re-read when it changes)"
    )
    g.add_argument(
        "--token-env", default="SJFF_TOKEN", help="environment variable holding the token (default SJFF_TOKEN)"
    )
    g.add_argument(
        "--token-recheck-s",
        type=_float_in(0.0, 3600.0),
        default=5.0,
        help="seconds between checks of the token file for changes (default 5; 0: at every call)",
    )
    g.add_argument("--protect-inference", action="store_true", help="inference needs the token too (default: open)")
    g.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM); enables TLS")
    g.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    g.add_argument(
        "--tls-client-ca", type=Path, help="CA bundle (PEM) to verify client certificates: enables mutual TLS"
    )
    g = ap.add_argument_group("limits")
    g.add_argument(
        "--max-message-bytes",
        type=_int_in(4096, _INT32_MAX),
        default=16 * 1024 * 1024,
        help="largest request/response (4096..2**31-1; default 16 MiB)",
    )
    g.add_argument(
        "--max-concurrent-rpcs",
        type=_int_in(0),
        default=1024,
        help="calls in progress before RESOURCE_EXHAUSTED (default 1024; 0: unlimited)",
    )
    g.add_argument(
        "--max-request-rows", type=_int_in(1), default=4096, help="images per inference request (default 4096)"
    )
    g.add_argument(
        "--max-learn-samples", type=_int_in(1), default=1024, help="samples per learning update (default 1024)"
    )
    g.add_argument(
        "--max-inflight-mb",
        type=_int_in(1),
        default=256,
        help="MiB the requests queued or running for one model may hold (decoded images + message) before "
        "RESOURCE_EXHAUSTED (default 256)",
    )
    g.add_argument(
        "--max-inline-mmacs",
        type=_int_in(0),
        default=16,
        help="largest analog batch run on the event loop, in million multiply-accumulates (images x the model's "
        "cost per image; default 16, about 0.5 ms; 0: none); larger batches run on the --workers threads",
    )
    g.add_argument(
        "--max-eta",
        type=_float_in(0.0, lo_open=True),
        default=1000.0,
        help="largest per-request learning rate (default 1000)",
    )
    g.add_argument(
        "--shutdown-grace", type=_float_in(0.0), default=10.0, help="seconds to drain calls on SIGTERM (default 10)"
    )
    g.add_argument(
        "--cpus",
        type=_cpu_list,
        metavar="LIST",
        help="run only on these CPUs, e.g. 1 or 0-3 (default: wherever the scheduler puts it)",
    )
    g.add_argument(
        "--cpu-latency-us",
        type=_int_in(0, _INT32_MAX),
        metavar="N",
        help="keep CPU wake-up latency <= N microseconds while serving (Linux PM QoS, /dev/cpu_dma_latency; "
        "0: idle CPUs poll instead of sleeping; costs power; default: the kernel's choice)",
    )
    g = ap.add_argument_group("learning")
    g.add_argument("--state-dir", type=Path, help="update logs and snapshots; enables on-line learning")
    g.add_argument(
        "--snapshot-every",
        type=_int_in(0),
        default=1000,
        help="snapshot after this many updates (default 1000; 0: never)",
    )
    g.add_argument(
        "--snapshot-interval",
        type=_float_in(0.0),
        default=60.0,
        help="snapshot every N seconds if changed (default 60; 0: never)",
    )
    g.add_argument(
        "--keep-snapshots",
        type=_int_in(1),
        default=10,
        help="snapshots kept per model (default 10); older log segments go too",
    )
    g.add_argument(
        "--max-group", type=_int_in(1), default=64, help="updates made durable by one fsync at most (default 64)"
    )
    g.add_argument(
        "--max-learn-queue", type=_int_in(1), default=4096, help="queued updates per model before RESOURCE_EXHAUSTED"
    )
    g.add_argument(
        "--segment-mb",
        type=_int_in(1, 1 << 20),
        default=64,
        help="start a new update-log segment past this many MiB (default 64; segments also end at snapshots)",
    )
    g.add_argument(
        "--digest-every",
        type=_int_in(0),
        default=100,
        help="log a sha256 of the weights every N versions, checked when the log is replayed (default 100; 0: never)",
    )
    g.add_argument(
        "--reset-changed-models", action="store_true", help="archive the learning state of an artefact that changed"
    )
    g = ap.add_argument_group("logging")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    g.add_argument("--log-format", default="json", choices=["json", "text"])
    return ap


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        model_repository=args.model_repository,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        health_port=args.health_port,
        state_dir=args.state_dir,
        token_file=args.token_file,
        token_env=args.token_env or None,
        protect_inference=args.protect_inference,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        max_message_bytes=args.max_message_bytes,
        max_concurrent_rpcs=args.max_concurrent_rpcs or None,
        max_request_rows=args.max_request_rows,
        max_learn_samples=args.max_learn_samples,
        max_inflight_mb=args.max_inflight_mb,
        max_inline_mmacs=args.max_inline_mmacs,
        max_eta=args.max_eta,
        ort_threads=args.ort_threads,
        batch_window_us=args.batch_window_us,
        workers=args.workers,
        learn=LearnOptions(
            max_group=args.max_group,
            snapshot_every=args.snapshot_every,
            snapshot_interval_s=args.snapshot_interval,
            keep_snapshots=args.keep_snapshots,
            max_queue=args.max_learn_queue,
            segment_bytes=args.segment_mb << 20,
            digest_every=args.digest_every,
            reset_changed=args.reset_changed_models,
        ),
        shutdown_grace_s=args.shutdown_grace,
        skip_bad_models=args.skip_bad_models,
        ready_file=args.ready_file,
        version=_version(),
    )


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


def main(argv: list[str] | None = None) -> int:
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
