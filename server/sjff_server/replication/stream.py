"""A model's update stream in Redis: the one order of updates every replica applies.

Entry fields: ``u`` the update bytes (:func:`sjff_server.storage.records.encode_update`),
``r`` the request id (may be empty), ``k`` the kind (``update`` | ``rollback``), ``v`` the
target version of a rollback and ``b`` the version of the shared snapshot it is rebuilt
from (0: the artefact), chosen by the replica that accepted it; that snapshot (and any
other the rebuild needs, ``pins``) is pinned against pruning until every replica is past
the rollback (:meth:`SharedState.prune`).

Entry ids are ``<ms>-<n>``: ``ms`` Redis's clock (never going back) and ``n`` the entry's
position in the stream, 1, 2, 3, ... (a counter in the ``seq`` hash, kept by the append
script). So the lag behind the head is a subtraction of two ids: O(1), exact, and it costs
no transfer of entries (entries carry images, so counting them with XRANGE would move
megabytes) and stays right after trims (XLEN would not).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from ..errors import Unavailable, VersionConflict
from ..storage.records import Update, decode_update, encode_update
from .redis_conn import model_key, retrying, translate_errors

__all__ = ["Entry", "ReplicationLog", "entry_position", "parse_id"]

# KEYS: log, seq, pins, snaps, the keys of the snapshots a rollback reads (ARGV[3] of them)[,
# rid]; ARGV: rid window (s), pin ('' or the snapshot versions a rollback needs), the number
# of snapshot keys, the oldest pinned version ('': no check), then the entry's field/value
# pairs. Returns {entry id, 1} after an XADD, {the id stored under rid, 0} for a repeated
# request, or {'', -1} (nothing written) when a snapshot the rollback reads, or the stream
# after the oldest of them, is gone: pruned or trimmed between planning and this append,
# which would leave the rollback unrestorable everywhere. The pin is written here, in the
# same step as the check, so a later prune (its delete re-reads the pins: shared.py) keeps
# them. Atomic, and with appendfsync always its writes are on disk before the reply.
_APPEND = """
local ns = tonumber(ARGV[3])
local rid = KEYS[5 + ns]
if rid then
  local old = redis.call('GET', rid)
  if old then return {old, 0} end
end
for i = 5, 4 + ns do
  if redis.call('EXISTS', KEYS[i]) == 0 then return {'', -1} end
end
if ARGV[4] ~= '' then
  local after = 0
  if ARGV[4] ~= '0' then
    local m = redis.call('ZRANGEBYSCORE', KEYS[4], ARGV[4], ARGV[4], 'LIMIT', 0, 1)
    if not m[1] then return {'', -1} end
    after = tonumber(string.match(m[1], '-(%d+)$'))
  end
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  local nxt
  if first[1] then nxt = tonumber(string.match(first[1][1], '-(%d+)$'))
  else nxt = tonumber(redis.call('HGET', KEYS[2], 'n') or '0') + 1 end
  if nxt > after + 1 then return {'', -1} end
end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('HGET', KEYS[2], 'ms') or '0')
if ms < last then ms = last end
local n = redis.call('HINCRBY', KEYS[2], 'n', 1)
redis.call('HSET', KEYS[2], 'ms', string.format('%d', ms))
local id = string.format('%d-%d', ms, n)
redis.call('XADD', KEYS[1], id, unpack(ARGV, 5))
if ARGV[2] ~= '' then redis.call('HSET', KEYS[3], id, ARGV[2]) end
if rid then redis.call('SET', rid, id, 'EX', ARGV[1]) end
return {id, 1}
"""
_BASE_GONE = (
    "the snapshot this rollback is rebuilt from was pruned (or the stream after it trimmed) meanwhile by another "
    "replica; nothing was appended: retry"
)

# KEYS: log; ARGV: an entry id. Returns {id of the last entry or '', id of the first entry
# after ARGV[1] or '', Redis time in ms}: ids only, the entries stay in Redis.
_LAG = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local nxt = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', 1)
local t = redis.call('TIME')
return {last[1] and last[1][1] or '', nxt[1] and nxt[1][1] or '',
        string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))}
"""


def parse_id(entry_id: str) -> tuple[int, int]:
    """``"ms-n"`` -> ``(ms, n)``, the order of stream ids (``ValueError`` if malformed)."""
    ms, _, n = entry_id.partition("-")
    try:
        return int(ms), int(n or 0)
    except ValueError:
        raise ValueError(f"not a stream entry id: {entry_id!r}") from None


def entry_position(entry_id: str) -> int:
    """The position (1, 2, ...) of an entry appended by :class:`ReplicationLog`; 0 for ``0-0``."""
    return parse_id(entry_id)[1]


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: ``kind`` ``"update"`` (with ``update``) or ``"rollback"`` (with
    ``rollback_to`` and ``base``, the snapshot version to rebuild it from); ``request_id``
    empty when the client sent none."""

    id: str
    kind: str
    update: Update | None
    rollback_to: int | None
    request_id: str
    base: int | None = None

    @property
    def position(self) -> int:
        return entry_position(self.id)

    @property
    def millis(self) -> int:
        """Redis's clock (ms since the epoch) when the entry was appended."""
        return parse_id(self.id)[0]


def _text(b: bytes | str) -> str:
    return b.decode() if isinstance(b, bytes) else b


def _checked(entry_id: bytes | str, appended: int) -> tuple[str, bool]:
    """The append script's reply as ``(entry id, appended?)``; its refusal as :class:`VersionConflict`."""
    if int(appended) < 0:
        raise VersionConflict(_BASE_GONE)
    return _text(entry_id), bool(appended)


def _entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Entry:
    eid, kind = _text(entry_id), _text(fields.get(b"k", b""))
    rid = _text(fields.get(b"r", b""))
    if kind == "update":
        return Entry(eid, kind, decode_update(fields[b"u"]), None, rid)
    if kind == "rollback":
        return Entry(eid, kind, None, int(fields[b"v"]), rid, int(fields.get(b"b", b"0")))
    raise ValueError(f"stream entry {eid} has unknown kind {kind!r}: a newer server wrote it, upgrade this one")


class ReplicationLog:
    """The stream of model ``model`` under ``prefix``. ``idempotency_window_s``: how long a
    request id is remembered; ``wait_replicas`` > 0: each append also waits (WAIT, up to
    ``wait_timeout_ms``) until that many Redis replicas hold it. Redis failures raise
    :class:`Unavailable`."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        model: str,
        *,
        idempotency_window_s: int = 86_400,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1_000,
    ) -> None:
        if idempotency_window_s < 1 or wait_replicas < 0 or wait_timeout_ms < 0:
            raise ValueError(
                "idempotency_window_s must be >= 1, wait_replicas and wait_timeout_ms >= 0, got "
                f"{idempotency_window_s}, {wait_replicas}, {wait_timeout_ms}"
            )
        self.redis, self.prefix, self.model = redis, prefix, model
        self.key = model_key(prefix, model, "log")
        self._seq = model_key(prefix, model, "seq")
        self._pins = model_key(prefix, model, "pins")
        self._snaps = model_key(prefix, model, "snaps")
        self.window_s, self.wait_replicas, self.wait_timeout_ms = idempotency_window_s, wait_replicas, wait_timeout_ms
        self._append = redis.register_script(_APPEND)
        self._lag = redis.register_script(_LAG)
        timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
        # a BLOCK longer than the socket timeout would end as a client-side timeout
        self._max_block_ms = max(1, int(timeout * 1000) - 500) if timeout else None

    def rid_key(self, request_id: str) -> str:
        return model_key(self.prefix, self.model, "rid", request_id)

    async def append(self, update: Update, request_id: str) -> tuple[str, bool]:
        """Append ``update``; ``(entry id, True)``, or ``(the id appended before, False)`` when
        ``request_id`` was appended within the window (nothing appended then)."""
        return await self._add({"u": encode_update(update), "k": "update"}, request_id)

    async def append_rollback(
        self, version: int, request_id: str, base: int = 0, pins: tuple[int, ...] = ()
    ) -> tuple[str, bool]:
        """Append a rollback to ``version``, rebuilt from the snapshot at ``base`` (0: the
        artefact); ``pins``: the snapshot versions the rebuild reads (kept until every replica
        applied it); as :meth:`append`."""
        if not 0 <= base <= version:
            raise ValueError(f"rollback needs 0 <= base <= version, got base {base}, version {version}")
        versions = sorted({base, *pins})
        fields: dict[str, bytes | str] = {"k": "rollback", "v": str(version), "b": str(base)}
        return await self._add(fields, request_id, ",".join(map(str, versions)))

    @translate_errors
    async def _add(self, fields: dict[str, bytes | str], request_id: str, pin: str = "") -> tuple[str, bool]:
        # with a request id the append is idempotent (a repeat returns the first entry's id), so a
        # lost connection is tried once more; without one it might append twice: never resent
        add = retrying(1)(self._add_once) if request_id else self._add_once
        return await add(fields, request_id, pin)

    async def _add_once(self, fields: dict[str, bytes | str], request_id: str, pin: str) -> tuple[str, bool]:
        versions = [int(v) for v in pin.split(",")] if pin else []
        snaps = [model_key(self.prefix, self.model, "snap", str(v)) for v in versions if v > 0]
        keys = [self.key, self._seq, self._pins, self._snaps, *snaps]
        keys += [self.rid_key(request_id)] if request_id else []
        # versions grow with stream position: the oldest pinned one needs the longest stretch of stream
        oldest = str(versions[0]) if versions else ""
        args: list[bytes | str | int] = [self.window_s, pin, len(snaps), oldest, "r", request_id]
        for k, v in fields.items():
            args += [k, v]
        if not self.wait_replicas:
            eid, appended = await self._append(keys, args)
            return _checked(eid, appended)
        # WAIT counts the writes of its own connection: send both on one (a pipeline)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.eval(_APPEND, len(keys), *keys, *args)
            pipe.wait(self.wait_replicas, self.wait_timeout_ms)
            (eid, appended), acked = await pipe.execute()
        _checked(eid, appended)
        if acked < self.wait_replicas:
            raise Unavailable(
                f"replication: only {acked} of {self.wait_replicas} Redis replicas acknowledged entry "
                f"{_text(eid)} within {self.wait_timeout_ms} ms; it stays in the stream and will be applied: "
                "retry with the same request id for its result"
            )
        return _text(eid), bool(appended)

    @translate_errors
    @retrying()
    async def read(self, after_id: str, count: int, block_ms: int | None = None) -> list[Entry]:
        """Up to ``count`` entries after ``after_id`` (``"0-0"``: from the start), in stream
        order; waits up to ``block_ms`` (None: not at all; capped below the socket timeout)
        when there are none, then returns ``[]``."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        block = None
        if block_ms is not None:
            block = max(1, block_ms if self._max_block_ms is None else min(block_ms, self._max_block_ms))
        reply = await self.redis.xread({self.key: after_id}, count=count, block=block)
        return [_entry(eid, fields) for _, entries in reply for eid, fields in entries]

    @translate_errors
    @retrying()
    async def entry(self, entry_id: str) -> Entry | None:
        """The entry ``entry_id`` (None: trimmed)."""
        reply = await self.redis.xrange(self.key, entry_id, entry_id, count=1)
        return _entry(*reply[0]) if reply else None

    @translate_errors
    @retrying()
    async def last_id(self) -> str:
        """The id of the newest entry, ``"0-0"`` if none was ever appended."""
        seq = await self.redis.hmget(self._seq, ["ms", "n"])
        return "0-0" if seq[1] is None else f"{int(seq[0])}-{int(seq[1])}"

    @translate_errors
    @retrying()
    async def lag(self, after_id: str) -> tuple[int, float]:
        """``(entries, seconds)`` behind the head for a replica that applied ``after_id``:
        the entries appended after it, and the age (Redis's clock) of the oldest of them."""
        last, nxt, now_ms = (_text(x) for x in await self._lag([self.key], [after_id]))
        if not last or not nxt:
            return 0, 0.0
        behind = entry_position(last) - entry_position(after_id)
        return max(behind, 1), max(0.0, (int(now_ms) - parse_id(nxt)[0]) / 1000)

    @translate_errors
    async def trim(self, min_id: str) -> int:
        """Delete the entries before ``min_id`` (XTRIM MINID, exact); how many went."""
        parse_id(min_id)
        return int(await self.redis.xtrim(self.key, minid=min_id, approximate=False))

    @translate_errors
    @retrying()
    async def length(self) -> int:
        """Entries held now (XLEN: trimmed ones not counted)."""
        return int(await self.redis.xlen(self.key))
