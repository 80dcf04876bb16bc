"""How long the first request of an inline batch waits for company (see batching.py)."""

from __future__ import annotations

from collections import deque

__all__ = ["WindowPolicy"]

#: windows in a row that caught no company after which a ``busy`` signal alone no longer opens
#: a window (a lone client whose next call comes right after its answer)
LONE_WINDOWS = 4
#: shortest quiet gap that ends an exploring window (seconds): calls queued in one event-loop
#: turn arrive microseconds apart, and a loop turn under load takes longer than that
MIN_QUIET_S = 100e-6


class WindowPolicy:
    """How long the first request of an inline batch waits for others (seconds).

    - Wait the full window when any of the last ``memory`` windows caught company (load is
      present), or when the caller reports other requests in flight (``busy``) unless the last
      :data:`LONE_WINDOWS` windows each held one request (a lone client fast enough to look
      busy would otherwise wait out every window); then only a probe that catches company
      opens windows again.
    - Otherwise do not wait, but every ``probe_every``-th time wait a quarter window: a probe
      that detects load when requests only ever arrive one at a time.
    - End the window early once as many requests are queued as the largest recent window held
      (no more are likely to come). Every 8th window explores instead: past that count it
      stays open while calls keep coming (:meth:`quiet_gap`), so batches grow with the load
      without a closed set of clients waiting out the whole window for calls that do not exist.
    - A window that runs out before that count forgets the larger sizes (:meth:`short`): the
      clients that made them are gone, and later windows should not wait for them.
    """

    def __init__(self, window_s: float, probe_every: int = 200, memory: int = 32) -> None:
        self.window_s = max(0.0, window_s)
        self.probe_every = probe_every
        self.sizes: deque[int] = deque(maxlen=memory)
        self._lone_windows = min(LONE_WINDOWS, memory)
        self.exploring = False  # the current window explores (set by early_flush_at)
        self._lone = 0
        self._windows = 0

    def productive(self) -> bool:
        return any(s > 1 for s in self.sizes)

    def delay(self, busy: bool) -> float:
        if self.window_s <= 0:
            return 0.0
        if self.productive() or (busy and len(self.sizes) < self._lone_windows):
            return self.window_s
        self._lone += 1
        if self._lone >= self.probe_every:
            self._lone = 0
            return self.window_s / 4
        return 0.0

    def early_flush_at(self) -> int | None:
        """Requests queued at which a new window may end early (None: wait it out); sets
        :attr:`exploring` for the window."""
        self._windows += 1
        self.exploring = False
        if not self.sizes:
            return None
        self.exploring = self._windows % 8 == 0
        return max(2, max(self.sizes))

    @staticmethod
    def quiet_gap(first_s: float, last_s: float, queued: int) -> float:
        """How long an exploring window that holds ``queued`` requests, the first queued at
        ``first_s`` and the last at ``last_s`` (loop time, seconds), waits for the next: twice
        their mean spacing, at least :data:`MIN_QUIET_S`."""
        return max(MIN_QUIET_S, 2.0 * (last_s - first_s) / max(1, queued - 1))

    def short(self, requests: int) -> None:
        """A window ran out with ``requests``, fewer than it expected: forget the larger sizes."""
        kept = [s for s in self.sizes if s <= requests]
        self.sizes.clear()
        self.sizes.extend(kept)

    def record(self, requests: int) -> None:
        self.sizes.append(requests)
