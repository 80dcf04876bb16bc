"""Helpers shared by the benchmark scripts: matmul peak, timing, table printing."""

from __future__ import annotations

import json
import os
import platform
import time

import torch


def matmul_peak(n: int = 2048, repeat: int = 8) -> float:
    """Best GFLOP/s of a plain float32 torch matmul on this machine, now."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def print_table(title: str, header: list[str], rows: list[list], note: str = "") -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}\n")
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    if note:
        print(f"\n{note}")


def save_json(path: str | None, data: dict) -> None:
    if path:
        with open(path, "w") as fh:
            json.dump(data, fh, indent=2)
