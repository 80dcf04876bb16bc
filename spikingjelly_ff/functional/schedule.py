"""Learning-rate schedules shared by the optimiser-based and the Hebbian learners."""

from __future__ import annotations

import math

__all__ = ["SCHEDULES", "schedule_factor"]

SCHEDULES = ("constant", "cosine", "linear")


def schedule_factor(kind: str, progress: float) -> float:
    """Multiplier of the base rate at ``progress`` in [0, 1] of the run."""
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}")
