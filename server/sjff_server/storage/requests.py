"""The request ids a local learner has applied and the answers it gave (idempotent Learn).

A Learn with a ``request_id`` is applied at most once while its id is remembered: a retry
(the client lost the answer to a deadline, a broken connection or a restart of the server)
is answered with the first application's version and log-odds and changes nothing. The
ids are durable with their updates: an update record with a request id carries its answer
(records.py), and every snapshot stores the window as it was at its version, so an id
outlives the log segments pruned with old snapshots. Recovery rebuilds the window from the
snapshot it loads and the log records.

An id is forgotten ``window_s`` seconds after its update was applied, or earlier, oldest
first, once the remembered answers pass ``max_bytes`` (a bound on memory however many
distinct ids clients send; :attr:`RequestWindow.forgotten_early` counts those). A forgotten
id is a new request again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .records import UpdateRecord

__all__ = ["Answer", "RequestWindow", "answers_of", "read_answers"]

log = logging.getLogger("sjff_server.state")

#: bytes an entry costs besides its id, log-odds and digest (the objects and the dict slot;
#: benchmarks/request_window_memory.py: the count is within 1.02-1.04x of resident memory)
ENTRY_OVERHEAD = 500
#: snapshot array names (snapshots.py stores them next to the weights)
_KEYS = ("rq_id", "rq_id_end", "rq_version", "rq_created", "rq_odds", "rq_odds_end", "rq_sha256")


@dataclass(frozen=True, slots=True)
class Answer:
    """What a Learn was answered: its ``version``, when it was applied (unix s), the
    log-odds before it ``[n]`` float32, and the sha256 of its samples (a retry must match)."""

    version: int
    created: float
    log_odds: np.ndarray
    digest: bytes

    def size(self, request_id: str) -> int:
        return len(request_id.encode()) + 4 * len(self.log_odds) + len(self.digest) + ENTRY_OVERHEAD


def answers_of(records: Iterable[UpdateRecord]) -> list[tuple[str, Answer]]:
    """The ``(request id, answer)`` of each update record that has a request id."""
    out = []
    for r in records:
        u = r.update
        if u is not None and u.request_id and r.log_odds is not None:
            out.append((u.request_id, Answer(r.version, r.created, r.log_odds, u.samples_sha256())))
    return out


class RequestWindow:
    """Request id -> :class:`Answer` of the updates applied in the last ``window_s`` seconds
    (at most ``max_bytes`` of them). Thread-safe: the I/O thread adds what it made durable,
    the event loop looks up retries."""

    def __init__(self, window_s: float, max_bytes: int, clock: Callable[[], float] = time.time, name: str = "") -> None:
        self.name = name  # the model, for the log
        self.window_s = float(window_s)
        self.max_bytes = int(max_bytes)
        self.clock = clock
        self.forgotten_early = 0
        self._ids: OrderedDict[str, Answer] = OrderedDict()  # oldest first
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, request_id: str) -> Answer | None:
        """The answer of ``request_id`` if it was applied within the window."""
        with self._lock:
            a = self._ids.get(request_id)
            if a is None or self.clock() - a.created > self.window_s:
                return None
            return a

    def add(self, entries: Iterable[tuple[str, Answer]]) -> None:
        """Remember applied updates, oldest first. An id applied again (it had been forgotten,
        or expired while still held here) takes the newer answer."""
        with self._lock:
            for rid, a in entries:
                old = self._ids.get(rid)
                if old is not None:
                    if old.version >= a.version:
                        continue
                    del self._ids[rid]
                    self._bytes -= old.size(rid)
                self._ids[rid] = a
                self._bytes += a.size(rid)
            self._prune()

    def _prune(self) -> None:
        old = self.clock() - self.window_s
        while self._ids:
            rid, a = next(iter(self._ids.items()))
            over = self._bytes > self.max_bytes
            if a.created >= old and not over:
                break
            self._ids.popitem(last=False)
            self._bytes -= a.size(rid)
            if over and a.created >= old:
                if not self.forgotten_early:  # once: retries of older ids would apply again
                    log.warning(
                        "request ids forgotten before --idempotency-window-s: their answers pass --idempotency-max-mb",
                        extra={"model": self.name, "age_s": round(self.clock() - a.created, 1)},
                    )
                self.forgotten_early += 1

    def arrays(self, upto: int) -> dict[str, np.ndarray]:
        """The window's entries of versions <= ``upto`` as snapshot arrays (:func:`read_answers`)."""
        with self._lock:
            self._prune()
            items = [(rid, a) for rid, a in self._ids.items() if a.version <= upto]
        ids = [rid.encode() for rid, _ in items]
        odds = [np.asarray(a.log_odds, dtype="<f4") for _, a in items]
        return {
            "rq_id": np.frombuffer(b"".join(ids), dtype=np.uint8),
            "rq_id_end": np.cumsum([len(b) for b in ids], dtype=np.int64),
            "rq_version": np.array([a.version for _, a in items], dtype=np.int64),
            "rq_created": np.array([a.created for _, a in items], dtype=np.float64),
            "rq_odds": np.concatenate(odds) if odds else np.zeros(0, "<f4"),
            "rq_odds_end": np.cumsum([len(o) for o in odds], dtype=np.int64),
            "rq_sha256": np.frombuffer(b"".join(a.digest for _, a in items), dtype=np.uint8).reshape(-1, 32),
        }


def read_answers(path: Path) -> list[tuple[str, Answer]] | None:
    """The window stored in a snapshot (None: one written before snapshots stored it);
    ``ValueError`` if its arrays are inconsistent."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "rq_id" not in z.files:
                return None
            a = {k: np.asarray(z[k]) for k in _KEYS}
    except Exception as exc:  # noqa: BLE001 - zip, key and OS errors all mean unusable
        raise ValueError(f"{path}: unreadable request ids ({type(exc).__name__}: {exc})") from exc
    kinds = {"rq_id": np.uint8, "rq_sha256": np.uint8, "rq_odds": np.float32}
    if any(a[k].dtype != t for k, t in kinds.items()):
        raise ValueError(f"{path}: the request-id arrays have the wrong types")
    n = len(a["rq_version"])
    ends = (a["rq_id_end"], a["rq_odds_end"])
    sizes = (len(a["rq_id"]), len(a["rq_odds"]))
    if len(a["rq_created"]) != n or any(len(e) != n for e in ends) or a["rq_sha256"].shape != (n, 32):
        raise ValueError(f"{path}: the request-id arrays have different lengths")
    for e, size in zip(ends, sizes):
        if n and (np.any(np.diff(e) < 0) or e[0] < 0 or e[-1] != size):
            raise ValueError(f"{path}: the request-id arrays' offsets do not match their data")
    raw = a["rq_id"].tobytes()
    out = []
    start_id = start_odds = 0
    for i in range(n):
        end_id, end_odds = int(a["rq_id_end"][i]), int(a["rq_odds_end"][i])
        try:
            rid = raw[start_id:end_id].decode()
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: a stored request id is not UTF-8") from exc
        odds = a["rq_odds"][start_odds:end_odds].astype(np.float32)
        digest = a["rq_sha256"][i].tobytes()
        out.append((rid, Answer(int(a["rq_version"][i]), float(a["rq_created"][i]), odds, digest)))
        start_id, start_odds = end_id, end_odds
    return out
