"""CPU per call of the server's ModelInfer handler in process, under concurrency, no gRPC.

    python benchmarks/serve_handler.py [--concurrency 9 32] [--rounds 1000] [--reps 5] [--model M]
                                       [--evict-mb 0 16]

Each round starts ``concurrency`` calls at once on one event loop (the handler the server
registers, with its deserializer and serializer, on the benchmark's cached model with the
server's default batch window), so they batch as under load. Prints the process CPU time per
call (best and median of ``reps`` runs: the best is the least disturbed by other work on the
machine), the engine's own CPU per batch (the onnxruntime run, median run), the same batch
run again back to back (nothing between the runs: its warm cost) and the requests per batch.
``--evict-mb N`` writes over N MiB of memory between rounds (not counted), as the gRPC
transport and the load generator sharing the caches do under load: what the handler and its
engine cost when other work has gone through the caches since the last batch. The per-call Python cost that serve.py's
throughput ratio depends on, without the gRPC transport's run-to-run noise; to compare two
trees, run this file from each (``PYTHONPATH`` pointing at the other tree's ``server``,
repository root and ``clients/python``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve  # noqa: E402 - the benchmark's model and request

_BACK_TO_BACK = 200  # engine runs of one batch in a row, for its warm cost
_MAX_EVICT_MB = 4096  # far beyond any CPU cache; more only risks running out of memory


class _Context:
    """What the handler asks of a gRPC context: no deadline, no metadata."""

    def time_remaining(self) -> None:
        return None

    def invocation_metadata(self) -> tuple:
        return ()

    async def abort(self, code, details):  # pragma: no cover - the benchmark's requests are valid
        raise RuntimeError(f"{code}: {details}")


async def _measure(
    model: Path, payload: bytes, concurrency: int, rounds: int, evict_mb: int = 0
) -> tuple[float, float, float, float]:
    """(process CPU µs per call, engine CPU µs per batch, the same batch's engine CPU µs back
    to back, requests per batch)."""
    from serve_measure import in_process_service
    from sjff_client.pb import grpc_service_pb2 as pb
    from sjff_server.app import ServerConfig
    from sjff_server.protocol import registration

    with tempfile.TemporaryDirectory() as tmp:
        service, served, pool = in_process_service(model, Path(tmp), ServerConfig.batch_window_us / 1e6)
        try:
            # the handler as add_service registers it
            server = _Recorder()
            registration.add_service(server, service, pb, "GRPCInferenceService")
            handler = server.handlers["ModelInfer"]
            parse, serialize, call = handler.request_deserializer, handler.response_serializer, handler.unary_unary
            ctx = _Context()
            engine_run, batches, engine_cpu, last = served.engine.run, [0], [0.0], []

            def counted(*args):
                batches[0] += 1
                last[:] = args
                t = time.thread_time()  # the thread that runs the batch (inline: the loop's)
                try:
                    return engine_run(*args)
                finally:
                    engine_cpu[0] += time.thread_time() - t

            served.engine.run = counted  # one engine run per batch
            junk = np.zeros(evict_mb << 17)  # float64: 2**17 per MiB

            async def one() -> bytes:
                return serialize(await call(parse(payload), ctx))

            async def run(n: int) -> float:
                """Process CPU seconds of ``n`` rounds, the evictions between them left out."""
                cpu = 0.0
                for _ in range(n):
                    if junk.size:
                        _evict(junk)
                    t = time.process_time()
                    await asyncio.gather(*[one() for _ in range(concurrency)])
                    cpu += time.process_time() - t
                return cpu

            await run(50)
            before, engine_before = batches[0], engine_cpu[0]
            cpu = await run(rounds)
            t = time.thread_time()
            for _ in range(_BACK_TO_BACK):  # the last batch again, nothing in between
                engine_run(*last)
            warm = (time.thread_time() - t) / _BACK_TO_BACK
        finally:
            pool.close()
    calls, n_batches = rounds * concurrency, max(batches[0] - before, 1)
    return cpu / calls * 1e6, (engine_cpu[0] - engine_before) / n_batches * 1e6, warm * 1e6, calls / n_batches


def _evict(junk: np.ndarray) -> None:
    """Write over every element of ``junk`` (what other work leaves in the caches)."""
    np.add(junk, 1.0, out=junk)


class _Recorder:
    """Stands in for the grpc.aio server: keeps the handlers add_service registers."""

    def __init__(self) -> None:
        self.handlers: dict = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.handlers.update(handlers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="analog ONNX export (default: the cached benchmark model of serve.py)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[9, 32])
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--evict-mb", type=int, nargs="+", default=[0], help="MiB written over between rounds")
    args = ap.parse_args()
    if min(args.concurrency) < 1 or args.rounds < 1 or args.reps < 1:
        ap.error("--concurrency, --rounds and --reps must be positive")
    if not 0 <= min(args.evict_mb) <= max(args.evict_mb) <= _MAX_EVICT_MB:
        ap.error(f"--evict-mb must lie in [0, {_MAX_EVICT_MB}] (MiB written over between rounds)")
    model = serve.prepare_model(args.model)
    payload = serve.infer_payload(np.random.default_rng(0).integers(0, 255, (1, 784), dtype=np.uint8))
    print(f"model {model}; {args.rounds} rounds x {args.reps} runs per row")
    print(
        "| calls at once | MiB evicted per round | CPU per call, best | median | engine per batch "
        "| same batch back to back | requests/batch |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in args.concurrency:
        for mb in args.evict_mb:
            runs = [asyncio.run(_measure(model, payload, c, args.rounds, mb)) for _ in range(args.reps)]
            cpu = [r[0] for r in runs]
            engine, warm = statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs)
            best, median = min(cpu), statistics.median(cpu)
            times = f"{best:.1f} µs | {median:.1f} µs | {engine:.0f} µs | {warm:.0f} µs"
            print(f"| {c} | {mb} | {times} | {runs[0][3]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
