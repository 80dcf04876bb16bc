"""Where a lone ModelInfer call's time goes inside the server: each step's wall time per call,
timed in the server's own process. Prints a table.

    python benchmarks/serve_steps.py [--calls 1500] [--rounds 3] [--model m.onnx]
                                     [--server-args="SJFF_SERVE_ARGS"]

Alternating rounds of one call in flight (the C++ load generator, serve.py's request: one
MNIST image) against the bare echo and against ``sjff serve`` whose handler steps are timed
with ``time.perf_counter_ns`` by wrappers that this file's ``serve`` mode installs in the
server's process (``python benchmarks/serve_steps.py serve OUT.json SJFF_SERVE_ARGS...``):

* the whole ModelInfer handler (``InferenceService.ModelInfer``, from the call's start on the
  event loop to its answer, the answer's encoding included);
* decoding the request (``decode_infer``), and of it the images' range check
  (``check_images``);
* the model's run (the engine's ``run``: onnxruntime for an analog export);
* the answer (``ModelMessages.infer_answer``);
* what else the handler does per call: the handler's time minus the three steps, call by call
  (authorisation, batching, metrics, the wrappers' own few hundred nanoseconds).

Beside them, from the client: the p50 of a call against the echo and against the server, and
the server's minus the echo's (what a lone call pays over the bare transport), medians over the
rounds. Percentiles are over every call of the timed rounds. Between a lone client's calls the
server's CPU sleeps, so each step runs on a cold core: compare a step with its back-to-back
time in process (``serve.py``'s engine call, ``benchmarks/lit_inputs.py``), or run with
``--server-args="--cpu-latency-us 0"``, which keeps idle CPUs polling while the server runs
(system-wide: the echo too).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve  # noqa: E402 - the benchmark's model and payload
import serve_workers as workers  # noqa: E402

#: (key, label) of each timed step, in the table's order
STEPS = (
    ("handler", "ModelInfer handler"),
    ("decode", "decode the request"),
    ("check", "of it, the images' range check"),
    ("model", "the model's run (engine)"),
    ("answer", "the answer"),
)
REST = "the rest of the handler"


# -- the timed server (this file's ``serve`` mode, in the server's own process) ------------------


def _timed(fn, samples: list[int]):
    """``fn`` (a plain function) that appends its wall time (ns) to ``samples``."""
    clock = time.perf_counter_ns

    def timed(*args, **kwargs):
        t0 = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            samples.append(clock() - t0)

    return timed


def install_timers() -> dict[str, list[int]]:
    """Wrap the handler's steps with timers; {step: wall times (ns), one per call, in order}."""
    from sjff_server.inference import engine
    from sjff_server.protocol import inference_service, messages, validation

    samples: dict[str, list[int]] = {key: [] for key, _ in STEPS}
    service = inference_service.InferenceService
    handler = service.ModelInfer
    clock = time.perf_counter_ns

    async def model_infer(self, request, context):
        t0 = clock()
        try:
            return await handler(self, request, context)
        finally:
            samples["handler"].append(clock() - t0)

    model_infer.accepts_malformed = handler.accepts_malformed
    service.ModelInfer = model_infer
    # module globals, looked up at call time by the code that calls them
    inference_service.decode_infer = _timed(inference_service.decode_infer, samples["decode"])
    validation.check_images = _timed(validation.check_images, samples["check"])
    messages.ModelMessages.infer_answer = _timed(messages.ModelMessages.infer_answer, samples["answer"])
    for cls in (engine.AnalogEngine, engine.SpikeEngine):
        cls.run = _timed(cls.run, samples["model"])
    return samples


def run_timed_server(out: str, args: list[str]) -> int:
    """``sjff serve ARGS`` with its handler's steps timed; the times go to ``out`` (JSON) when
    the server exits."""
    from sjff_server.main import main

    samples = install_timers()
    atexit.register(lambda: Path(out).write_text(json.dumps(samples)))
    return main(args)


def timed_server(repo: Path, out: Path, token_file: Path | None = None, extra: list[str] | None = None):
    """A :class:`~sjff_server.harness.ServerProcess` (not started) of the timed server, with
    ``extra`` sjff serve arguments."""
    from sjff_server.harness import ServerProcess

    class Timed(ServerProcess):
        def command(self) -> list[str]:
            cmd = super().command()
            return [cmd[0], __file__, "serve", str(out), *cmd[3:]]  # in place of "-m sjff_server"

    return Timed(repo, token_file=token_file, extra_args=extra)


# -- the measurement ------------------------------------------------------------------------------


def timed_calls(first: int, rounds: int, warm_up: int, calls: int) -> list[range]:
    """Where the timed calls sit among the server's calls, in order: after ``first`` warm-up
    calls, ``rounds`` runs of the load generator that each send ``warm_up`` calls of their own
    before the ``calls`` it times."""
    return [range(first + r * (warm_up + calls) + warm_up, first + (r + 1) * (warm_up + calls)) for r in range(rounds)]


def summarise(samples: dict[str, list[int]], keep: list[range]) -> dict[str, tuple[float, float, float]]:
    """{step label: (p10, p50, p90) µs} over the calls at the indices ``keep`` (one of each
    step per call: one call in flight); the rest of the handler is its time minus the steps',
    call by call. ValueError when the calls did not run each step once."""
    calls = len(samples["handler"])
    if any(len(samples[k]) != calls for k in ("decode", "check", "model", "answer")):
        raise ValueError("each call should run each step once (one call in flight)")
    kept = {key: [samples[key][i] / 1e3 for r in keep for i in r] for key, _ in STEPS}
    if not kept["handler"]:
        raise ValueError("no timed call")
    kept["rest"] = [h - d - m - a for h, d, m, a in zip(kept["handler"], kept["decode"], kept["model"], kept["answer"])]
    labels = dict(STEPS, rest=REST)
    out = {}
    for key, values in kept.items():
        q = statistics.quantiles(values, n=10, method="inclusive")
        out[labels[key]] = (q[0], statistics.median(values), q[-1])
    return out


def report(steps: dict[str, tuple[float, float, float]], client: dict[str, list[float]], calls: int) -> str:
    echo, server = (statistics.median(client[k]) for k in ("echo", "server"))
    gaps = [1e3 * (s - e) for s, e in zip(client["server"], client["echo"])]
    lines = [
        f"{calls} timed lone calls; client p50 (median over {len(gaps)} rounds): echo {echo:.3f} ms, "
        f"server {server:.3f} ms, server − echo {statistics.median(gaps):.0f} µs "
        f"[{min(gaps):.0f}, {max(gaps):.0f}]",
        "",
        "| step, inside the server | p10 µs | p50 µs | p90 µs |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, (p10, p50, p90) in steps.items():
        lines.append(f"| {label} | {p10:.1f} | {p50:.1f} | {p90:.1f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=1500, help="calls per round and server")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", help="analog ONNX export (default: serve.py's cached model)")
    p.add_argument(
        "--server-args",
        default="",
        metavar="ARGS",
        help='more sjff serve arguments for the timed server (--server-args="--cpu-latency-us 0")',
    )
    args = p.parse_args(argv)
    if args.calls < 1 or args.rounds < 1:
        p.error("--calls and --rounds must be positive")
    try:
        args.server_args = shlex.split(args.server_args)
    except ValueError as exc:
        p.error(f"--server-args: {exc}")
    return args


def measure(args: argparse.Namespace) -> str:
    exe, work = serve.native_workdir(args.model)
    out = Path(tempfile.mkdtemp(prefix="sjff-steps-")) / "steps.json"
    warm = 300
    client: dict[str, list[float]] = {"echo": [], "server": []}
    try:
        with contextlib.ExitStack() as stack:
            echo = workers.Echo()
            stack.callback(echo.close)
            try:
                srv = stack.enter_context(timed_server(work.root / "repo", out, work.token_file, args.server_args))
            except RuntimeError as exc:  # the server's own refusal, e.g. an unknown option
                raise SystemExit(f"the timed server did not start: {exc}") from None
            targets = [("echo", echo.target, workers.ECHO), ("server", srv.target, workers.INFER)]
            for _, target, method in targets:  # warm up: connections, caches, the first batches
                workers.run_native(exe, target, method, work.infer, 1, count=warm)
            for r in range(args.rounds):
                for name, target, method in targets[:: -1 if r % 2 else 1]:  # either first, in turn
                    run = workers.run_native(exe, target, method, work.infer, 1, count=args.calls)
                    client[name].append(run["p50_ms"])
        # the server has exited (SIGTERM, graceful) and written its times
        samples = json.loads(out.read_text())
        # one connection at one call in flight: each run of the generator warms it up first
        warm_up = workers.NATIVE_WARM_UP_CALLS
        keep = timed_calls(warm + warm_up, args.rounds, warm_up, args.calls)
        if len(samples["handler"]) != keep[-1].stop:
            raise SystemExit(f"the server timed {len(samples['handler'])} calls, {keep[-1].stop} were sent")
        return report(summarise(samples, keep), client, sum(map(len, keep)))
    finally:
        shutil.rmtree(work.root, ignore_errors=True)
        shutil.rmtree(out.parent, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        if len(argv) < 2:
            raise SystemExit("serve mode: expected the output file, then sjff serve's arguments")
        return run_timed_server(argv[1], argv[2:])
    print(measure(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
