"""End-to-end demo: train on MNIST, export, serve over gRPC, query, learn on-line, restart.

    python scripts/demo.py [--out runs/demo] [--limit 10000]

Uses full MNIST when it is available (cached or downloadable), else the shipped subset in
tests/data/mnist-mini. Every step is the real thing: `sjff train`, `sjff export`, a
`sjff serve` process on loopback, the Python client.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "tests" / "data" / "mnist-mini"
TOKEN = "demo-token-please-change-0123456789"  # noqa: S105 - a local demo, written to a file


def sjff(*args: str) -> None:
    print("$ sjff " + " ".join(args), flush=True)
    subprocess.run(
        [sys.executable, "-c", "import sys; from spikingjelly_ff.cli import main; sys.exit(main())", *args],
        check=True,
        cwd=ROOT,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo")
    ap.add_argument("--limit", type=int, default=10000, help="training images (default 10000)")
    args = ap.parse_args()

    from sjff_client import Client
    from sjff_server.harness import ServerProcess

    from spikingjelly_ff.runs.data import load_split

    try:
        test = load_split("mnist", "test", download=True)
        data = "mnist"
    except Exception as exc:  # noqa: BLE001 - no network and no cache: the shipped subset
        print(f"full MNIST unavailable ({exc}); using {MINI}")
        test, data = load_split(str(MINI), "test"), str(MINI)

    out = args.out
    # a fresh run, repository and learning state every time (the server refuses state that
    # belongs to a different model, which a previous demo would leave behind, and `sjff train`
    # refuses to start over a run a stopped demo left)
    for stale in ("run", "models", "state"):
        shutil.rmtree(out / stale, ignore_errors=True)
    sets = [f"data.dataset={data}", "train.epochs=1", f"train.limit={args.limit}", "eval.limit=1000"]
    sjff(
        "train",
        "paper/analog-symmetric",
        *[a for s in sets for a in ("--set", s)],
        "--out",
        str(out / "run"),
        "--quiet",
    )
    repo = out / "models" / "mnist" / "1"
    repo.mkdir(parents=True, exist_ok=True)
    sjff("export", str(out / "run" / "model"), "--format", "onnx", "--out", str(repo / "model.onnx"))
    token = out / "token.txt"
    token.write_text(TOKEN + "\n")

    images, labels = test.images[:1000], test.labels[:1000]
    srv = ServerProcess(out / "models", state_dir=out / "state", token_file=token, log_path=out / "server.log")
    with srv:
        print(f"server on {srv.target} (metrics {srv.metrics_url}); log in {out / 'server.log'}")
        with Client(srv.target, token_file=token) as c:
            print(f"ready: {c.server_ready()}; model metadata: {c.model_metadata().platform}")
            t0 = time.perf_counter()
            r = c.infer(images)
            took = 1e3 * (time.perf_counter() - t0)
            print(f"inferred {len(images)} images in {took:.1f} ms: accuracy {np.mean(r.label == labels):.4f}")
            print(f"first five: predicted {r.label[:5].tolist()}, true {labels[:5].tolist()}")
            t0 = time.perf_counter()
            results = list(c.learn_stream((images[i : i + 1], labels[i : i + 1]) for i in range(500)))
            dt = time.perf_counter() - t0
            print(f"learned on-line from 500 labelled images: {len(results)} durable updates in {dt:.2f} s")
            print(f"the model is now at version {results[-1].version}")
            r2 = c.infer(images[500:])
            before, after = np.mean(r.label[500:] == labels[500:]), np.mean(r2.label == labels[500:])
            print(f"accuracy on the other 500 images: before {before:.4f}, after {after:.4f}")
            version = r2.version
        srv.stop()
        srv.restart()
        with Client(srv.target) as c:
            print(f"after a restart the server resumes at version {c.infer(images[:1]).version} (was {version})")
    print("try it yourself:")
    print(f"  sjff serve --model-repository {out / 'models'} --state-dir {out / 'state'} --token-file {token}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
