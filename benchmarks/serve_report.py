"""The tables benchmarks/serve.py prints from its results (Markdown, as
docs/serving-performance.md quotes them)."""

from __future__ import annotations

from serve_measure import IDLE_GAP_S


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def ms(x: float) -> str:
    return f"{x:.3f} ms"


def print_table(r: dict) -> None:
    """All of the run's tables, in the order docs/serving-performance.md shows them."""
    print()
    print_latency(r)
    print()
    print_throughput(r)
    print()
    print_learning(r)
    print(
        f"\nload average before {r['load_before'][0]:.2f}, after {r['load_after'][0]:.2f}; "
        f"accuracy on 500 test images {r['accuracy_500']:.3f}"
    )


def print_latency(r: dict) -> None:
    """One-image latency: in-process references, then each client against server and echo."""
    ip = r["in_process"]
    pinned = r.get("pinned")
    if pinned:
        print(
            f"pinned: server, echo and in-process reference on CPU {pinned['server']}, clients on {pinned['clients']}\n"
        )
    if r.get("pinned_each"):
        cpus = r["pinned_each"]
        print(f"each server process on a CPU of its own: {cpus}; clients, echo and in-process reference unpinned\n")
    if r.get("cpu_latency_us") is not None:
        print(f"CPU wake-up latency held at {r['cpu_latency_us']} µs for the whole run (--cpu-latency-us)\n")
    print(row("measurement", "p50", "p99", "note"))
    print(row("---", "---:", "---:", "---"))
    api, eng = ip["AnalogModel.run"], ip["engine"]
    print(row("in-process `AnalogModel.run`, 1 image", ms(api[0]), ms(api[1]), "library API"))
    print(row("in-process engine call (the server's path), 1 image", ms(eng[0]), ms(eng[1]), "prepared weight feeds"))
    if "engine_after_idle" in ip:
        idle = ip["engine_after_idle"]
        note = f"each call after {IDLE_GAP_S * 1e6:.0f} µs asleep, as a lone client's call finds the CPU"
        print(row("in-process engine call after an idle gap, 1 image", ms(idle[0]), ms(idle[1]), note))
    if "handler" in ip:
        h = ip["handler"]
        note = "decode, validate, engine, encode, serialise, metrics; no gRPC"
        print(row("in-process ModelInfer handler, 1 image", ms(h[0]), ms(h[1]), note))
    if "model_run_in_server_ms" in r:
        note = "the server's sjff_inference_batch_seconds over the gRPC rows below: a lone client's call"
        print(row("engine call inside the server, 1 image (mean)", ms(r["model_run_in_server_ms"]), "", note))
    names = {
        "native": "C++ client (grpc_load, 1 call in flight)",
        "python": "Python blocking client (grpc.insecure_channel)",
    }
    for client, lat in r["latency"].items():
        g, e = lat["grpc"], lat["echo"]
        who = names[client]
        print(row(f"ModelInfer over gRPC (loopback), 1 image, {client}", ms(g["p50_ms"]), ms(g["p99_ms"]), who))
        print(row(f"bare grpc.aio echo, same payload, {client}", ms(e["p50_ms"]), ms(e["p99_ms"]), who))
        over_api, over_engine = g["p50_ms"] - api[0], g["p50_ms"] - eng[0]
        note = f"vs the engine call ({ms(over_api)} vs `AnalogModel.run`); target <= 0.5 ms"
        print(row(f"**gRPC overhead (p50), {client} client**", ms(over_engine), "", note))


def print_throughput(r: dict) -> None:
    """Inferences/s per number of clients beside the echo, and batching over the run."""
    print(f"throughput load generator: {r['load_generator']}, {r['channels']} connections")
    if r["server_procs"] > 1:
        spread = ", ".join(f"{n:,.0f}" for n in r.get("images_per_process", []))
        print(f"server: {r['server_procs']} processes on one port (--reuse-port); images answered by each: {spread}")
    head = ("clients", "server inferences/s", "p50", "p99", "echo calls/s", "server / echo", "CPU/call server, echo")
    print(row(*head, "requests/batch"))
    print(row(*["---:"] * (len(head) + 1)))
    for c, b in r["throughput"].items():
        s, e = b["server"], b["echo"]
        ratio = f"{s['rate'] / e['rate']:.1%}"
        cpu = f"{s['server_cpu_us']:.0f} µs, {e['server_cpu_us']:.0f} µs"
        print(
            row(
                c,
                f"{s['rate']:,.0f}",
                f"{s['p50_ms']:.2f} ms",
                f"{s['p99_ms']:.2f} ms",
                f"{e['rate']:,.0f}",
                ratio,
                cpu,
                f"{s.get('requests_per_batch', float('nan')):.1f}",
            )
        )
    b = r.get("batching")
    if b:
        print(
            f"\nbatching over the whole run: {b['requests']:,.0f} requests in {b['batches']:,.0f} batches "
            f"({b['mean_requests_per_batch']:.2f} per batch; {b['batches_of_2_or_more']:.0%} of batches held 2 or more)"
        )


def print_learning(r: dict) -> None:
    """Acknowledged durable Learn updates/s per number of clients."""
    learn = r["learning"]
    if learn is None:
        print("learning: not measured (--learn-seconds 0, or --server-procs above 1: read-only processes)")
        return
    print(row("learning clients", "acknowledged durable updates/s", "p50", "p99"))
    print(row("---:", "---:", "---:", "---:"))
    for c, x in learn["runs"].items():
        print(row(c, f"{x['rate']:,.0f}", f"{x['p50_ms']:.2f} ms", f"{x['p99_ms']:.2f} ms"))
    print(
        f"\nacknowledged updates {learn['acked']}, final model version {learn['final_version']} "
        f"(+100 warm-up calls), mean fsync group {learn['mean_group_size']:.1f}"
    )
