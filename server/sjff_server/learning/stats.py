"""Counters of one model's learning, as GetStats reports them."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LearnStats"]


@dataclass
class LearnStats:
    """Accepted and refused updates, samples learned, group sizes, and the on-line accuracy
    over the last ``outcomes.maxlen`` samples (whether the log-odds before an update agreed
    with its label being positive)."""

    accepted: int = 0
    refused: int = 0
    samples: int = 0
    groups: int = 0
    grouped_updates: int = 0
    last_update: float = 0.0  # unix time
    outcomes: deque = field(default_factory=lambda: deque(maxlen=1000))

    def learned(self, log_odds: np.ndarray, positive: np.ndarray) -> None:
        """One accepted update: log-odds ``[n]`` before it, positive flags ``[n]``."""
        self.samples += len(positive)
        self.outcomes.extend(((log_odds > 0) == (positive > 0.5)).tolist())

    def group(self, accepted: int, now: float) -> None:
        """A group of which ``accepted`` updates were applied, at unix time ``now``."""
        if accepted:
            self.accepted += accepted
            self.groups += 1
            self.grouped_updates += accepted
            self.last_update = now

    def online_accuracy(self) -> tuple[float, int]:
        """(fraction right, samples counted); NaN if none."""
        n = len(self.outcomes)
        return (sum(self.outcomes) / n if n else math.nan), n

    def mean_group_size(self) -> float:
        return self.grouped_updates / self.groups if self.groups else 0.0
