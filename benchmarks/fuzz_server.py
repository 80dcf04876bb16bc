"""Fuzz a real server with hostile requests from concurrent clients, then check it. Prints a table.

    python benchmarks/fuzz_server.py --count 10000 --concurrency 16
    python benchmarks/fuzz_server.py --only 17,4242 --seed 1     # replay single calls (reproduction)

The server (started here, on loopback) serves four models: ``mnist`` (analog) and ``snn``
(spiking) learn, ``frozen`` and ``snn-frozen`` are the same artefacts with learning off. The
calls (benchmarks/fuzz_calls.py) run from ``--concurrency`` threads, each with its own channel
and a deadline on every call. Checks, after the run:

* every answer is a proper status: no UNKNOWN, no INTERNAL (in-band stream errors included),
  no deadline exceeded (a hang), no bad token accepted, complete streams answer every message;
* the server is alive and ready; the frozen models answer a fixed batch (8 MNIST test images,
  explicit seed for the spiking one) bit-identically before and after;
* each learning model's version after = before + the Learn calls answered OK (unary and
  in streams; the retries of one request id, concurrent or later, count once: the server
  applies an id once) + the Rollbacks answered OK, ListVersions' history agrees, inference reports
  that version, and a rollback to the version before the run gives the answers from before;
* the server log holds no traceback and no ERROR record.

Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from sjff_client.client import build_infer_request, parse_infer_response
from sjff_client.pb import grpc_service_pb2 as pb
from sjff_client.pb import grpc_service_pb2_grpc as pb_grpc
from sjff_client.pb import learning_pb2 as lpb
from sjff_client.pb import learning_pb2_grpc as lpb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz_calls as fc  # noqa: E402
import fuzz_requests as fr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "fuzz-token-0123456789abcdef"
PROBE_SEED = 1234
MAX_MESSAGE_BYTES = 1 << 20
SERVER_ARGS = [
    *("--max-message-bytes", str(MAX_MESSAGE_BYTES), "--max-request-rows", "64", "--max-learn-samples", "64"),
    *("--max-eta", "1.0", "--protect-inference", "--snapshot-every", "250", "--keep-snapshots", "100000"),
]
_CODES = {c.value[0]: c.name for c in grpc.StatusCode}
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 64 << 20)]


def make_repository(root: Path, analog: Path, spike: Path) -> Path:
    """``root/<model>/1/model.*`` for the four fuzzed models (learning off for the frozen ones)."""
    for name, src, learning in [
        ("mnist", analog, 1),
        ("snn", spike, 1),
        ("frozen", analog, 0),
        ("snn-frozen", spike, 0),
    ]:
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / name / "1" / ("model.onnx" if src.suffix == ".onnx" else "model.nir"))
        if not learning:
            (root / name / "config.json").write_text(json.dumps({"learning": False}))
    return root


# -- executing calls --------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """What one call got: the call's status, in-band statuses of stream answers, the updates
    answered OK (model -> count; those with a request id as ``(model, id)``, applied once
    however often they were answered) and what is wrong with it (empty if nothing)."""

    code: str = "OK"
    items: list[str] = dataclasses.field(default_factory=list)
    learned: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    learned_ids: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    rolled: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    problems: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def _stream_item(method: str, data: bytes, out: Outcome) -> None:
    if method == fr.LEARN_STREAM:
        r = lpb.LearnResponse.FromString(data)
        code = _CODES.get(r.error_code, str(r.error_code))
        if r.error_code == 0:
            out.learned[r.model_name] += 1
        detail = r.error_message
    else:
        r = pb.ModelStreamInferResponse.FromString(data)
        code, _, detail = r.error_message.partition(": ") if r.error_message else ("OK", "", "")
    out.items.append(code)
    if code in ("INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED"):
        out.problems.append(("status" if code != "DEADLINE_EXCEEDED" else "deadline", f"in-band {code}: {detail}"))


def execute(call: fc.Call, channel: grpc.Channel, target: str, deadline_s: float) -> Outcome:
    """Make ``call`` on ``channel`` (an abandoned stream that closes its channel gets its own)."""
    out = Outcome()
    own = None
    try:
        if isinstance(call.payload, bytes):
            resp = channel.unary_unary(call.method)(call.payload, timeout=deadline_s, metadata=call.metadata)
            if call.method == fr.LEARN:
                model = lpb.LearnResponse.FromString(resp).model_name
                rid = lpb.LearnRequest.FromString(call.payload).request_id  # the server parsed it too
                if rid:
                    out.learned_ids.add((model, rid))
                else:
                    out.learned[model] += 1
            elif call.method == fr.ROLLBACK:
                out.rolled[lpb.RollbackRequest.FromString(call.payload).model_name] += 1
        elif not call.abandon:
            for data in channel.stream_stream(call.method)(
                iter(call.payload), timeout=deadline_s, metadata=call.metadata
            ):
                _stream_item(call.method, data, out)
            if len(out.items) != len(call.payload):
                out.problems.append(("stream", f"{len(out.items)} answers to {len(call.payload)} messages"))
        else:
            if call.abandon == "close":
                channel = own = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
            leave = threading.Event()

            def messages():
                yield from call.payload
                leave.wait(deadline_s)  # half-open: the client never ends its side

            rpc = channel.stream_stream(call.method)(messages(), timeout=deadline_s, metadata=call.metadata)
            try:
                answers = iter(rpc)
                for _ in range(call.read):
                    _stream_item(call.method, next(answers), out)
            finally:
                if own is not None:
                    own.close()
                    own = None
                else:
                    rpc.cancel()
                leave.set()
            out.code = "CANCELLED"  # we left
    except grpc.RpcError as exc:
        out.code = exc.code().name
        if out.code in ("INTERNAL", "UNKNOWN"):
            out.problems.append(("status", f"{out.code}: {exc.details()}"))
        elif out.code == "DEADLINE_EXCEEDED":
            out.problems.append(("deadline", f"no answer within {deadline_s} s"))
    except Exception as exc:  # noqa: BLE001 - a client-side failure is a finding too
        out.code = "CLIENT_ERROR"
        out.problems.append(("client", f"{type(exc).__name__}: {exc}"))
    finally:
        if own is not None:
            own.close()
    if call.sure_bad and (out.code == "OK" or "OK" in out.items):
        out.problems.append(("token", f"a call with bad metadata {str(call.metadata)[:80]} was accepted"))
    return out


def run(
    target: str,
    ctx: fr.Context,
    *,
    count: int,
    concurrency: int = 16,
    seed: int = 0,
    deadline_s: float = 30.0,
    only: list[int] | None = None,
) -> dict:
    """``count`` calls (``make_call(seed, i)``, or just the indices in ``only``) from
    ``concurrency`` threads with a channel each. Returns status counts per kind, the updates
    answered OK per model, and the problems (each with the call's index, to replay it)."""
    indices = list(only) if only is not None else list(range(count))
    todo, lock = iter(indices), threading.Lock()
    codes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    items: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    learned, rolled = collections.Counter(), collections.Counter()
    learned_ids: set[tuple[str, str]] = set()
    problems: list[dict] = []

    def worker() -> None:
        with grpc.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                try:
                    call = fc.make_call(seed, i, ctx)
                except Exception as exc:  # noqa: BLE001 - a generator bug must not end the worker
                    call, out = fc.Call("generator", "", b""), Outcome("CLIENT_ERROR")
                    out.problems.append(("client", f"making the call: {type(exc).__name__}: {exc}"))
                else:
                    out = execute(call, channel, target, deadline_s)
                with lock:
                    codes[call.kind][out.code] += 1
                    items[call.kind].update(out.items)
                    learned.update(out.learned)
                    learned_ids.update(out.learned_ids)
                    rolled.update(out.rolled)
                    for check, detail in out.problems:
                        problems.append(
                            {
                                "index": i,
                                "kind": call.kind,
                                "method": call.method,
                                "check": check,
                                "detail": detail[:300],
                            }
                        )

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, name=f"fuzz-{w}") for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    retried = collections.Counter(model for model, _ in learned_ids)
    learned.update(retried)  # a request id answered OK any number of times was applied once
    return {
        "calls": sum(sum(c.values()) for c in codes.values()),
        "asked": len(indices),
        "seed": seed,
        "concurrency": concurrency,
        "wall_s": time.perf_counter() - t0,
        "codes": {k: dict(v) for k, v in sorted(codes.items())},
        "items": {k: dict(v) for k, v in sorted(items.items())},
        "learned": dict(learned),
        "learned_once": dict(retried),
        "rolled": dict(rolled),
        "problems": sorted(problems, key=lambda p: p["index"]),
    }


# -- checks -----------------------------------------------------------------------------------


class Admin:
    """The calls the checks make, every one with the token and a deadline."""

    def __init__(self, target: str, token: str, timeout: float = 60.0) -> None:
        self.channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self.kw = {"timeout": timeout, "metadata": (("authorization", f"Bearer {token}"),)}
        self.inference = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.learning = lpb_grpc.LearningStub(self.channel)

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc) -> None:
        self.channel.close()

    def infer(self, images: np.ndarray, model: str):
        params = {"seed": PROBE_SEED} if model.startswith("snn") else None
        req = build_infer_request(images, model, parameters=params)
        return parse_infer_response(self.inference.ModelInfer(req, **self.kw))

    def ready(self) -> bool:
        live = self.inference.ServerLive(pb.ServerLiveRequest(), **self.kw).live
        return live and self.inference.ServerReady(pb.ServerReadyRequest(), **self.kw).ready

    def list_versions(self, model: str) -> lpb.ListVersionsResponse:
        return self.learning.ListVersions(lpb.ListVersionsRequest(model_name=model, limit=10000), **self.kw)

    def rollback(self, model: str, version: int) -> lpb.RollbackResponse:
        return self.learning.Rollback(lpb.RollbackRequest(model_name=model, version=version), **self.kw)

    def snapshot(self, model: str) -> lpb.SnapshotResponse:
        return self.learning.Snapshot(lpb.SnapshotRequest(model_name=model), **self.kw)


def probe(target: str, token: str, images: np.ndarray) -> dict:
    """Answers of every model to ``images`` (raw output bytes and the learning version; an
    explicit seed for spiking models) and the learning models' ListVersions."""
    out: dict = {"answers": {}, "versions": {}}
    with Admin(target, token) as c:
        for m in fr.LEARNING + fr.FROZEN:
            r = c.infer(images, m)
            out["answers"][m] = ({k: v.tobytes() for k, v in r.outputs.items()}, r.version)
        for m in fr.LEARNING:
            out["versions"][m] = c.list_versions(m)
    return out


def _history_check(before: lpb.ListVersionsResponse, after: lpb.ListVersionsResponse, learned: int, rolled: int):
    new = [e for e in after.history if e.version > before.current_version]
    kinds = collections.Counter(e.kind for e in new)
    expect = list(range(before.current_version + 1, after.current_version + 1))
    ok = [e.version for e in new] == expect and kinds["update"] == learned and kinds["rollback"] == rolled
    ok &= all(e.samples > 0 for e in new if e.kind == "update")
    return ok, f"{len(new)} new events ({dict(kinds)}), versions {expect[:1]}..{expect[-1:]}"


def verify(srv, token: str, images: np.ndarray, before: dict, result: dict) -> list[tuple[str, bool, str]]:
    """The checks after a run (see the module docstring): ``(name, passed, detail)``."""
    checks = []
    by_check = collections.defaultdict(list)
    for p in result["problems"]:
        by_check[p["check"]].append(p)

    def add(name: str, ok: bool, detail: str) -> None:
        checks.append((name, bool(ok), detail))

    def problems(check: str) -> str:
        ps = by_check[check]
        return "none" if not ps else f"{len(ps)}, first: #{ps[0]['index']} {ps[0]['kind']}: {ps[0]['detail'][:160]}"

    add("no UNKNOWN / INTERNAL status", not by_check["status"], problems("status"))
    add("no call hit its deadline", not by_check["deadline"], problems("deadline"))
    add("no bad token accepted", not by_check["token"], problems("token"))
    add("complete streams answer every message", not by_check["stream"], problems("stream"))
    add("no client-side failure", not by_check["client"], problems("client"))
    alive = srv.alive()
    ready = False
    if alive:
        with Admin(srv.target, token, 30) as c:
            ready = c.ready()
    add("server alive and ready", alive and ready, f"alive={alive} ready={ready}")
    if not alive:
        return checks
    after = probe(srv.target, token, images)
    for m in fr.FROZEN:
        add(f"{m}: same answers before/after", before["answers"][m] == after["answers"][m], "bit-identical bytes")
    with Admin(srv.target, token) as c:
        for m in fr.LEARNING:
            b, a = before["versions"][m], after["versions"][m]
            n_learn, n_roll = result["learned"].get(m, 0), result["rolled"].get(m, 0)
            want = b.current_version + n_learn + n_roll
            add(
                f"{m}: version after = before + OK learns + OK rollbacks",
                a.current_version == want,
                f"{a.current_version} = {b.current_version} + {n_learn} + {n_roll}? (want {want})",
            )
            add(f"{m}: ListVersions history agrees", *_history_check(b, a, n_learn, n_roll))
            reported = after["answers"][m][1]
            add(f"{m}: inference reports the version", reported == a.current_version, f"sjff_version {reported}")
            rb = c.rollback(m, b.current_version)
            r = c.infer(images, m)
            same = {k: v.tobytes() for k, v in r.outputs.items()} == before["answers"][m][0]
            add(
                f"{m}: rollback to the version before gives its answers",
                same and rb.version == a.current_version + 1 and r.version == rb.version,
                f"rollback to {b.current_version} -> version {rb.version}, answers identical: {same}",
            )
    text = srv.log()
    errors = [r for r in srv.log_records() if str(r.get("level", "")).lower() in ("error", "critical")]
    detail = f"{len(errors)} error records" + (f", first: {str(errors[0])[:200]}" if errors else "")
    add("no ERROR record in the server log", not errors, detail)
    add("no traceback in the server log", "Traceback" not in text, f"{text.count('Traceback')} tracebacks")
    return checks


def fuzz_server(srv, images: np.ndarray, labels: np.ndarray, *, token: str, **run_kw) -> tuple[dict, list]:
    """Probe, fuzz ``srv`` (a started ServerProcess) with ``run(**run_kw)``, check. The first 8
    images are the probe batch; all of them feed the generated requests."""
    ctx = fr.Context(token, images, labels, MAX_MESSAGE_BYTES)
    with Admin(srv.target, token) as c:
        for m in fr.LEARNING:  # the version before the run stays restorable
            c.snapshot(m)
    before = probe(srv.target, token, images[:8])
    result = run(srv.target, ctx, **run_kw)
    return result, verify(srv, token, images[:8], before, result)


# -- command line -----------------------------------------------------------------------------


def print_report(result: dict, checks: list) -> None:
    kinds = list(result["codes"])
    codes = sorted({c for k in kinds for c in result["codes"][k]}, key=lambda c: (c != "OK", c))
    print(f"\nstatus of each call, per kind ({result['calls']} calls, {result['concurrency']} concurrent clients)\n")
    head = ["kind", "calls", *codes]
    rows = [[k, sum(result["codes"][k].values()), *(result["codes"][k].get(c, "") for c in codes)] for k in kinds]
    rows.append(["all", result["calls"], *(sum(result["codes"][k].get(c, 0) for k in kinds) for c in codes)])
    _table(head, rows)
    inband = {k: v for k, v in result["items"].items() if v}
    if inband:
        icodes = sorted({c for v in inband.values() for c in v}, key=lambda c: (c != "OK", c))
        print("\nin-band status of stream answers, per kind\n")
        _table(
            ["kind", "answers", *icodes],
            [[k, sum(v.values()), *(v.get(c, "") for c in icodes)] for k, v in inband.items()],
        )
    rate = result["calls"] / result["wall_s"]
    print(
        f"\nwall time {result['wall_s']:.1f} s ({rate:.0f} calls/s); updates answered OK: {result['learned']} "
        f"(of them request ids answered OK, each once whatever its retries: {result['learned_once']}); "
        f"rollbacks answered OK: {result['rolled']}\n"
    )
    _table(["check", "result", "detail"], [[n, "pass" if ok else "FAIL", d] for n, ok, d in checks])
    for p in result["problems"][:20]:
        print(f"  problem #{p['index']} ({p['kind']}, {p['method']}): {p['check']}: {p['detail']}")


def _table(head: list, rows: list) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(head)]
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10000, help="calls (default 10000)")
    ap.add_argument("--concurrency", type=int, default=16, help="client threads, a channel each (default 16)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the calls (call i is the same for one seed)")
    ap.add_argument("--deadline", type=float, default=30.0, help="deadline of every call in seconds (default 30)")
    ap.add_argument("--only", help="comma-separated call indices to replay (reproduce a problem)")
    ap.add_argument("--save", type=Path, help="write the payload of every problem call here")
    ap.add_argument("--json", type=Path, help="write the result as JSON here")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT / "tests"))
    import serving_utils as su  # the small cached test models (trained on the shipped MNIST subset)
    from sjff_server.harness import ServerProcess

    models = su.trained_models()
    images, labels = su.mnist_test(256)
    only = [int(i) for i in args.only.split(",")] if args.only else None
    with tempfile.TemporaryDirectory(prefix="sjff-fuzz-") as tmp:
        repo = make_repository(Path(tmp) / "repo", models["analog"], models["spike"])
        token_file = Path(tmp) / "token.txt"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        with ServerProcess(
            repo, state_dir=Path(tmp) / "state", token_file=token_file, extra_args=SERVER_ARGS, metrics=False
        ) as srv:
            result, checks = fuzz_server(
                srv,
                images,
                labels,
                token=TOKEN,
                count=args.count,
                concurrency=args.concurrency,
                seed=args.seed,
                deadline_s=args.deadline,
                only=only,
            )
            print_report(result, checks)
            if args.save and result["problems"]:
                ctx = fr.Context(TOKEN, images, labels, MAX_MESSAGE_BYTES)
                args.save.mkdir(parents=True, exist_ok=True)
                for p in result["problems"]:
                    call = fc.make_call(args.seed, p["index"], ctx)
                    body = call.payload if isinstance(call.payload, bytes) else b"".join(call.payload)
                    (args.save / f"{p['index']}-{call.method.rsplit('/', 1)[-1]}.bin").write_bytes(body)
            if any(not ok for _, ok, _ in checks):
                print("\nserver log (last lines):\n" + "\n".join(srv.log().splitlines()[-30:]))
    if args.json:
        args.json.write_text(json.dumps({**result, "checks": checks}, indent=1))
    what = f"--only {args.only}" if args.only else f"--count {args.count}"
    print(f"\ncommand: python benchmarks/fuzz_server.py {what} --concurrency {args.concurrency} --seed {args.seed}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
