"""Where the server's CPU goes per ModelInfer under load, beside the bare echo's. Prints tables.

    python benchmarks/serve_profile.py                 # 32 clients, 2 rounds of 6 s
    python benchmarks/serve_profile.py --clients 8 --no-perf

The same load as ``serve.py``'s throughput rows (the C++ load generator, one MNIST image per
call, server and echo alternating) with two breakdowns per call:

1. CPU per thread (user and system µs per call, from /proc/PID/task/*/stat) and context
   switches per call (from /proc/PID/task/*/status: each time a thread blocks or is put off
   the CPU; a thread that sleeps between calls is woken once per switch): the event-loop
   thread runs every handler, the gRPC poller thread wakes it, the ``event_engine`` threads
   move bytes where gRPC's EventEngine listener is on (``sjff_server.tuning``). A
   single-threaded asyncio server saturates its event-loop thread first: its CPU per call
   bounds the throughput.
2. With ``perf`` (Linux perf_events allowed: kernel.perf_event_paranoid <= 2), where the
   event-loop thread spends it by shared object: the Python interpreter, the kernel, gRPC's
   Cython layer (cygrpc), onnxruntime, protobuf, numpy.

Both breakdowns use the best of ``--rounds`` (highest rate) per server. The model and the
payloads are serve.py's (benchmarks/serve.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import serve
import serve_workers as workers

#: thread names as /proc shows them -> what they are
THREADS = {"event_engine": "gRPC event engine"}


def _per_thread(pid: int, file: str) -> dict[tuple[int, str], str]:
    """{(tid, name): the text of /proc/PID/task/TID/``file``} of every thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/{file}").read_text()
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        out[(int(tid), name)] = text
    return out


def thread_cpu(pid: int) -> dict[tuple[int, str], tuple[float, float]]:
    """{(tid, name): (user s, system s)} of every thread of ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = {key: stat.rsplit(")", 1)[1].split() for key, stat in _per_thread(pid, "stat").items()}
    return {key: (int(f[11]) / tick, int(f[12]) / tick) for key, f in fields.items()}


def thread_switches(pid: int) -> dict[tuple[int, str], int]:
    """{(tid, name): context switches so far} of every thread of ``pid`` (voluntary ones, a
    thread that blocks and is woken again, and involuntary ones)."""
    return {
        key: sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches:" in line)
        for key, status in _per_thread(pid, "status").items()
    }


def _group(pid: int, key: tuple[int, str], main_name: str) -> str:
    """The thread whose id is the pid is the event loop, the others are grouped by name."""
    if key[0] == pid:
        return "event loop (main)"
    if key[1] == main_name:  # Python 3.11 does not name its threads: they carry the process's name
        return "gRPC poller, other Python threads"
    return THREADS.get(key[1], key[1])


def per_call(pid: int, before: dict, after: dict, calls: float) -> dict[str, tuple[float, float]]:
    """{thread group: (user µs, system µs) per call} (see :func:`_group`)."""
    main_name = next((name for tid, name in after if tid == pid), "")
    groups: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for key, (u, s) in after.items():
        u0, s0 = before.get(key, (0.0, 0.0))
        name = _group(pid, key, main_name)
        groups[name][0] += (u - u0) * 1e6 / calls
        groups[name][1] += (s - s0) * 1e6 / calls
    return {k: (u, s) for k, (u, s) in groups.items() if u + s > 0.05}


def switches_per_call(pid: int, before: dict, after: dict, calls: float) -> dict[str, float]:
    """{thread group: context switches per call} (see :func:`_group`)."""
    main_name = next((name for tid, name in after if tid == pid), "")
    groups: dict[str, float] = defaultdict(float)
    for key, n in after.items():
        groups[_group(pid, key, main_name)] += (n - before.get(key, 0)) / calls
    return dict(groups)


def perf_usable() -> bool:
    if shutil.which("perf") is None:
        return False
    probe = subprocess.run(["perf", "stat", "-e", "task-clock", "true"], capture_output=True)
    return probe.returncode == 0


def by_object(data: Path) -> dict[str, float]:
    """{shared object: share of samples} of a perf recording."""
    rep = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--sort", "dso"], capture_output=True, text=True, check=True
    )
    shares = {}
    for line in rep.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].endswith("%"):
            shares[parts[1]] = float(parts[0][:-1]) / 100
    return shares


SHORT = {
    "libpython": "Python interpreter",
    "python": "Python interpreter",  # a statically linked interpreter
    "[kernel": "kernel",
    "cygrpc": "gRPC Cython layer (cygrpc)",
    "onnxruntime": "onnxruntime",
    "_message": "protobuf (upb)",
    "_multiarray": "numpy",
    "libc": "libc (malloc, memcpy)",
    "_asyncio": "asyncio C accelerator",
}


def short(dso: str) -> str:
    return next((v for k, v in SHORT.items() if dso.startswith(k)), "other")


def measure(target: str, method: str, pid: int, args, exe: Path, work, data: Path | None) -> dict:
    """One load run against one server: rate, CPU per call per thread, and (with ``data``, a
    perf recording path) the event-loop thread's samples by shared object."""
    workers.run_native(exe, target, method, work.infer, args.clients, 1.0)  # warm up
    rec = None
    if data is not None:
        cmd = ["perf", "record", "-F", "2000", "-t", str(pid), "-o", str(data), "--", "sleep", str(args.seconds)]
        rec = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    before, switched = thread_cpu(pid), thread_switches(pid)
    res = workers.run_native(exe, target, method, work.infer, args.clients, args.seconds)
    after, switched_after = thread_cpu(pid), thread_switches(pid)
    # every call the server answered in the window: the timed ones, the refused ones and the
    # generator's warm-up calls (as serve_workers.run_native counts them)
    calls = res["calls"] + sum(res["errors"].values()) + workers.NATIVE_WARM_UP_CALLS * min(2, args.clients)
    if res["errors"]:
        print(f"  refused calls: {res['errors']}", flush=True)
    threads = per_call(pid, before, after, calls)
    switches = switches_per_call(pid, switched, switched_after, calls)
    user, system = threads.get("event loop (main)", (0.0, 0.0))
    objects: dict[str, float] = {}
    if rec is not None:
        _, err = rec.communicate()
        if rec.returncode == 0 and data.exists():
            objects = by_object(data)
        else:
            print(f"  perf record failed ({rec.returncode}): {err.decode(errors='replace').strip()[-300:]}", flush=True)
    # without kernel samples (perf_event_paranoid > 1 for a user) the shares are of user time
    kernel = any(dso.startswith("[kernel") for dso in objects)
    loop_us = user + system if kernel else user
    return {"rate": res["rate"], "threads": threads, "switches": switches, "loop_us": loop_us, "objects": objects}


def print_tables(points: dict, clients: int) -> None:
    srv, echo = points["server"], points["echo"]
    print(f"\n{clients} clients: server {srv['rate']:,.0f}/s, echo {echo['rate']:,.0f}/s "
          f"({100 * srv['rate'] / echo['rate']:.0f}%)\n")  # fmt: skip
    print(
        "| thread | server user µs/call | server sys | switches/call | echo user µs/call | echo sys | switches/call |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    seen = (
        set(srv["threads"])
        | set(echo["threads"])
        | {n for p in (srv, echo) for n, k in p["switches"].items() if k >= 0.05}
    )
    for n in sorted(seen, key=lambda n: (not n.startswith("event"), n)):
        su, ss = srv["threads"].get(n, (0.0, 0.0))
        eu, es = echo["threads"].get(n, (0.0, 0.0))
        sw, ew = srv["switches"].get(n, 0.0), echo["switches"].get(n, 0.0)
        print(f"| {n} | {su:.1f} | {ss:.1f} | {sw:.2f} | {eu:.1f} | {es:.1f} | {ew:.2f} |")
    if not srv["objects"]:
        return
    kernel = any(d.startswith("[kernel") for d in srv["objects"])
    what = "CPU" if kernel else "user CPU (perf saw no kernel samples: perf_event_paranoid > 1?)"
    print(f"\nevent-loop thread, µs per call by shared object (perf samples x the thread's {what} per call):\n")
    print("| shared object | server | echo |")
    print("| --- | ---: | ---: |")
    rows: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for i, p in enumerate((srv, echo)):
        for dso, share in p["objects"].items():
            rows[short(dso)][i] += share * p["loop_us"]
    for n, (a, b) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        print(f"| {n} | {a:.1f} | {b:.1f} |")
    print(f"| **total** | {srv['loop_us']:.1f} | {echo['loop_us']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-perf", dest="perf", action="store_false", help="skip the per-object breakdown")
    ap.add_argument("--server-args", default="", help="extra sjff serve arguments (quoted)")
    args = ap.parse_args(argv)
    exe, why = workers.native_client()
    if exe is None:
        raise SystemExit(f"the C++ load generator is needed ({why})")
    if args.perf and not perf_usable():
        print("perf is missing or not allowed here: thread breakdown only", flush=True)
        args.perf = False
    from sjff_server.harness import ServerProcess

    from spikingjelly_ff.runs.data import load_split

    model = serve.prepare_model(None)
    data, _ = serve.dataset()
    split = load_split(data, "test")
    work = serve.Workdir.create(model, split.images[:500], split.labels[:500])
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        stack.callback(shutil.rmtree, work.root, ignore_errors=True)
        srv = ServerProcess(work.root / "repo", token_file=work.token_file, extra_args=args.server_args.split())
        stack.enter_context(srv)
        echo = workers.Echo()
        stack.callback(echo.close)
        points: dict[str, dict] = {}
        for r in range(args.rounds):  # server and echo alternate; the best round of each is kept
            for name, target, method, pid in (
                ("server", srv.target, workers.INFER, srv.pid),
                ("echo", echo.target, workers.ECHO, echo.proc.pid),
            ):
                data = Path(tmp) / f"{name}-{r}.perf" if args.perf else None
                p = measure(target, method, pid, args, exe, work, data)
                print(f"  round {r + 1}, {name}: {p['rate']:,.0f} calls/s", flush=True)
                if name not in points or p["rate"] > points[name]["rate"]:
                    points[name] = p
    print_tables(points, args.clients)
    return 0


if __name__ == "__main__":
    sys.exit(main())
