"""The Redis side of replicated serving against a real redis-server: the update stream
(idempotent appends, order, lag, trim), shared state (snapshots, digests, results,
heartbeats, trim floor), connection (passwords, errors) and the update bytes of an entry."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest
import redis_utils
from redis_utils import RedisServer, require_redis_server
from sjff_server.errors import Unavailable, VersionConflict
from sjff_server.replication import (
    Entry,
    ReplicationLog,
    SharedState,
    check_durability,
    connect,
    entry_position,
    parse_id,
    trim_floor,
)
from sjff_server.storage.records import Update, decode_update, encode_update
from sjff_server.storage.snapshots import state_digest

MODEL = "mnist/1"
redis_server = redis_utils.redis_server  # the fixture: a started redis-server per test


def run(coro):
    return asyncio.run(coro)


def make_update(n: int = 3, d: int = 5, seed: int | None = 7, eta=None, expected=None, rng_seed: int = 0) -> Update:
    rng = np.random.default_rng(rng_seed)
    images = rng.random((n, d), dtype=np.float32)
    labels = rng.integers(0, 10, n).astype(np.int64)
    positive = (rng.random(n) > 0.5).astype(np.float32)
    return Update(images, labels, positive, seed, eta, expected)


def assert_same_update(a: Update, b: Update) -> None:
    assert a.images.dtype == b.images.dtype == np.float32 and a.images.tobytes() == b.images.tobytes()
    assert a.labels.dtype == b.labels.dtype == np.int64 and np.array_equal(a.labels, b.labels)
    assert b.positive.dtype == np.float32 and np.array_equal(a.positive, b.positive)
    assert (a.seed, a.eta, a.expected_version) == (b.seed, b.eta, b.expected_version)


async def session(server: RedisServer, fn, **log_options):
    """Run ``fn(log, shared, client)`` with a connected client, closed afterwards."""
    client = await connect(server.url)
    try:
        log = ReplicationLog(client, "t", MODEL, **log_options)
        return await fn(log, SharedState(client, "t", MODEL), client)
    finally:
        await client.aclose()


# -- the update bytes of an entry (pure) ------------------------------------------------------------


OPTIONAL = list(itertools.product([None, 0, 2**64 - 1], [None, 0.0, 0.25], [None, 0, 9]))


@pytest.mark.parametrize(("seed", "eta", "expected"), OPTIONAL)
def test_update_round_trip_every_optional_field(seed, eta, expected):
    u = make_update(seed=seed, eta=eta, expected=expected)
    assert_same_update(u, decode_update(encode_update(u)))


def test_update_round_trip_edge_shapes_and_values():
    for n, d in ((0, 4), (1, 1), (17, 784)):
        u = make_update(n, d)
        assert_same_update(u, decode_update(encode_update(u)))
    u = make_update(2, 3)
    weird = np.array([[np.nan, -0.0, np.inf], [1e-45, -np.inf, 3.4e38]], dtype=np.float32)
    back = decode_update(encode_update(Update(weird, u.labels, u.positive)))
    assert back.images.tobytes() == weird.tobytes()  # bit for bit, NaN and -0 included


def test_update_bytes_refused_when_malformed():
    data = encode_update(make_update(4, 6, seed=1, eta=0.5, expected=3))
    for cut in range(len(data)):
        with pytest.raises(ValueError, match="update entry"):
            decode_update(data[:cut])
    with pytest.raises(ValueError, match="expected"):
        decode_update(data + b"\0")
    with pytest.raises(ValueError, match="format 2"):
        decode_update(b"\x02" + data[1:])
    with pytest.raises(ValueError, match="unknown flags"):
        decode_update(data[:1] + b"\x08" + data[2:])
    u = make_update(3, 2)
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        encode_update(Update(u.images[0], u.labels, u.positive))
    with pytest.raises(ValueError, match="labels and positive"):
        encode_update(Update(u.images, u.labels[:2], u.positive))
    with pytest.raises(ValueError, match="u64"):
        encode_update(make_update(seed=-1))


def test_trim_floor_is_the_oldest_need():
    assert trim_floor(["5-9", "3-12"], None) is None  # no snapshot: bootstrap replays from the start
    assert trim_floor([], "7-20") == "7-20"
    assert trim_floor(["9-30", "8-25"], "7-20") == "7-20"
    assert trim_floor(["9-30", "6-19"], "7-20") == "6-19"
    assert trim_floor(["10-2", "9-30"], "10-1") == "9-30"  # compared as (ms, n), not as text
    assert parse_id("12-3") == (12, 3) and entry_position("0-0") == 0


# -- connection ----------------------------------------------------------------------------------


def test_password_in_url_refused():
    for url in ("redis://:secret@127.0.0.1:1/0", "redis://user:secret@127.0.0.1:1", "redis://h:1/0?password=x"):
        with pytest.raises(ValueError, match="--replication-password-file") as info:
            run(connect(url))
        assert "secret" not in str(info.value)


def test_bad_urls_refused(tmp_path):
    with pytest.raises(ValueError, match="redis:// or rediss://"):
        run(connect("http://127.0.0.1:6379"))
    with pytest.raises(ValueError, match="database number"):
        run(connect("redis://127.0.0.1:6379/zero"))
    with pytest.raises(ValueError, match="need a rediss:// URL"):
        run(connect("redis://127.0.0.1:6379/0", ca=tmp_path / "ca.pem"))
    with pytest.raises(ValueError, match="does not exist"):
        run(connect("rediss://127.0.0.1:6379/0", ca=tmp_path / "ca.pem"))
    with pytest.raises(ValueError, match="cannot read the Redis password file"):
        run(connect("redis://127.0.0.1:6379/0", password_file=tmp_path / "missing"))


def test_unreachable_redis_is_unavailable(tmp_path):
    require_redis_server()
    server = RedisServer(tmp_path)  # a free port nobody listens on
    with pytest.raises(Unavailable, match=rf"Redis unreachable at redis://127.0.0.1:{server.port}/0"):
        run(connect(server.url, timeout_s=2))


def test_password_file(tmp_path, monkeypatch):
    require_redis_server()
    (tmp_path / "pw").write_text("s3cret with spaces\n")
    with RedisServer(tmp_path / "redis", password="s3cret with spaces") as server:
        with pytest.raises(Unavailable, match="refused the credentials.*--replication-password-file"):
            run(connect(server.url))

        async def db3(password_file):
            client = await connect(server.url.replace("/0", "/3"), password_file)
            try:
                await client.set("k", "v")
            finally:
                await client.aclose()

        run(db3(tmp_path / "pw"))
        assert server.client(db=3).get("k") == b"v" and server.client(db=0).get("k") is None
        monkeypatch.setenv("SJFF_REDIS_PASSWORD_FILE", str(tmp_path / "pw"))
        run(db3(None))
        (tmp_path / "bad").write_text("wrong")
        with pytest.raises(Unavailable, match="refused the credentials"):
            run(connect(server.url, tmp_path / "bad"))


def test_durability_settings_checked(redis_server):
    async def check(log, shared, client):
        assert await check_durability(client) == []
        await client.config_set("appendfsync", "everysec")
        return await check_durability(client)

    assert "appendfsync always" in " ".join(run(session(redis_server, check)))


# -- the stream -----------------------------------------------------------------------------------


def test_append_is_idempotent_per_request_id(redis_server):
    async def go(log, shared, client):
        first = await log.append(make_update(rng_seed=1), "req-1")
        again = await log.append(make_update(rng_seed=2), "req-1")  # a retry (even with other bytes)
        other = await log.append(make_update(rng_seed=3), "req-2")
        anon = [await log.append(make_update(rng_seed=4), "") for _ in range(2)]  # no id: no dedup
        rb = await log.append_rollback(1, "req-3")
        rb_again = await log.append_rollback(1, "req-3")
        ttl = await client.ttl(log.rid_key("req-1"))
        return first, again, other, anon, rb, rb_again, await log.read("0-0", 100), ttl

    first, again, other, anon, rb, rb_again, entries, ttl = run(session(redis_server, go))
    assert first[1] and other[1] and anon[0][1] and anon[1][1] and rb[1]
    assert again == (first[0], False) and rb_again == (rb[0], False)
    assert [e.id for e in entries] == [first[0], other[0], anon[0][0], anon[1][0], rb[0]]
    assert [e.position for e in entries] == [1, 2, 3, 4, 5]
    assert [e.request_id for e in entries] == ["req-1", "req-2", "", "", "req-3"]
    assert_same_update(entries[0].update, make_update(rng_seed=1))
    assert entries[4] == Entry(rb[0], "rollback", None, 1, "req-3", base=0)
    assert 86_000 < ttl <= 86_400


def test_read_in_order_lag_and_trim(redis_server):
    async def go(log, shared, client):
        ids = [(await log.append(make_update(seed=i), f"r{i}"))[0] for i in range(10)]
        assert await log.last_id() == ids[-1]
        got, after = [], "0-0"
        while chunk := await log.read(after, 3, block_ms=None):
            got += chunk
            after = chunk[-1].id
        assert [e.id for e in got] == ids and [e.update.seed for e in got] == list(range(10))
        assert await log.read(ids[-1], 5, block_ms=20) == []  # blocks 20 ms, then nothing
        lags = [(await log.lag(i))[0] for i in ("0-0", ids[0], ids[6], ids[-1])]
        assert lags == [10, 9, 3, 0]
        entries, seconds = await log.lag(ids[4])
        assert entries == 5 and 0 <= seconds < 60
        assert await log.trim(ids[4]) == 4  # MINID keeps ids[4] itself
        assert [e.id for e in await log.read("0-0", 100)] == ids[4:]
        assert (await log.lag(ids[6]))[0] == 3  # positions are not changed by a trim
        more = (await log.append(make_update(), "r10"))[0]
        assert parse_id(more) > parse_id(ids[-1]) and entry_position(more) == 11
        return True

    assert run(session(redis_server, go))


def test_wait_for_redis_replicas_is_unavailable_without_them(redis_server):
    async def go(log, shared, client):
        with pytest.raises(Unavailable, match="only 0 of 1 Redis replicas"):
            await log.append(make_update(), "w1")
        return await log.read("0-0", 10)

    entries = run(session(redis_server, go, wait_replicas=1, wait_timeout_ms=10))
    assert [e.request_id for e in entries] == ["w1"]  # appended all the same: a retry finds it


def test_redis_down_is_unavailable(redis_server):
    async def go(log, shared, client):
        await log.append(make_update(), "a")
        redis_server.kill9()
        with pytest.raises(Unavailable, match="replication: Redis unreachable"):
            await log.append(make_update(), "b")
        with pytest.raises(Unavailable, match="replication: Redis unreachable"):
            await shared.get_result("a")
        redis_server.start()
        return await log.append(make_update(), "b")  # the same client works again

    eid, appended = run(session(redis_server, go))
    assert appended and entry_position(eid) == 2


def test_acknowledged_appends_survive_kill9_of_redis(redis_server):
    async def append_all(log, shared, client):
        return [await log.append(make_update(seed=i, rng_seed=i), f"k{i}") for i in range(50)]

    acked = run(session(redis_server, append_all))
    redis_server.kill9()  # no shutdown, no save: only the AOF (fsynced per write) is left
    redis_server.start()

    async def check(log, shared, client):
        entries = await log.read("0-0", 1000)
        again = await log.append(make_update(), "k7")  # the idempotency keys survived too
        return entries, again

    entries, again = run(session(redis_server, check))
    assert [e.id for e in entries] == [eid for eid, _ in acked]
    for i, e in enumerate(entries):
        assert_same_update(e.update, make_update(seed=i, rng_seed=i))
    assert again == (acked[7][0], False)


# -- shared state ---------------------------------------------------------------------------------


def state(seed: int):
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)]
    weights[0][0, :3] = [np.nan, -0.0, np.inf]
    eligibility = [rng.random((4, 6), dtype=np.float32), rng.random((3, 4), dtype=np.float32)]
    return weights, eligibility, state_digest(weights, eligibility)


def test_snapshots_round_trip_bit_exact_and_prune(redis_server):
    async def go(log, shared, client):
        for v in (10, 20, 30, 40):
            w, e, d = state(v)
            assert await shared.put_snapshot(v, f"{v}-{v}", w, e, d)
        w, e, d = state(99)
        assert not await shared.put_snapshot(20, "21-21", w, e, d)  # another replica, same version
        assert [(r.version, r.entry_id) for r in await shared.snapshots()] == [
            (10, "10-10"),
            (20, "20-20"),
            (30, "30-30"),
            (40, "40-40"),
        ]
        s = await shared.newest_at_or_below(35)
        w, e, d = state(30)
        assert (s.version, s.entry_id, s.digest) == (30, "30-30", d)
        assert all(a.dtype == b.dtype and a.tobytes() == b.tobytes() for a, b in zip(s.weights + s.eligibility, w + e))
        s.weights[0][1, 1] = 5.0  # writable copies
        assert (await shared.get_snapshot(20)).digest == state(20)[2]  # the first writer's stays
        assert (await shared.newest()).version == 40 and await shared.newest_at_or_below(9) is None
        assert await shared.prune(2) == [10, 20]
        assert [r.version for r in await shared.snapshots()] == [30, 40]
        assert await client.exists(shared._key("snap", "10"), shared._key("snap", "20")) == 0
        assert (await shared.newest_at_or_below(25)) is None
        return True

    assert run(session(redis_server, go))


def test_damaged_snapshot_refused(redis_server):
    async def go(log, shared, client):
        w, e, d = state(1)
        await shared.put_snapshot(5, "5-5", w, e, d)
        key = shared._key("snap", "5")
        data = bytearray(await client.get(key))
        data[-1] ^= 1
        await client.set(key, bytes(data))
        with pytest.raises(ValueError, match="damaged"):
            await shared.get_snapshot(5)
        await client.set(key, bytes(data[:-3]))
        with pytest.raises(ValueError, match="truncated"):
            await shared.get_snapshot(5)
        return True

    assert run(session(redis_server, go))


def test_digests_results_and_trim_lock(redis_server):
    async def go(log, shared, client):
        assert await shared.publish_and_check(100, "aa" * 32) is None
        assert await shared.publish_and_check(100, "aa" * 32) is None  # a replica that agrees
        assert await shared.publish_and_check(100, "bb" * 32) == "aa" * 32  # one that diverged
        assert await shared.digest_at(100) == "aa" * 32
        await shared.publish_and_check(200, "cc" * 32)
        assert await shared.prune_digests(150) == 1 and await shared.digest_at(100) is None
        assert await shared.put_result("r1", {"v": 3, "lo": [0.5, -1.25]})
        assert not await shared.put_result("r1", {"v": 4, "lo": []})
        assert await shared.get_result("r1") == {"v": 3, "lo": [0.5, -1.25]} and await shared.get_result("r2") is None
        assert 86_000 < await client.ttl(shared._key("res", "r1")) <= 86_400
        assert await shared.try_trim_lock("a", 30) and not await shared.try_trim_lock("b", 30)
        return True

    assert run(session(redis_server, go))


def test_trim_floor_keeps_what_live_replicas_and_snapshots_need(redis_server):
    async def go(log, shared, client):
        ids = [(await log.append(make_update(seed=i), f"r{i}"))[0] for i in range(12)]
        assert await shared.trim_floor(30) is None  # no snapshot yet: keep everything
        w, e, d = state(0)
        await shared.put_snapshot(6, ids[5], w, e, d)
        await shared.put_snapshot(9, ids[8], w, e, d)
        await shared.beat("fast", ids[11], 12)
        await shared.beat("slow", ids[3], 4)
        live = await shared.live(30)
        assert set(live) == {"fast", "slow"} and live["slow"].entry_id == ids[3] and live["slow"].version == 4
        assert await shared.live(0) == {}  # nobody is newer than now
        assert await shared.trim_floor(30) == ids[3]  # the slow replica holds it below the snapshot
        await shared.beat("slow", ids[10], 11)
        assert await shared.trim_floor(30) == ids[5]  # now the oldest kept snapshot does
        await log.trim(await shared.trim_floor(30))
        assert [e.id for e in await log.read("0-0", 100)] == ids[5:]
        await shared.prune(1)
        assert await shared.trim_floor(30) == ids[8]
        await shared.leave("slow")
        assert set(await shared.live(30)) == {"fast"}
        return True

    assert run(session(redis_server, go))


def test_rollback_append_refused_when_its_snapshot_went_meanwhile(redis_server):
    """plan (the base exists) -> another replica prunes it -> append: refused, nothing written;
    and a prune that listed the pins before the append cannot delete what the append pinned."""

    async def go(log, shared, client):
        ids = [(await log.append(make_update(seed=i), ""))[0] for i in range(6)]
        w, e, d = state(0)
        for v in (2, 4):
            await shared.put_snapshot(v, ids[v - 1], w, e, d)
        await client.delete(shared._key("snap", "2"))  # pruned between plan and append
        with pytest.raises(VersionConflict, match="pruned .*retry"):
            await log.append_rollback(3, "rb-1", 2, (2,))
        assert await client.exists(log.rid_key("rb-1")) == 0 and await client.hlen(shared._pins) == 0
        await log.trim(ids[3])  # the stream before entry 4: gone, so is version 0's replay
        with pytest.raises(VersionConflict):
            await log.append_rollback(1, "", 0)
        assert await log.length() == 3
        rb, appended = await log.append_rollback(5, "", 4, (4,))  # all there: appended, 4 pinned
        assert appended and await client.hget(shared._pins, rb) == b"4"
        await shared.put_snapshot(6, rb, w, e, d)

        async def stale_view(timeout_s):  # a prune that read the pins before the append
            return set()

        shared.pinned = stale_view
        assert await shared.prune(1) == [2]  # 4 is pinned now: kept (2 was half gone already)
        assert await client.exists(shared._key("snap", "4")) == 1
        return [r.version for r in await shared.snapshots()]

    assert run(session(redis_server, go)) == [4, 6]
