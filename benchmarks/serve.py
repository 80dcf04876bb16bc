"""Benchmark of the gRPC server: latency, throughput, learning rate. Prints a table.

    python benchmarks/serve.py                       # everything (about 2 minutes on 2 cores)
    python benchmarks/serve.py --quick               # shorter runs
    python benchmarks/serve.py --model m.onnx --json out.json
    python benchmarks/serve.py --server-procs 2        # two read-only processes on one port
    python benchmarks/serve.py --server-procs 2 --pin-each   # sjff serve --processes 2

What it measures, all on loopback, in one run:

1. ModelInfer latency (one MNIST image, sequential calls from a client in its own process)
   p50/p99, beside the same client against the bare echo server and beside the in-process
   onnxruntime call on the same model: ``AnalogModel.run`` (the library API) and the server's
   own engine call (prepared weight feeds), so the gRPC overhead is
   ``p50(gRPC) - p50(in-process)``. Two clients: the C++ load generator
   (benchmarks/native/grpc_load.cc, one call in flight; the client's own cost is a few
   microseconds) and a Python blocking client (``grpc.insecure_channel``, what an edge device
   or tritonclient's sync API does). Server and echo alternate over ``--rounds`` rounds.
2. Throughput at 1, 8 and 32 concurrent clients, beside a bare ``grpc.aio`` echo server that
   returns the same ModelInferRequest bytes (same payload, same load generator, same run,
   interleaved rounds). The load generator (``--client``: the C++ one where g++ and the gRPC
   C++ library are installed, else Python grpc.aio processes) runs in its own process(es) and
   competes with the server for the same cores, as any client on this machine would; it sends
   pre-serialised requests without parsing responses, so it costs both servers the same.
3. Learning: acknowledged (fsync'ed) Learn updates per second at 1, 8 and 32 clients.

With ``--server-procs N`` above 1 the server is N read-only processes sharing the port
(``--reuse-port``), so there are no learning rows; the C++ load generator opens ``4 N``
connections (``--channels``), which the kernel places on the processes (the Python one opens
one per ``--client-procs`` process), and the JSON records the images each process answered.
``--pin-each`` puts each server process on a CPU of its own and leaves clients, echo and the
in-process reference where the scheduler puts them: N processes are then one ``sjff serve
--processes N`` (the command an operator runs; its own CPU time is counted with theirs), one
process is ``sjff serve --cpus`` on the last CPU. ``--pin`` instead keeps server, echo and
reference on the last CPU and the clients off it.

Reliability (malformed requests, concurrent learn + infer, kill -9, missing token) is not
measured here: tests/test_server_fuzz.py, tests/test_server_learning.py and
benchmarks/fuzz_server.py, benchmarks/recovery.py check it.

The model: ``--model`` (an analog ONNX export), else the paper's analog MNIST net (784 -> 200,
pattern embedding) trained for one epoch on 10,000 images and cached in
~/.cache/spikingjelly-ff/bench/. The client processes: benchmarks/serve_workers.py; the measurements:
benchmarks/serve_measure.py; the tables: benchmarks/serve_report.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import serve_measure as measure
import serve_workers as workers
from serve_report import print_table
from serve_workers import CACHE, NATIVE_CHANNELS, TOKEN, native_client

ROOT = Path(__file__).resolve().parents[1]


# -- setup ---------------------------------------------------------------------------------------


def sjff(*args: str) -> None:
    """Run the ``sjff`` command line in a subprocess (the installed entry point may be absent)."""
    cmd = [sys.executable, "-c", "import sys; from spikingjelly_ff.cli import main; sys.exit(main())", *args]
    subprocess.run(cmd, check=True, cwd=ROOT)


def dataset() -> tuple[str, str]:
    """(dataset for training, label) — full MNIST if it is at hand, else the shipped subset."""
    from spikingjelly_ff.runs.data import load_split

    try:
        load_split("mnist", "test")
        return "mnist", "MNIST"
    except Exception:  # noqa: BLE001 - not cached and no download here: use the subset
        return str(ROOT / "tests" / "data" / "mnist-mini"), "MNIST subset (tests/data/mnist-mini)"


def prepare_model(path: str | None) -> Path:
    """``path``, else the cached paper model (trained and exported on first use)."""
    if path:
        if not Path(path).is_file():
            raise SystemExit(f"--model {path}: no such file (an analog ONNX export, sjff export --format onnx)")
        return Path(path)
    data, _ = dataset()
    out = CACHE / f"analog-{'mnist' if data == 'mnist' else 'mini'}.onnx"
    if not out.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        run = CACHE / "analog-run"
        shutil.rmtree(run, ignore_errors=True)  # what an interrupted earlier call left
        print(f"training the benchmark model into {out} ...", flush=True)
        sets = [f"data.dataset={data}", "train.epochs=1", "train.limit=10000", "eval.limit=1000"]
        sjff("train", "paper/analog-symmetric", *[a for s in sets for a in ("--set", s)], "--out", str(run), "--quiet")
        sjff("export", str(run / "model"), "--format", "onnx", "--out", str(out))
        shutil.rmtree(run, ignore_errors=True)
    return out


def infer_payload(images: np.ndarray) -> bytes:
    """A serialised ModelInferRequest for model "mnist" of uint8 ``images`` [N, 784]."""
    from sjff_client.client import build_infer_request

    return build_infer_request(images.astype(np.float32) / np.float32(255.0), "mnist").SerializeToString()


def learn_payload(image: np.ndarray, label: int) -> bytes:
    """A serialised LearnRequest for model "mnist" of one uint8 ``image`` [784] and its label."""
    from sjff_client.client import build_learn_request

    return build_learn_request(
        image.astype(np.float32)[None] / np.float32(255.0), [label], model="mnist"
    ).SerializeToString()


@dataclass
class Workdir:
    """A model repository, token file and request payloads in a temporary directory."""

    root: Path
    token_file: Path
    infer: Path
    learn: Path

    @classmethod
    def create(cls, model_path: Path, images: np.ndarray, labels: np.ndarray) -> Workdir:
        root = Path(tempfile.mkdtemp(prefix="sjff-bench-"))
        repo = root / "repo" / "mnist" / "1"
        repo.mkdir(parents=True)
        shutil.copy(model_path, repo / "model.onnx")
        w = cls(root, root / "token", root / "infer.bin", root / "learn.bin")
        w.token_file.write_text(TOKEN + "\n")
        w.infer.write_bytes(infer_payload(images[:1]))
        w.learn.write_bytes(learn_payload(images[0], int(labels[0])))
        return w


def native_workdir(model: str | None) -> tuple[Path, Workdir]:
    """The C++ load generator and a :class:`Workdir` of ``model`` (else the cached paper
    model) with payloads from the test split, for benchmarks that need the C++ client
    (SystemExit where it cannot be built)."""
    exe, why = workers.native_client()
    if exe is None:
        raise SystemExit(f"the C++ load generator is needed: {why}")
    model_path = prepare_model(model)
    from spikingjelly_ff.runs.data import load_split

    data, _ = dataset()
    split = load_split(data, "test")
    return exe, Workdir.create(model_path, split.images[:500], split.labels[:500])


def pin_cpus(results: dict) -> tuple[set[int], set[int]]:
    """(server CPUs, all usable CPUs) for --pin: the last CPU for the server, echo and
    in-process reference, the others for every client process (started through taskset)."""
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        raise SystemExit("--pin needs at least 2 CPUs (one for the server, the rest for the clients)")
    if shutil.which("taskset") is None:
        raise SystemExit("--pin needs taskset (util-linux) to start the clients on their CPUs")
    server_cpus = {usable[-1]}
    workers.CLIENT_PREFIX[:] = ["taskset", "-c", ",".join(map(str, usable[:-1]))]
    results["pinned"] = {"server": sorted(server_cpus), "clients": usable[:-1]}
    return server_cpus, set(usable)


def choose_client(choice: str) -> Path | None:
    """The C++ load generator where it builds (an error if ``--client native`` and it does not)."""
    exe, why = native_client()
    if exe is None:
        print(f"native load generator unavailable ({why}); the Python clients measure everything", flush=True)
        if choice == "native":
            raise SystemExit(f"--client native: {why}")
    return exe


def check_predictions(target: str, model_path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Guard of what is about to be timed: the server predicts what the in-process model
    does on 64 images. Returns the server's accuracy on ``images``."""
    from sjff_client import Client

    from spikingjelly_ff.runtime import load_exported

    with Client(target) as c:
        ref = load_exported(model_path, threads=1).run(images[:64].astype(np.float32) / np.float32(255.0))
        got = c.infer(images[:64])
        assert np.array_equal(got.label, ref["label"]), "server and in-process predictions differ"
        return float((c.infer(images).label == labels).mean())


# -- the run -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="analog ONNX export (default: train/cached paper model)")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds per throughput point")
    ap.add_argument(
        "--rounds", type=int, default=2, help="interleaved rounds (echo, server) per point; the best is kept"
    )
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument(
        "--client",
        choices=("auto", "native", "python"),
        default="auto",
        help="throughput load generator: the C++ one (benchmarks/native/grpc_load.cc; auto: where it builds) "
        "or Python grpc.aio processes",
    )
    ap.add_argument("--client-procs", type=int, default=2, help="Python load generator processes (default 2)")
    ap.add_argument(
        "--channels",
        type=int,
        help="connections of the C++ load generator (default 2; with --server-procs N, 4 N: the kernel "
        "places each connection on one process)",
    )
    ap.add_argument("--latency-calls", type=int, default=3000)
    ap.add_argument("--learn-seconds", type=float, default=4.0, help="per learning point (0: no learning rows)")
    ap.add_argument("--quick", action="store_true", help="1 round, 2 s per point")
    ap.add_argument("--server-args", default="", help="extra sjff serve arguments (quoted)")
    ap.add_argument(
        "--server-procs",
        type=int,
        default=1,
        help="sjff serve processes sharing the port (--reuse-port); above 1 they serve read-only and the "
        "learning rows are left out",
    )
    ap.add_argument(
        "--pin",
        action="store_true",
        help="server, echo and the in-process reference on the last CPU (sjff serve --cpus), clients on the others",
    )
    ap.add_argument(
        "--pin-each",
        action="store_true",
        help="each server process on a CPU of its own (N processes: sjff serve --processes N; one: --cpus on the "
        "last CPU); clients, echo and the in-process reference unpinned",
    )
    ap.add_argument(
        "--cpu-latency-us",
        type=int,
        metavar="N",
        help="hold a CPU wake-up latency request of N µs for the whole run (sjff serve --cpu-latency-us; "
        "the request is system-wide, so echo and in-process rows run under it too)",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1 or args.server_procs < 1 or args.learn_seconds < 0:
        ap.error("--seconds must be > 0, --rounds and --server-procs >= 1, --learn-seconds >= 0")
    if args.pin and args.pin_each:
        ap.error("--pin and --pin-each are two different placements: choose one")
    if args.channels is None:
        args.channels = NATIVE_CHANNELS if args.server_procs == 1 else 4 * args.server_procs
    if args.channels < 1:
        ap.error("--channels must be >= 1")
    if args.quick:
        args.rounds, args.seconds, args.latency_calls = 1, 2.0, 1500
        args.learn_seconds = min(args.learn_seconds, 2.0)
    return args


class ServerGroup:
    """``n`` read-only ``sjff serve`` processes sharing one loopback port (``--reuse-port``),
    placed by the scheduler, used like one :class:`~sjff_server.harness.ServerProcess`:
    ``target``, ``pid`` (all of them, for CPU time) and ``members`` (for their metrics)."""

    def __init__(self, repo: Path, n: int, token_file: Path | None, extra: list[str]) -> None:
        from sjff_server.harness import ServerProcess, free_port

        port = free_port()
        args = [*extra, "--port", str(port), "--reuse-port"]
        self.members = [ServerProcess(repo, token_file=token_file, extra_args=args) for _ in range(n)]
        self.target = f"127.0.0.1:{port}"
        self._stack = contextlib.ExitStack()

    @property
    def pid(self) -> tuple[int, ...]:
        return tuple(m.pid for m in self.members)

    def __enter__(self) -> ServerGroup:
        with contextlib.ExitStack() as started:
            for m in self.members:
                started.enter_context(m)
            self._stack = started.pop_all()  # all up: each stopped on the way out, even if another fails to
        return self

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)


class Member(NamedTuple):
    """One process of a :class:`ProcessSet`, as :mod:`serve_measure` reads it."""

    pid: int
    metrics_url: str


class ProcessSet:
    """One ``sjff serve --processes n`` (the command an operator runs: ``n`` processes on one
    port, each on a CPU of its own), used like :class:`ServerGroup`: ``target``, ``pid`` (the
    command's and its processes', for CPU time), ``members`` (for their metrics) and ``cpus``."""

    def __init__(self, repo: Path, n: int, token_file: Path | None, extra: list[str]) -> None:
        from sjff_server.harness import ServerProcess, free_port

        port = free_port()
        args = [*extra, "--port", str(port), "--processes", str(n)]
        self.command = ServerProcess(repo, token_file=token_file, extra_args=args)
        self.target = f"127.0.0.1:{port}"
        self.members: list[Member] = []
        self.cpus: list[int] = []

    @property
    def pid(self) -> tuple[int, ...]:
        return (self.command.pid, *(m.pid for m in self.members))

    def __enter__(self) -> ProcessSet:
        info = self.command.start().info
        self.cpus = info["cpus"]
        self.members = [Member(p["pid"], f"http://127.0.0.1:{p['metrics_port']}/metrics") for p in info["processes"]]
        return self

    def __exit__(self, *exc) -> None:
        self.command.__exit__(*exc)


def measure_server(args, work: Workdir, model_path: Path, images, labels, server_cpus, exe, results: dict) -> None:
    """Start the server (or :class:`ServerGroup`) and the echo, then time latency, throughput
    and learning into ``results``."""
    from sjff_server.harness import ServerProcess

    extra = args.server_args.split()
    if args.cpu_latency_us is not None:
        extra += ["--cpu-latency-us", str(args.cpu_latency_us)]
    if server_cpus:
        extra += ["--cpus", ",".join(map(str, sorted(server_cpus)))]
    if args.pin_each and args.server_procs == 1:  # one process on the last CPU, as --pin places it
        cpu = max(os.sched_getaffinity(0))
        extra += ["--cpus", str(cpu)]
        results["pinned_each"] = [cpu]
    load = measure.LoadClient(exe if args.client != "python" else None, args.client_procs, args.channels)
    results["load_generator"] = load.name
    results["channels"] = args.channels if load.exe is not None else args.client_procs
    if load.exe is None and args.server_procs > 1 and args.client_procs < 2 * args.server_procs:
        print(
            f"note: the Python load generator opens one connection per process ({args.client_procs}); "
            f"the kernel places each on one of the {args.server_procs} servers (--client-procs sets more)",
            flush=True,
        )
    results["server_procs"] = args.server_procs
    if args.server_procs > 1:
        group = ProcessSet if args.pin_each else ServerGroup
        srv = group(work.root / "repo", args.server_procs, work.token_file, extra)
    else:
        srv = ServerProcess(
            work.root / "repo", state_dir=work.root / "state", token_file=work.token_file, extra_args=extra
        )
    with contextlib.ExitStack() as stack:
        stack.enter_context(srv)  # started here, stopped (SIGTERM, drained) on the way out
        if args.pin_each and args.server_procs > 1:
            results["pinned_each"] = srv.cpus  # where sjff serve --processes put them
        echo = workers.Echo(server_cpus)
        stack.callback(echo.close)
        results["accuracy_500"] = check_predictions(srv.target, model_path, images, labels)
        run0 = measure.model_run(measure.scrape(srv))
        results["latency"] = measure.latency(srv.target, echo.target, work.infer, exe, args.latency_calls, args.rounds)
        run1 = measure.model_run(measure.scrape(srv))
        if run0[1] and run1[1] > run0[1]:  # the model's own time per call inside the server, one call in flight
            results["model_run_in_server_ms"] = 1e3 * (run1[0] - run0[0]) / (run1[1] - run0[1])
        results["throughput"] = measure.throughput(
            srv, echo, work.infer, load, args.concurrency, args.seconds, args.rounds
        )
        learns = args.server_procs == 1 and args.learn_seconds > 0
        results["learning"] = measure.learning(srv, work.learn, load, args.learn_seconds, TOKEN) if learns else None
        results["batching"] = measure.batch_stats(measure.scrape(srv))
        if args.server_procs > 1:  # how the kernel spread the connections
            results["images_per_process"] = [measure.images_inferred(measure.scrape(m)) for m in srv.members]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from spikingjelly_ff.runs.data import load_split

    model_path = prepare_model(args.model)
    data, data_label = dataset()
    split = load_split(data, "test")
    images, labels = split.images[:500], split.labels[:500]
    results: dict = {"model": str(model_path), "load_before": os.getloadavg(), "cpus": os.cpu_count()}
    print(
        f"model {model_path} ({data_label}); {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", flush=True
    )
    work = Workdir.create(model_path, images, labels)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work.root, ignore_errors=True)
        if args.cpu_latency_us is not None:
            from sjff_server.tuning import hold_cpu_latency

            stack.enter_context(hold_cpu_latency(args.cpu_latency_us))
            results["cpu_latency_us"] = args.cpu_latency_us
        server_cpus, usable = pin_cpus(results) if args.pin else (None, None)
        if server_cpus:
            os.sched_setaffinity(0, server_cpus)  # the in-process reference runs where the server will
        x1 = images[:1].astype(np.float32) / np.float32(255.0)
        results["in_process"] = measure.in_process_latency(model_path, x1, args.latency_calls, work.infer.read_bytes())
        if usable:
            os.sched_setaffinity(0, usable)
        exe = choose_client(args.client)
        measure_server(args, work, model_path, images, labels, server_cpus, exe, results)
        results["load_after"] = os.getloadavg()
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
