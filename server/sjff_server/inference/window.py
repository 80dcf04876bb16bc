"""How long the first request of an inline batch waits for company (see batching.py)."""

from __future__ import annotations

from collections import deque

__all__ = ["WindowPolicy"]


class WindowPolicy:
    """How long the first request of an inline batch waits for others (seconds).

    - Wait the full window when the caller reports other requests in flight (``busy``) or
      when any of the last ``memory`` windows caught company (load is present).
    - Otherwise do not wait, but every ``probe_every``-th time wait a quarter window: a probe
      that detects load when requests only ever arrive one at a time.
    - Flush early once as many requests are queued as the largest recent window held (no more
      are likely to come), except on every 8th window, which explores for more.
    """

    def __init__(self, window_s: float, probe_every: int = 200, memory: int = 32) -> None:
        self.window_s = max(0.0, window_s)
        self.probe_every = probe_every
        self.sizes: deque[int] = deque(maxlen=memory)
        self._lone = 0
        self._windows = 0

    def productive(self) -> bool:
        return any(s > 1 for s in self.sizes)

    def delay(self, busy: bool) -> float:
        if self.window_s <= 0:
            return 0.0
        if busy or self.productive():
            return self.window_s
        self._lone += 1
        if self._lone >= self.probe_every:
            self._lone = 0
            return self.window_s / 4
        return 0.0

    def early_flush_at(self) -> int | None:
        """Requests queued at which a running window may end early (None: wait it out)."""
        self._windows += 1
        if not self.sizes or self._windows % 8 == 0:
            return None
        return max(2, max(self.sizes))

    def record(self, requests: int) -> None:
        self.sizes.append(requests)
