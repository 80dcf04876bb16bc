"""Durable Learns/s of `sjff serve` on a spiking model, numpy path against the compiled kernel.

    python benchmarks/serve_spiking_learn.py [--seconds 8] [--clients 1 8] [--rounds 3]

The paper's online row (884 -> 200, 23 + 20 steps) exported as a spike artefact, served by a
real server process on loopback with learning on (state directory, fsync'd log), Learn calls
of one MNIST image each from ``--clients`` threads of the Python client. The server runs with
``SJFF_COMPILED=0`` (the numpy path, the engine before the kernel) and with the kernel, the
two alternating, ``--rounds`` times; the table gives each median and the spread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import print_table, save_json  # noqa: E402

TOKEN = "bench-token-0123456789"


def export_model(out: Path) -> Path:
    from spikingjelly_ff.export.spike import export_spike
    from spikingjelly_ff.runs.build import build_model
    from spikingjelly_ff.runs.config import load_config

    cfg = load_config("paper/hebbian-online-symmetric")
    net = build_model(cfg.model, 784, 10, cfg.seed)
    return export_spike(net, out / "m", (1, 28, 28), hebbian=cfg.train.hebbian)


def learns_per_second(target: str, token: Path, images, labels, clients: int, seconds: float) -> float:
    from sjff_client import Client

    done = [0] * clients
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        with Client(target, token_file=token) as c:
            i = k
            while time.monotonic() < stop:
                j = i % len(images)
                c.learn(images[j : j + 1], [int(labels[j])], [i % 2 == 0], model="snn", seed=i)
                done[k] += 1
                i += clients

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(done) / (time.monotonic() - t)


def main() -> int:
    from sjff_server.harness import ServerProcess

    from spikingjelly_ff.runs.data import load_split

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    data = load_split("mnist", "test").take(2000)
    images = data.images.reshape(len(data.labels), -1).astype(np.float32) / np.float32(255.0)
    res: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = export_model(tmp)
        repo = tmp / "repo" / "snn" / "1"
        repo.mkdir(parents=True)
        (repo / "model.nir").write_bytes(model.read_bytes())
        token = tmp / "token"
        token.write_text(TOKEN + "\n")
        token.chmod(0o600)
        for r in range(args.rounds):
            for compiled in ("0", "1"):
                state = tmp / f"state-{r}-{compiled}"
                srv = ServerProcess(
                    tmp / "repo",
                    state_dir=state,
                    token_file=token,
                    extra_args=["--snapshot-interval", "0"],
                    env={**{k: v for k, v in os.environ.items() if k != "SJFF_TOKEN"}, "SJFF_COMPILED": compiled},
                ).start()
                try:
                    learns_per_second(srv.target, token, images, data.labels, 1, 1.0)  # warm-up
                    for n in args.clients:
                        rate = learns_per_second(srv.target, token, images, data.labels, n, args.seconds)
                        res.setdefault((compiled, n), []).append(rate)
                finally:
                    srv.stop()
    rows, out = [], {}
    for n in args.clients:
        before, after = res[("0", n)], res[("1", n)]
        ratio = [a / b for a, b in zip(after, before)]
        rows.append(
            [f"{n} client(s)", f"{statistics.median(before):,.0f} ({min(before):,.0f}-{max(before):,.0f})",
             f"{statistics.median(after):,.0f} ({min(after):,.0f}-{max(after):,.0f})",
             f"{statistics.median(ratio):.2f}x ({min(ratio):.2f}-{max(ratio):.2f})"]
        )  # fmt: skip
        out[str(n)] = {"numpy_path": before, "compiled": after}
    print_table(
        "Durable Learns/s, spiking model (paper online row, 884 -> 200, T = 23 + 20), real server on loopback",
        ["clients", "numpy path: median (min-max)", "compiled kernel", "speed-up"],
        rows,
        f"{args.rounds} rounds of {args.seconds:g} s per point, the servers alternating; one MNIST image per Learn.",
    )
    save_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
