"""How much of serve.py's gap to the bare echo any asyncio gRPC handler pays, and how much
is the server's own work. Prints a table.

    python benchmarks/serve_floor.py [--clients 32] [--seconds 3] [--rounds 6] [--pin]
                                     [--model-split] [--compare="SJFF_SERVE_ARGS"]...

Alternating rounds of the C++ load generator (serve.py's load: one MNIST image per ModelInfer
call) against six servers (eight with ``--model-split``), and one more per ``--compare``, all
started before the first round:

* ``echo``: the bare grpc.aio echo, serve.py's reference;
* ``sjff serve, echo``: ``sjff serve`` whose ModelInfer returns the request bytes unparsed
  (what our process, its options, threads and other services cost a call);
* ``sjff serve, echo after a turn``: the same, answered one event-loop turn later through a
  future, as a batched call waits for its batch (what a handler that suspends costs);
* ``sjff serve, parses``: ModelInfer parses the request (as the shipped handler receives it)
  and answers an empty response naming the model and the request's id (what parsing costs);
* ``sjff serve, no model run``: the shipped server whose analog engine answers every batch
  with the outputs it computed for the first batch of that size (what the handler costs
  without the model);
* ``sjff serve``: the server as shipped;
* with ``--model-split``, two more, each the no-model server plus part of a model's run:
  ``blank`` runs the model on a blank image (zeros: onnxruntime's whole path, but no lit input
  and so almost none of the weight rows), ``one-node`` a one-node onnxruntime graph (Identity
  over the images: the binding's fixed cost);
* with ``--compare=ARGS`` (repeatable): the shipped server started with ``ARGS`` as well
  (``--compare="--batch-window-us 4000"``; the ``=`` lets a lone flag such as
  ``--compare=--reuse-port`` through), to weigh an option in the same rounds.

Per server: the median over rounds of its rate as a share of the echo's rate in the same
round, of its CPU per call (all threads) over the echo's, and of its event-loop thread's CPU
per call. With ``--clients 1`` a call's time is the inverse of the rate, so the table also
gives the median time per call more than the echo's (µs): the steps from the echo to the
shipped server split a lone client's latency. The variants replace only the ModelInfer
handler (``no-model``: only the analog engine's run), in this file's ``serve`` mode:
``python benchmarks/serve_floor.py serve VARIANT SJFF_SERVE_ARGS...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve  # noqa: E402 - the benchmark's model and payload
import serve_workers as workers  # noqa: E402
from serve_profile import thread_cpu  # noqa: E402 - per-thread CPU from /proc

VARIANTS = {
    "echo": "sjff serve, echo",
    "echo-turn": "sjff serve, echo after a turn",
    "parse": "sjff serve, parses",
    "no-model": "sjff serve, no model run",
    "server": "sjff serve",
}
#: with ``--model-split``: what of the model's run a call pays, its fixed path or its data
MODEL_SPLIT = {
    "blank": "sjff serve, no model run, the model on a blank image",
    "one-node": "sjff serve, no model run, a one-node onnxruntime graph",
}
ALL_VARIANTS = {**VARIANTS, **MODEL_SPLIT}  # what this file's serve mode runs


# -- the server variants (this file's ``serve`` mode, in the server's own process) ---------------


def _echo_handler(after_turn: bool):
    async def echo(request: bytes, context) -> bytes:
        return request

    async def echo_after_turn(request: bytes, context) -> bytes:
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        loop.call_soon(answer.set_result, request)
        return await answer

    return echo_after_turn if after_turn else echo


def _parsing_handler():
    """ModelInfer parsing its request, answering an empty response (the model's name, the id)."""
    import grpc
    from sjff_client.pb import grpc_service_pb2 as pb

    async def parse(request: pb.ModelInferRequest, context) -> bytes:
        return pb.ModelInferResponse(model_name=request.model_name, id=request.id).SerializeToString()

    return grpc.unary_unary_rpc_method_handler(parse, request_deserializer=pb.ModelInferRequest.FromString)


def _reuse_model_outputs(also: str = "") -> None:
    """Every analog batch is answered with the outputs of the first batch of its size (a new
    dict each time, so the answer is encoded as for a new batch): no model run. ``also``:
    "blank" runs the model on zeros of the batch's shape (onnxruntime's path without the lit
    inputs' weight rows), "one-node" a one-node onnxruntime graph (Identity) on the batch."""
    import numpy as np
    from sjff_server.inference.engine import AnalogEngine

    shipped = AnalogEngine.run
    first: dict[int, dict] = {}
    extra = None
    if also == "blank":

        def extra(self, pub, x, opts):
            shipped(self, pub, np.zeros_like(x), opts)

    elif also == "one-node":
        import onnxruntime as ort
        from onnx import TensorProto, helper

        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", "D"]) for n in ("x", "y")]
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "one-node", io[:1], io[1:])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # as the server's sessions (--ort-threads 1)
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        binding = getattr(session, "_sess", session)  # called as AnalogGraph.run calls the model's

        def extra(self, pub, x, opts):
            binding.run(["y"], {"x": x}, None)

    def run(self, pub, x, opts):
        outs = first.get(len(x))
        if outs is None:
            outs = first[len(x)] = shipped(self, pub, x, opts)
        if extra is not None:
            extra(self, pub, x, opts)
        return dict(outs)

    AnalogEngine.run = run


def run_variant(variant: str, args: list[str]) -> int:
    """``sjff serve ARGS`` with ModelInfer answered as ``variant`` says (ALL_VARIANTS)."""
    from sjff_server import app  # first: the server imports grpc under its settings (tuning)
    from sjff_server.main import main

    if variant == "no-model" or variant in MODEL_SPLIT:
        _reuse_model_outputs("" if variant == "no-model" else variant)
    elif variant != "server":
        shipped = app.add_service
        if variant == "parse":
            handler = _parsing_handler()
        else:
            import grpc

            handler = grpc.unary_unary_rpc_method_handler(_echo_handler(variant == "echo-turn"))

        def add_service(server, servicer, module, service, **kw):
            name = shipped(server, servicer, module, service, **kw)
            if service == "GRPCInferenceService":  # replaces the registered ModelInfer handler
                server.add_registered_method_handlers(name, {"ModelInfer": handler})
            return name

        app.add_service = add_service
    return main(args)


def variant_server(variant: str, repo: Path, token_file: Path | None = None, extra: list[str] | None = None):
    """A :class:`~sjff_server.harness.ServerProcess` (not started) of ``variant`` on ``repo``."""
    from sjff_server.harness import ServerProcess

    class Variant(ServerProcess):
        def command(self) -> list[str]:
            cmd = super().command()
            return [cmd[0], __file__, "serve", variant, *cmd[3:]]  # in place of "-m sjff_server"

    return Variant(repo, token_file=token_file, extra_args=extra)


# -- the measurement ------------------------------------------------------------------------------


def main_thread_seconds(pid: int) -> float:
    """CPU seconds (user + system) of ``pid``'s main thread, which runs the event loop."""
    return next(sum(t) for (tid, _), t in thread_cpu(pid).items() if tid == pid)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=32, help="calls in flight")
    p.add_argument("--seconds", type=float, default=3.0, help="per server and round")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--model", help="analog ONNX export (default: serve.py's cached model)")
    p.add_argument("--pin", action="store_true", help="servers on the last CPU, the load generator on the others")
    p.add_argument(
        "--model-split",
        action="store_true",
        help="two more no-model servers: one that runs the model on a blank image, one a one-node onnxruntime graph",
    )
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="ARGS",
        help='one more shipped server, started with these sjff serve arguments (--compare="ARGS"; repeatable)',
    )
    args = p.parse_args(argv)
    if args.clients < 1 or not 0 < args.seconds < float("inf") or args.rounds < 1:  # NaN fails too
        p.error("--clients, --seconds and --rounds must be positive, --seconds finite")
    try:  # one spelling per set of arguments: it names the server in the table
        args.compare = [shlex.join(shlex.split(more)) for more in args.compare]
    except ValueError as exc:
        p.error(f"--compare: {exc}")
    if not all(args.compare) or len(set(args.compare)) < len(args.compare):
        p.error("each --compare needs sjff serve arguments, and no two the same")
    return args


def measure(args: argparse.Namespace) -> dict[str, list[tuple[float, float, float]]]:
    """{server: [(calls/s, CPU µs per call, event-loop CPU µs per call) per round]}."""
    exe, work = serve.native_workdir(args.model)
    server_cpus: set[int] | None = None
    extra: list[str] = []
    if args.pin:  # serve.py's split: the last CPU for the servers, the others for the clients
        server_cpus, _ = serve.pin_cpus({})
        extra = ["--cpus", ",".join(map(str, sorted(server_cpus)))]
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work.root, ignore_errors=True)
        echo = workers.Echo(server_cpus)
        stack.callback(echo.close)
        targets = {"echo": (echo.target, workers.ECHO, echo.proc.pid)}
        for variant, label in (ALL_VARIANTS if args.model_split else VARIANTS).items():
            srv = stack.enter_context(variant_server(variant, work.root / "repo", work.token_file, extra))
            targets[label] = (srv.target, workers.INFER, srv.pid)
        for more in args.compare:
            args_more = extra + shlex.split(more)
            try:
                srv = stack.enter_context(variant_server("server", work.root / "repo", work.token_file, args_more))
            except RuntimeError as exc:  # the server's own refusal, e.g. an unknown option
                raise SystemExit(f"--compare={more}: {exc}") from None
            targets[f"{VARIANTS['server']} {more}"] = (srv.target, workers.INFER, srv.pid)
        for target, method, pid in targets.values():  # warm up: connections, caches, the first batches
            workers.run_native(exe, target, method, work.infer, args.clients, seconds=1, pid=pid)
        rounds: dict[str, list[tuple[float, float, float]]] = {k: [] for k in targets}
        for _ in range(args.rounds):
            for name, (target, method, pid) in targets.items():
                loop0 = main_thread_seconds(pid)
                out = workers.run_native(exe, target, method, work.infer, args.clients, seconds=args.seconds, pid=pid)
                calls = out["rate"] * args.seconds
                loop_us = (main_thread_seconds(pid) - loop0) * 1e6 / calls
                rounds[name].append((out["rate"], out["server_cpu_us"], loop_us))
    return rounds


def report(rounds: dict[str, list[tuple[float, float, float]]], args: argparse.Namespace) -> str:
    echo = rounds["echo"]
    lines = [
        f"{args.clients} clients, {args.rounds} rounds of {args.seconds:g} s per server"
        + (", servers pinned to one CPU" if args.pin else ""),
        "",
    ]
    lone = args.clients == 1  # one call in flight: a call takes 1 / rate
    head = "| server | rate / echo's, median [min, max] | CPU per call / echo's | event-loop CPU per call |"
    lines += [head + (" time per call over the echo's |" if lone else ""), "| --- |" + " ---: |" * (4 if lone else 3)]
    for name, runs in rounds.items():
        share = [100 * r[0] / e[0] for r, e in zip(runs, echo)]
        cpu = [r[1] / e[1] for r, e in zip(runs, echo)]
        loop = statistics.median(r[2] for r in runs)
        row = (
            f"| {name} | {statistics.median(share):.0f} % [{min(share):.0f}, {max(share):.0f}] "
            f"| {statistics.median(cpu):.2f}× | {loop:.0f} µs |"
        )
        if lone:
            row += f" {statistics.median(1e6 / r[0] - 1e6 / e[0] for r, e in zip(runs, echo)):.0f} µs |"
        lines.append(row)
    rates = [r[0] for r in echo]
    lines.append(f"\necho: {min(rates):,.0f}–{max(rates):,.0f} calls/s over the rounds")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        if len(argv) < 2 or argv[1] not in ALL_VARIANTS:
            raise SystemExit(f"serve mode: expected one of {', '.join(ALL_VARIANTS)}")
        return run_variant(argv[1], argv[2:])
    args = parse_args(argv)
    print(report(measure(args), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
