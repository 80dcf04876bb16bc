"""Learning settings of one model (see ``sjff serve --help``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LearnOptions"]


@dataclass(frozen=True)
class LearnOptions:
    """Group size and queue bound, snapshot cadence and retention, log segment size, how
    often a digest of the weights is logged (0: never), and how long (seconds) and how much
    (bytes of answers) the request ids of applied updates are remembered (requests.py)."""

    max_group: int = 64
    snapshot_every: int = 1000
    snapshot_interval_s: float = 60.0
    keep_snapshots: int = 10
    max_queue: int = 4096
    reset_changed: bool = False
    segment_bytes: int = 64 << 20
    digest_every: int = 100
    request_window_s: float = 86400.0
    request_window_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        lows = (("max_group", 1), ("max_queue", 1), ("keep_snapshots", 1), ("segment_bytes", 1 << 16))
        for name, low in (*lows, ("request_window_bytes", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"LearnOptions.{name} must be at least {low}, got {getattr(self, name)}")
        for name in ("snapshot_every", "digest_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"LearnOptions.{name} must be >= 0 (0: never), got {getattr(self, name)}")
        for name in ("snapshot_interval_s", "request_window_s"):
            got = getattr(self, name)
            if not (math.isfinite(got) and got >= 0):
                raise ValueError(f"LearnOptions.{name} must be finite and >= 0, got {got}")
