"""Learning settings of one model (see ``sjff serve --help``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LearnOptions"]


@dataclass(frozen=True)
class LearnOptions:
    """Group size and queue bound, snapshot cadence and retention, log segment size, and how
    often a digest of the weights is logged (0: never)."""

    max_group: int = 64
    snapshot_every: int = 1000
    snapshot_interval_s: float = 60.0
    keep_snapshots: int = 10
    max_queue: int = 4096
    reset_changed: bool = False
    segment_bytes: int = 64 << 20
    digest_every: int = 100

    def __post_init__(self) -> None:
        for name, low in (("max_group", 1), ("max_queue", 1), ("keep_snapshots", 1), ("segment_bytes", 1 << 16)):
            if getattr(self, name) < low:
                raise ValueError(f"LearnOptions.{name} must be at least {low}, got {getattr(self, name)}")
        for name in ("snapshot_every", "digest_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"LearnOptions.{name} must be >= 0 (0: never), got {getattr(self, name)}")
        if not (math.isfinite(self.snapshot_interval_s) and self.snapshot_interval_s >= 0):
            got = self.snapshot_interval_s
            raise ValueError(f"LearnOptions.snapshot_interval_s must be finite and >= 0, got {got}")
