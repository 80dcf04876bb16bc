"""What the replicas of one model share in Redis besides the stream.

- results ``res:{request id}``: the apply result of a request (JSON), SET NX EX window: every
  replica that applies it writes the same, the first one stays;
- snapshots ``snap:{version}``: ``<u32 header length>`` + header JSON (format, version, entry
  id, digest, created, each array's dtype and shape) + the arrays' little-endian bytes,
  weights then eligibility; ``snaps``: sorted set entry id -> version. Written together by one
  script, SET NX: two replicas writing the same version is harmless;
- ``digest``: hash version -> sha256 of the state, HSETNX: a different value already there
  at that version means the replicas diverged;
- ``replicas``: hash replica id -> JSON {entry_id, version, time}; times are Redis's clock,
  so hosts with skewed clocks agree on who is live;
- ``trimlock``: SET NX EX, so one replica at a time trims;
- ``pins``: hash rollback entry id -> the snapshot versions its rebuild reads (written by the
  append script); those snapshots are not pruned, nor the stream after them trimmed, until
  every live replica applied the rollback and a newer snapshot lets new replicas skip it;
- ``artifact``: sha256 of the model file the stream started from (SET NX): a replica whose
  file differs refuses the stream (it would replay the updates onto other weights);
- ``wantsnap``: an entry id a replica needs a snapshot at or after (SET EX): a serving replica
  past it writes one (a replica that cannot rebuild a rollback recovers from it).
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import redis.asyncio as aioredis

from ..storage.snapshots import state_digest
from .redis_conn import model_key, translate_errors
from .stream import parse_id

__all__ = ["Heartbeat", "SharedState", "Snapshot", "SnapshotRef", "decode_snapshot", "encode_snapshot", "trim_floor"]

SNAPSHOT_FORMAT = 1
_LEN = struct.Struct("<I")

# KEYS: snap:{v}, snaps; ARGV: value, entry id, version. 1 if written, 0 if that version exists.
_PUT_SNAPSHOT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
  return 1
end
return 0
"""

# KEYS: snaps, pins, the snapshot keys; ARGV: their versions. Deletes those not pinned now
# (values and index), in one step with the check (see the append script in stream.py);
# returns the versions deleted.
_PRUNE = """
local held = {}
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do
  for x in string.gmatch(v, '[^,]+') do held[x] = true end
end
local gone = {}
for i = 3, #KEYS do
  local v = ARGV[i - 2]
  if not held[v] then
    redis.call('DEL', KEYS[i])
    redis.call('ZREMRANGEBYSCORE', KEYS[1], v, v)
    table.insert(gone, v)
  end
end
return gone
"""

# KEYS: digest; ARGV: version, digest. nil if published or equal, else the other digest.
_PUBLISH_DIGEST = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then return false end
local other = redis.call('HGET', KEYS[1], ARGV[1])
if other == ARGV[2] then return false end
return other
"""

# KEYS: replicas; ARGV: replica id, entry id, version. Stamped with Redis's clock.
_BEAT = """
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], string.format('{"entry_id":"%s","version":%d,"time":%d.%06d}',
           ARGV[2], tonumber(ARGV[3]), tonumber(t[1]), tonumber(t[2])))
return 1
"""


@dataclass(frozen=True, slots=True)
class SnapshotRef:
    version: int
    entry_id: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The learning state after applying the stream up to ``entry_id``, at ``version``;
    ``digest`` = :func:`state_digest` of the arrays; ``created`` unix seconds."""

    version: int
    entry_id: str
    digest: str
    created: float
    weights: list[np.ndarray]
    eligibility: list[np.ndarray]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A replica's last report: the entry it applied, its version, Redis's time (s)."""

    entry_id: str
    version: int
    time: float


def encode_snapshot(s: Snapshot) -> bytes:
    arrays = [np.asarray(a) for a in (*s.weights, *s.eligibility)]
    arrays = [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")) for a in arrays]
    header = {
        "format": SNAPSHOT_FORMAT,
        "version": s.version,
        "entry_id": s.entry_id,
        "digest": s.digest,
        "created": s.created,
        "weights": len(s.weights),
        "arrays": [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((_LEN.pack(len(head)), head, *(a.tobytes() for a in arrays)))


def decode_snapshot(data: bytes) -> Snapshot:
    """Inverse of :func:`encode_snapshot`; ``ValueError`` if malformed or if the arrays do not
    hash to the digest in the header."""
    try:
        (n,) = _LEN.unpack_from(data)
        header = json.loads(data[_LEN.size : _LEN.size + n])
        if header["format"] != SNAPSHOT_FORMAT:
            raise ValueError(f"snapshot of format {header['format']}, this server reads {SNAPSHOT_FORMAT}")
        off, arrays = _LEN.size + n, []
        for spec in header["arrays"]:
            dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            if off + count * dtype.itemsize > len(data):
                raise ValueError("snapshot truncated")
            arrays.append(np.frombuffer(data, dtype=dtype, count=count, offset=off).reshape(shape).copy())
            off += count * dtype.itemsize
    except (struct.error, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed snapshot: {exc}") from exc
    if off != len(data):
        raise ValueError(f"snapshot holds {len(data) - off} bytes after its arrays")
    k = header["weights"]
    s = Snapshot(header["version"], header["entry_id"], header["digest"], header["created"], arrays[:k], arrays[k:])
    actual = state_digest(s.weights, s.eligibility)
    if actual != s.digest:
        raise ValueError(f"snapshot at version {s.version} is damaged: digest {s.digest}, its arrays hash to {actual}")
    return s


def trim_floor(applied_ids: Iterable[str], oldest_snapshot_id: str | None) -> str | None:
    """The lowest entry id the stream must keep: the oldest of the live replicas' applied ids
    and the oldest kept snapshot's id; None (trim nothing) without a snapshot, as a replica
    bootstrapping then replays the stream from its start."""
    if oldest_snapshot_id is None:
        return None
    return min((oldest_snapshot_id, *applied_ids), key=parse_id)


def _text(b: bytes | str) -> str:
    return b.decode() if isinstance(b, bytes) else b


class SharedState:
    """Results, snapshots, digests, heartbeats and the trim lock of model ``model``.
    ``window_s``: how long results are kept (the idempotency window); heartbeats older than
    ``forget_after_s`` are deleted. Redis failures raise ``Unavailable``."""

    def __init__(
        self, redis: aioredis.Redis, prefix: str, model: str, *, window_s: int = 86_400, forget_after_s: int = 86_400
    ) -> None:
        self.redis, self.prefix, self.model = redis, prefix, model
        self.window_s, self.forget_after_s = window_s, forget_after_s
        self._snaps, self._digest = self._key("snaps"), self._key("digest")
        self._replicas, self._trimlock = self._key("replicas"), self._key("trimlock")
        self._pins, self._want = self._key("pins"), self._key("wantsnap")
        self._put_snapshot = redis.register_script(_PUT_SNAPSHOT)
        self._publish = redis.register_script(_PUBLISH_DIGEST)
        self._beat = redis.register_script(_BEAT)
        self._prune = redis.register_script(_PRUNE)

    def _key(self, *parts: str) -> str:
        return model_key(self.prefix, self.model, *parts)

    # results -----------------------------------------------------------------------------
    @translate_errors
    async def put_result(self, request_id: str, result: dict) -> bool:
        """Store ``result`` (JSON-able) of ``request_id`` unless one is there; True if stored."""
        value = json.dumps(result, separators=(",", ":"))
        return bool(await self.redis.set(self._key("res", request_id), value, nx=True, ex=self.window_s))

    @translate_errors
    async def get_result(self, request_id: str) -> dict | None:
        value = await self.redis.get(self._key("res", request_id))
        return None if value is None else json.loads(value)

    # snapshots ---------------------------------------------------------------------------
    @translate_errors
    async def put_snapshot(
        self, version: int, entry_id: str, weights: list[np.ndarray], eligibility: list[np.ndarray], digest: str
    ) -> bool:
        """Share the state at ``version`` (after ``entry_id``) unless that version is shared;
        True if this call wrote it."""
        parse_id(entry_id)
        value = encode_snapshot(Snapshot(version, entry_id, digest, time.time(), weights, eligibility))
        keys = [self._key("snap", str(version)), self._snaps]
        return bool(await self._put_snapshot(keys, [value, entry_id, version]))

    @translate_errors
    async def snapshots(self) -> list[SnapshotRef]:
        """The shared snapshots, oldest first."""
        pairs = await self.redis.zrange(self._snaps, 0, -1, withscores=True)
        return [SnapshotRef(int(v), _text(eid)) for eid, v in pairs]

    @translate_errors
    async def get_snapshot(self, version: int) -> Snapshot | None:
        """The snapshot at exactly ``version`` (None if absent); ``ValueError`` if damaged."""
        data = await self.redis.get(self._key("snap", str(version)))
        return None if data is None else decode_snapshot(data)

    async def newest_at_or_below(self, version: int) -> Snapshot | None:
        """The newest snapshot at ``version`` or before it, None if there is none."""
        for ref in reversed(await self.snapshots()):
            if ref.version <= version and (s := await self.get_snapshot(ref.version)) is not None:
                return s  # None: pruned between the listing and the read; try an older one
        return None

    async def newest(self) -> Snapshot | None:
        return await self.newest_at_or_below(2**63 - 1)

    @translate_errors
    async def prune(self, keep: int, replica_timeout_s: float = 30.0) -> list[int]:
        """Delete all but the newest ``keep`` snapshots (values and index), except those a
        pending rollback still needs (:meth:`pinned`); their versions."""
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        pinned = await self.pinned(replica_timeout_s)
        old = [(eid, int(v)) for eid, v in await self.redis.zrange(self._snaps, 0, -(keep + 1), withscores=True)]
        old = [v for _, v in old if v not in pinned]
        if not old:
            return []
        # the delete re-reads the pins: a rollback appended since pinned() keeps its snapshots
        keys = [self._snaps, self._pins, *(self._key("snap", str(v)) for v in old)]
        return [int(v) for v in await self._prune(keys, old)]

    @translate_errors
    async def pinned(self, replica_timeout_s: float) -> set[int]:
        """The snapshot versions pending rollbacks still need (0: the artefact, so the stream
        from its start). A pin is released once every live replica applied its rollback and a
        snapshot after it exists (a new replica starts past it); a replica dead longer than
        ``replica_timeout_s`` that comes back and finds its base gone re-bootstraps instead."""
        pins = {_text(k): _text(v) for k, v in (await self.redis.hgetall(self._pins)).items()}
        if not pins:
            return set()
        snaps = await self.snapshots()
        applied = [hb.entry_id for hb in (await self.live(replica_timeout_s)).values()]
        newest = parse_id(snaps[-1].entry_id) if snaps else (0, 0)
        keep, done = set(), []
        for entry_id, versions in pins.items():
            pos = parse_id(entry_id)
            if newest >= pos and all(parse_id(a) >= pos for a in applied):
                done.append(entry_id)
            else:
                keep.update(int(v) for v in versions.split(","))
        if done:
            await self.redis.hdel(self._pins, *done)
        return keep

    # artefact, snapshot requests ---------------------------------------------------------
    @translate_errors
    async def claim_artifact(self, sha256: str) -> str | None:
        """Record ``sha256`` as the artefact of this stream unless one is recorded; None if it
        matches, else the recorded one."""
        if await self.redis.set(self._key("artifact"), sha256, nx=True):
            return None
        other = _text(await self.redis.get(self._key("artifact")) or b"")
        return None if other in ("", sha256) else other

    @translate_errors
    async def want_snapshot(self, after_id: str, ttl_s: int = 60) -> None:
        """Ask the serving replicas for a snapshot taken at or after ``after_id``."""
        parse_id(after_id)
        await self.redis.set(self._want, after_id, ex=ttl_s)

    @translate_errors
    async def wanted_snapshot(self) -> str | None:
        """The entry id a snapshot is wanted at or after (None if none is wanted)."""
        value = await self.redis.get(self._want)
        return None if value is None else _text(value)

    @translate_errors
    async def snapshot_given(self, entry_id: str) -> None:
        """A snapshot at ``entry_id`` was shared: forget the request if it is satisfied."""
        wanted = await self.wanted_snapshot()
        if wanted is not None and parse_id(wanted) <= parse_id(entry_id):
            await self.redis.delete(self._want)

    # digests -----------------------------------------------------------------------------
    @translate_errors
    async def publish_and_check(self, version: int, digest: str) -> str | None:
        """Publish ``digest`` of the state at ``version``; None if it agrees with what other
        replicas published (or is the first), else the different digest already there."""
        other = await self._publish([self._digest], [version, digest])
        return None if other is None else _text(other)

    @translate_errors
    async def digest_at(self, version: int) -> str | None:
        value = await self.redis.hget(self._digest, str(version))
        return None if value is None else _text(value)

    @translate_errors
    async def prune_digests(self, below_version: int) -> int:
        """Forget the digests of versions below ``below_version``; how many."""
        old = [v for v in await self.redis.hkeys(self._digest) if int(v) < below_version]
        return int(await self.redis.hdel(self._digest, *old)) if old else 0

    # heartbeats and trimming -------------------------------------------------------------
    @translate_errors
    async def beat(self, replica_id: str, entry_id: str, version: int) -> None:
        """Report that ``replica_id`` applied the stream up to ``entry_id``, at ``version``."""
        parse_id(entry_id)
        await self._beat([self._replicas], [replica_id, entry_id, version])

    @translate_errors
    async def leave(self, replica_id: str) -> None:
        """Remove ``replica_id``'s heartbeat (a clean shutdown no longer holds the trim floor)."""
        await self.redis.hdel(self._replicas, replica_id)

    @translate_errors
    async def live(self, timeout_s: float) -> dict[str, Heartbeat]:
        """Replicas whose last heartbeat is less than ``timeout_s`` old (Redis's clock)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._replicas)
            pipe.time()
            beats, (sec, usec) = await pipe.execute()
        now, live, dead = sec + usec / 1e6, {}, []
        for rid, value in beats.items():
            d = json.loads(value)
            hb = Heartbeat(d["entry_id"], int(d["version"]), float(d["time"]))
            if now - hb.time < timeout_s:
                live[_text(rid)] = hb
            elif now - hb.time > self.forget_after_s:
                dead.append(rid)
        if dead:
            await self.redis.hdel(self._replicas, *dead)
        return live

    async def trim_floor(self, timeout_s: float) -> str | None:
        """:func:`trim_floor` of the live replicas and the oldest shared snapshot; None while a
        pending rollback rebuilds from the artefact (the stream from its start)."""
        if 0 in await self.pinned(timeout_s):
            return None
        snaps = await self.snapshots()
        live = await self.live(timeout_s)
        return trim_floor((hb.entry_id for hb in live.values()), snaps[0].entry_id if snaps else None)

    @translate_errors
    async def try_trim_lock(self, holder: str, ttl_s: int) -> bool:
        """Take the trim lock for ``ttl_s`` seconds unless someone holds it (not released:
        it also spaces trims out)."""
        return bool(await self.redis.set(self._trimlock, holder, nx=True, ex=ttl_s))
