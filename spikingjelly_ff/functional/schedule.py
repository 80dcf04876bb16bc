"""Learning-rate schedules shared by the optimiser-based and the Hebbian learners."""

from __future__ import annotations

import math

__all__ = ["SCHEDULES", "schedule_factor", "warmup_factor"]

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


def warmup_factor(warmup: float, progress: float) -> float:
    """Linear ramp of the rate over the first ``warmup`` fraction of the run, ``progress`` in
    [0, 1]: progress / warmup, then 1. Adam's first steps have the size of the rate whatever the
    gradient, so a wide layer (small initial weights) can lose units before its moment
    estimates settle; at rate 0 the first step still feeds those estimates."""
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup must be a fraction of the run in [0, 1), got {warmup}")
    if warmup == 0.0 or progress >= warmup:
        return 1.0
    return max(progress, 0.0) / warmup
