"""Resident memory of the remembered request ids (``--idempotency-max-mb``) against what the
window counts for them. Prints a table.

    python benchmarks/request_window_memory.py            # 200,000 uuid ids, 1 and 16 log-odds

Each entry is what a Learn with a uuid4 ``request_id`` leaves in
``sjff_server.storage.requests.RequestWindow``: the id, the version, the time, the log-odds
``[n]`` float32 and the samples' sha256. The resident set (``/proc/self/statm``) is read
before and after adding them, after a garbage collection each time, in a fresh process per
row (memory freed by an earlier row would hide the cost of the next).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from sjff_server.storage.requests import Answer, RequestWindow  # noqa: E402


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def measure(count: int, samples: int) -> tuple[float, float]:
    """(resident bytes per entry, bytes counted per entry) for ``count`` entries."""
    window = RequestWindow(1e9, 1 << 40)
    rng = np.random.default_rng(0)
    gc.collect()
    before = _rss()
    for i in range(count):
        rid = str(uuid.uuid4())
        odds = rng.random(samples, dtype=np.float32)
        window.add([(rid, Answer(i + 1, 1e9 + i, odds, hashlib.sha256(rid.encode()).digest()))])
    gc.collect()
    return (_rss() - before) / count, window.bytes / count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200_000, help="entries per run (default 200,000)")
    ap.add_argument("--samples", type=int, help=argparse.SUPPRESS)  # one row, in this process
    args = ap.parse_args(argv)
    if args.samples is not None:
        print(json.dumps(measure(args.count, args.samples)))
        return 0
    rows = []
    for samples in (1, 16, 256):
        cmd = [sys.executable, __file__, "--count", str(args.count), "--samples", str(samples)]
        resident, counted = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        rows.append((samples, resident, counted, counted / resident))
    print(f"\nRequest-id window: {args.count:,} uuid ids per run\n")
    print("| samples per update | resident bytes / id | counted bytes / id | counted / resident |")
    print("|---:|---:|---:|---:|")
    for samples, resident, counted, ratio in rows:
        print(f"| {samples} | {resident:,.0f} | {counted:,.0f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
