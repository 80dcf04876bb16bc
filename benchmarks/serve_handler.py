"""CPU per call of the server's ModelInfer handler in process, under concurrency, no gRPC.

    python benchmarks/serve_handler.py [--concurrency 9 32] [--rounds 1000] [--reps 5] [--model M]

Each round starts ``concurrency`` calls at once on one event loop (the handler the server
registers, with its deserializer and serializer, on the benchmark's cached model with the
server's default batch window), so they batch as under load. Prints the process CPU time per
call (best and median of ``reps`` runs: the best is the least disturbed by other work on the
machine) and the requests per batch. The per-call Python cost that serve.py's throughput
ratio depends on, without the gRPC transport's run-to-run noise; to compare two trees, run
this file from each (``PYTHONPATH`` pointing at the other tree's ``server``, repository root
and ``clients/python``).
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


class _Context:
    """What the handler asks of a gRPC context: no deadline, no metadata."""

    def time_remaining(self) -> None:
        return None

    def invocation_metadata(self) -> tuple:
        return ()

    async def abort(self, code, details):  # pragma: no cover - the benchmark's requests are valid
        raise RuntimeError(f"{code}: {details}")


async def _measure(model: Path, payload: bytes, concurrency: int, rounds: int) -> tuple[float, float]:
    from serve_measure import in_process_service
    from sjff_client.pb import grpc_service_pb2 as pb
    from sjff_server.app import ServerConfig
    from sjff_server.protocol import registration

    with tempfile.TemporaryDirectory() as tmp:
        service, served, pool = in_process_service(model, Path(tmp), ServerConfig.batch_window_us / 1e6)
        # the handler as add_service registers it
        server = _Recorder()
        registration.add_service(server, service, pb, "GRPCInferenceService")
        handler = server.handlers["ModelInfer"]
        parse, serialize, call = handler.request_deserializer, handler.response_serializer, handler.unary_unary
        ctx = _Context()
        engine_run, batches = served.engine.run, [0]

        def counted(*args):
            batches[0] += 1
            return engine_run(*args)

        served.engine.run = counted  # one engine run per batch

        async def one() -> bytes:
            return serialize(await call(parse(payload), ctx))

        async def run(n: int) -> None:
            for _ in range(n):
                await asyncio.gather(*[one() for _ in range(concurrency)])

        await run(50)
        before = batches[0]
        t = time.process_time()
        await run(rounds)
        cpu = time.process_time() - t
        pool.close()
    return cpu / (rounds * concurrency) * 1e6, rounds * concurrency / max(batches[0] - before, 1)


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
    args = ap.parse_args()
    if min(args.concurrency) < 1 or args.rounds < 1 or args.reps < 1:
        ap.error("--concurrency, --rounds and --reps must be positive")
    model = serve.prepare_model(args.model)
    payload = serve.infer_payload(np.random.default_rng(0).integers(0, 255, (1, 784), dtype=np.uint8))
    print(f"model {model}; {args.rounds} rounds x {args.reps} runs per row")
    print("| calls at once | CPU per call, best | median | requests/batch |")
    print("| ---: | ---: | ---: | ---: |")
    for c in args.concurrency:
        runs = [asyncio.run(_measure(model, payload, c, args.rounds)) for _ in range(args.reps)]
        cpu = [r[0] for r in runs]
        print(f"| {c} | {min(cpu):.1f} µs | {statistics.median(cpu):.1f} µs | {runs[0][1]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
