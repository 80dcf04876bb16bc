"""Replicated serving over Redis: the per-model update stream (the one order of updates),
and what replicas share beside it (results, snapshots, digests, heartbeats).

Redis must keep what it acknowledged: ``appendonly yes`` and ``appendfsync always``
(:func:`check_durability` reports otherwise). No gRPC here: failures are
:class:`sjff_server.errors.Unavailable`.
"""

from .redis_conn import check_durability, connect, model_key
from .shared import Heartbeat, SharedState, Snapshot, SnapshotRef, trim_floor
from .stream import Entry, ReplicationLog, entry_position, parse_id

__all__ = [
    "Entry",
    "Heartbeat",
    "ReplicationLog",
    "SharedState",
    "Snapshot",
    "SnapshotRef",
    "check_durability",
    "connect",
    "entry_position",
    "model_key",
    "parse_id",
    "trim_floor",
]
