"""Settings of replicated learning (``sjff serve --replication ...``; see docs/server.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ReplicationOptions"]


@dataclass(frozen=True)
class ReplicationOptions:
    """How one replica follows the shared update streams.

    ``wait_replicas``: Redis replicas that must hold an entry before it is acknowledged (WAIT;
    0: the primary's AOF only); ``max_lag``: entries behind the stream's end above which a
    model reports NOT_SERVING; ``snapshot_every``: versions between shared snapshots;
    ``digest_every``: versions between digest checks (0: never); ``idempotency_window_s``:
    how long a request id and its answer are kept."""

    replica_id: str
    prefix: str = "sjff"
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000
    max_lag: int = 100
    snapshot_every: int = 1000
    snapshots_keep: int = 3
    digest_every: int = 100
    idempotency_window_s: float = 86400.0
    replica_timeout_s: float = 30.0
    heartbeat_s: float = 1.0
    trim_every_s: float = 10.0
    max_group: int = 64

    def __post_init__(self) -> None:
        if not self.replica_id:
            raise ValueError("ReplicationOptions.replica_id must not be empty")
        for name, low in (("snapshot_every", 1), ("snapshots_keep", 1), ("max_group", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"ReplicationOptions.{name} must be at least {low}, got {getattr(self, name)}")
        for name in ("wait_replicas", "max_lag", "digest_every", "wait_timeout_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"ReplicationOptions.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("idempotency_window_s", "replica_timeout_s", "heartbeat_s", "trim_every_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"ReplicationOptions.{name} must be finite and > 0, got {v}")
