"""Update log, snapshots and the Learner (in process, real models, real files)."""

from __future__ import annotations

import asyncio
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serving_utils import as_float
from sjff_server.errors import RequestError
from sjff_server.inference.engine import make_engine
from sjff_server.learning.learner import Learner
from sjff_server.learning.options import LearnOptions
from sjff_server.protocol.rpc import status_of
from sjff_server.storage.durability import UpdateLog
from sjff_server.storage.records import MAGIC, ROLLBACK, UPDATE, Update, UpdateRecord, decode_payload, encode_record
from sjff_server.storage.scan import LogCorruption
from sjff_server.storage.snapshots import SnapshotStore, StateInUse
from sjff_server.storage.state import StateMismatch

from spikingjelly_ff.runtime import load_exported


def record(version: int, n: int = 2, d: int = 5, seed: int = 0) -> UpdateRecord:
    rng = np.random.default_rng(version)
    update = Update(
        rng.random((n, d), dtype=np.float32),
        rng.integers(0, 10, n),
        (rng.random(n) > 0.5).astype(np.float32),
        seed,
        0.25,
    )
    return UpdateRecord(UPDATE, version, 1.5 * version, update)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 6), d=st.integers(1, 40), seed=st.integers(0, 2**63 - 1), eta=st.floats(1e-6, 1e3))
def test_record_round_trip(n, d, seed, eta):
    r = record(3, n, d)
    u = r.update
    r = UpdateRecord(UPDATE, 7, 123.0, Update(u.images, u.labels, u.positive, seed, eta))
    frame = encode_record(r)
    back = decode_payload(frame[12:])
    b = back.update
    assert (back.kind, back.version, b.seed, b.eta, back.created) == (UPDATE, 7, seed, eta, 123.0)
    np.testing.assert_array_equal(b.images, u.images)
    np.testing.assert_array_equal(b.labels, u.labels)
    np.testing.assert_array_equal(b.positive, u.positive)
    rb = decode_payload(encode_record(UpdateRecord(ROLLBACK, 9, 1.0, restored=4))[12:])
    assert (rb.kind, rb.version, rb.restored) == (ROLLBACK, 9, 4)


def write_log(directory, versions, rotate_at=()):
    log = UpdateLog(directory)
    log.open(0)
    for v in versions:
        log.append([record(v)])
        if v in rotate_at:
            log.rotate(v)
    log.close()
    return log


def versions_in(log) -> list[int]:
    seen = []
    last, damage = log.replay(lambda r: seen.append(r.version))
    assert damage is None, damage
    return seen


def test_log_append_scan_and_records(tmp_path):
    log = UpdateLog(tmp_path)
    log.open(0)
    log.append([record(1), record(2)])
    log.append([record(3)])
    log.rotate(3)
    log.append([record(4), record(5)])
    log.close()
    assert [b for b, _ in log.segments()] == [0, 3]
    assert [r.version for r in log.records(0, 5)] == [1, 2, 3, 4, 5]
    assert [r.version for r in log.records(2, 4)] == [3, 4]
    assert [r.version for r in log.records(3, 5)] == [4, 5]
    assert log.replay(lambda r: None) == (5, None)
    log.prune(3)  # versions <= 3 are covered by a snapshot: the first segment goes
    assert [b for b, _ in log.segments()] == [3]


def test_torn_tail_is_cut_at_every_byte_offset(tmp_path):
    """A crash can cut the last write anywhere: recovery keeps exactly the complete frames,
    and only then (the file ends inside a frame whose header is intact, or inside a header)."""
    ((_, path),) = write_log(tmp_path / "ref", [1, 2, 3]).segments()
    full = path.read_bytes()
    ends = [len(MAGIC)]
    for v in (1, 2, 3):
        ends.append(ends[-1] + len(encode_record(record(v))))
    for cut in range(len(MAGIC), len(full) + 1):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / path.name).write_bytes(full[:cut])
        torn = UpdateLog(d)
        kept = []
        last, damage = torn.replay(lambda r: kept.append(r.version))
        complete = sum(1 for e in ends[1:] if e <= cut)
        assert kept == list(range(1, complete + 1)) and (last or 0) == complete, cut
        if cut in ends:
            assert damage is None, cut
            continue
        assert damage is not None and damage.torn and damage.offset == ends[complete] and damage.last_good == complete
        torn.cut_torn(damage)
        assert versions_in(torn) == kept
        torn.open(complete)  # appending after the repair continues cleanly
        torn.append([record(complete + 1)])
        torn.close()
        assert versions_in(torn) == [*kept, complete + 1]


def test_a_damaged_byte_anywhere_is_corruption_never_a_torn_tail(tmp_path):
    """Flip each byte of a 3-record log in turn: every flip is found, none is taken for a torn
    write (which recovery would cut), and the error names the file, offset and versions."""
    ((_, path),) = write_log(tmp_path / "ref", [1, 2, 3]).segments()
    full = path.read_bytes()
    ends = [len(MAGIC)]
    for v in (1, 2, 3):
        ends.append(ends[-1] + len(encode_record(record(v))))
    for pos in range(len(full)):
        d = tmp_path / f"flip{pos}"
        d.mkdir()
        data = bytearray(full)
        data[pos] ^= 0x5A
        (d / path.name).write_bytes(bytes(data))
        last, damage = UpdateLog(d).replay(lambda r: None)
        assert damage is not None and not damage.torn, pos
        frame = sum(1 for e in ends[1:] if e <= pos)  # records intact before the damaged one
        assert damage.last_good == frame and damage.offset == (0 if pos < len(MAGIC) else ends[frame]), pos
        text = damage.describe()
        assert str(d / path.name) in text and f"byte {damage.offset}" in text
        if pos >= len(MAGIC) and frame < 2:  # intact records follow: their versions are named
            assert damage.later == (frame + 2, 3) and f"versions {frame + 1}..3 are affected" in text, (pos, text)


def test_corruption_in_the_newest_segment_is_refused_with_versions(tmp_path):
    """The issue's reproduction in small: many records, a byte flipped at 40 % of the newest
    segment. Nothing may be cut on start; the damage names the versions after it."""
    log = write_log(tmp_path, range(1, 61), rotate_at=(20,))
    path = log.segments()[-1][1]
    data = bytearray(path.read_bytes())
    data[int(len(data) * 0.4)] ^= 0x01
    path.write_bytes(bytes(data))
    size = path.stat().st_size
    last, damage = UpdateLog(tmp_path).replay(lambda r: None)
    assert not damage.torn and damage.later is not None and damage.later[1] == 60
    assert f"versions {damage.last_good + 1}..60 are affected" in damage.describe()
    with pytest.raises(LogCorruption):
        UpdateLog(tmp_path).cut_torn(damage)
    assert path.stat().st_size == size  # nothing was cut


def test_corruption_inside_an_old_segment_is_refused(tmp_path):
    log = write_log(tmp_path, [1, 2, 3], rotate_at=(2,))
    old = log.segments()[0][1]
    data = bytearray(old.read_bytes())
    data[len(MAGIC) + 20] ^= 0xFF  # flip a bit in the first record
    old.write_bytes(bytes(data))
    last, damage = UpdateLog(tmp_path).replay(lambda r: None)
    assert not damage.torn and "CRC" in damage.reason and damage.after_segments == 3


def test_a_cut_in_an_older_segment_is_not_a_torn_tail(tmp_path):
    log = write_log(tmp_path, [1, 2, 3], rotate_at=(2,))
    old = log.segments()[0][1]
    old.write_bytes(old.read_bytes()[:-5])  # a torn frame, but more segments follow
    last, damage = UpdateLog(tmp_path).replay(lambda r: None)
    assert not damage.torn and "not the newest" in damage.reason


def test_format_1_segments_are_read_and_appends_start_a_new_segment(tmp_path):
    import struct
    import zlib

    from sjff_server.storage.records import MAGIC_V1, encode_payload

    blob = MAGIC_V1
    for v in (1, 2):
        p = encode_payload(record(v))
        blob += struct.pack("<II", len(p), zlib.crc32(p)) + p
    (tmp_path / f"{0:020d}.log").write_bytes(blob)
    log = UpdateLog(tmp_path)
    assert versions_in(log) == [1, 2]
    log.open(2)
    log.append([record(3)])
    log.close()
    assert [b for b, _ in log.segments()] == [0, 2] and versions_in(log) == [1, 2, 3]
    # a torn v1 tail is still a torn tail; a v1 frame with a damaged length followed by intact frames is not
    (tmp_path / f"{2:020d}.log").unlink()
    first = len(MAGIC_V1) + 8 + len(encode_payload(record(1)))
    data = bytearray(blob)
    data[first + 1] ^= 0x01  # the length of record 2 grows by 256 bytes: it now runs past the end
    (tmp_path / f"{0:020d}.log").write_bytes(bytes(data))
    assert UpdateLog(tmp_path).replay(lambda r: None)[1].torn
    data = bytearray(blob + blob[first:])  # ... unless an intact frame follows (version 2 again is found)
    data[first + 1] ^= 0x01
    (tmp_path / f"{0:020d}.log").write_bytes(bytes(data))
    assert not UpdateLog(tmp_path).replay(lambda r: None)[1].torn


def test_failed_sync_cuts_the_append_back(tmp_path, monkeypatch):
    """fdatasync fails after the bytes were written: the segment is cut back, so the refused
    records can never be replayed; if the cut fails too, the outcome is reported unknown."""
    import sjff_server.storage.durability as durability

    log = UpdateLog(tmp_path)
    log.open(0)
    log.append([record(1)])
    size = log.segments()[0][1].stat().st_size
    calls = []

    def failing_sync(fd):
        calls.append(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(durability, "_sync", failing_sync)
    with pytest.raises(durability.StorageError, match="cut back"):
        log.append([record(2), record(3)])
    assert calls and log.segments()[0][1].stat().st_size == size
    monkeypatch.setattr(durability.os, "ftruncate", lambda fd, n: (_ for _ in ()).throw(OSError(5, "EIO")))
    with pytest.raises(durability.OutcomeUnknown, match="may or may not be durable"):
        log.append([record(2)])
    monkeypatch.undo()
    assert versions_in(UpdateLog(tmp_path))[:1] == [1]
    with pytest.raises(durability.StorageError, match="not open"):  # the handle is not trusted any more
        log.append([record(2)])


def test_replay_streams_frames_instead_of_reading_segments(tmp_path):
    """Recovery memory is one record, not one segment: replaying a 48 MB segment allocates a
    few MB at most (tracemalloc counts numpy buffers too)."""
    import tracemalloc

    log = UpdateLog(tmp_path)
    log.open(0)
    rng = np.random.default_rng(0)
    images = rng.random((64, 784), dtype=np.float32)
    for v in range(1, 241):  # 240 records of 64 images: 48 MB in one segment
        update = Update(images, np.zeros(64, np.int64), np.ones(64, np.float32), v, 0.1)
        log.append([UpdateRecord(UPDATE, v, 0.0, update)])
    log.close()
    assert log.size_bytes() > 48e6
    count = []
    tracemalloc.start()
    last, damage = UpdateLog(tmp_path).replay(lambda r: count.append(r.version))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (last, damage, len(count)) == (240, None, 240)
    assert peak < 4 * 64 * 784 * 4, peak  # a few records' worth, never the segment


def test_snapshot_store_atomic_and_pruned(tmp_path):
    store = SnapshotStore(tmp_path)
    w = [np.arange(6, dtype=np.float32).reshape(2, 3)]
    for v in (1, 5, 9):
        store.write(v, w, [x * 0 for x in w], {"artefact_sha256": "abc"})
    (tmp_path / "00000000000000000011.npz.part").write_bytes(b"half")  # a crash mid-write
    store = SnapshotStore(tmp_path)
    assert not list(tmp_path.glob("*.part"))
    assert [s.version for s in store.list()] == [1, 5, 9]
    meta, ws, es = store.read(store.list()[-1].path)
    assert meta["version"] == 9 and meta["artefact_sha256"] == "abc"
    np.testing.assert_array_equal(ws[0], w[0])
    assert store.prune(3) is None  # nothing to delete
    assert store.prune(2) == 5
    assert [s.version for s in store.list()] == [5, 9]
    bad = tmp_path / "00000000000000000012.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="unreadable snapshot"):
        store.read(bad)


# -- the Learner on a real analog model ---------------------------------------------------------


def make_learner(sjff_models, state, **opts) -> Learner:
    model = load_exported(sjff_models["analog"], threads=1)
    return Learner("mnist", "1", make_engine(model), model, sjff_models["analog"], state, LearnOptions(**opts))


def learn_and_crash(sjff_models, state, xs, labels, n, **opts):
    """``n`` updates (sample i, seed i) on a fresh learner, closed without a final snapshot (as a
    crash after the last acknowledgement would leave it); returns the weights it served."""

    async def run():
        learner = make_learner(sjff_models, state, **{"snapshot_interval_s": 0, **opts})
        learner.recover()
        await learner.start()
        for i in range(n):
            await learner.learn(job(xs[i : i + 1], labels[i], seed=i))
        weights = [w.copy() for w in learner.published.model.weights]
        await learner.close(final_snapshot=False)
        return weights

    return asyncio.run(run())


def job(x, label, seed=None, eta=None, positive=1.0, expected=None) -> Update:
    return Update(x, np.array([label], dtype=np.int64), np.array([positive], dtype=np.float32), seed, eta, expected)


def code(err: BaseException) -> str:
    """The gRPC status name a refusal is answered with."""
    return status_of(err)[0].name


def replay(sjff_models, updates):
    """Apply (x, label, seed, eta) updates to a fresh in-process model, the reference."""
    ref = load_exported(sjff_models["analog"], threads=1)
    for x, label, seed, eta in updates:
        ref.learn(x, np.array([label]), np.array([1.0], dtype=np.float32), seed=seed, eta=eta)
    return ref


def test_learner_orders_groups_refuses_and_recovers(sjff_models, mnist_samples, tmp_path):
    images, labels = mnist_samples
    xs = as_float(images[:40])

    async def run():
        learner = make_learner(sjff_models, tmp_path / "state", snapshot_every=15, snapshot_interval_s=0)
        learner.recover()
        await learner.start()
        # 30 concurrent updates: applied in submission order, grouped, each its own version
        results = await asyncio.gather(*[learner.learn(job(xs[i : i + 1], labels[i], seed=i)) for i in range(30)])
        assert [v for v, _ in results] == list(range(1, 31))
        assert learner.stats.mean_group_size() > 1  # they shared fsyncs
        before = [w.copy() for w in learner.published.model.weights]
        # an update that overflows the weights is refused and changes nothing
        with pytest.raises(RequestError) as err:
            await learner.learn(job(xs[30:31], labels[30], seed=1, eta=np.inf))
        assert code(err.value) == "FAILED_PRECONDITION" and "non-finite" in err.value.message
        assert learner.published.version == 30
        for a, b in zip(before, learner.published.model.weights):
            np.testing.assert_array_equal(a, b)
        # a refused update inside a group leaves the others of the group intact
        mixed = await asyncio.gather(
            learner.learn(job(xs[31:32], labels[31], seed=31)),
            learner.learn(job(xs[32:33], labels[32], seed=32, eta=np.inf)),
            learner.learn(job(xs[33:34], labels[33], seed=33)),
            return_exceptions=True,
        )
        assert mixed[0][0] == 31 and isinstance(mixed[1], RequestError) and mixed[2][0] == 32
        # optimistic concurrency
        with pytest.raises(RequestError) as err:
            await learner.learn(job(xs[34:35], labels[34], seed=34, expected=5))
        assert code(err.value) == "ABORTED"
        v, _ = await learner.learn(job(xs[34:35], labels[34], seed=34, expected=32))
        assert v == 33
        weights = [w.copy() for w in learner.published.model.weights]
        await learner.close(final_snapshot=False)  # like a crash after the last ack: no final snapshot
        return weights

    weights = asyncio.run(run())
    updates = [(xs[i : i + 1], labels[i], i, None) for i in range(30)]
    updates += [(xs[31:32], labels[31], 31, None), (xs[33:34], labels[33], 33, None), (xs[34:35], labels[34], 34, None)]
    ref = replay(sjff_models, updates)
    for a, b in zip(weights, ref.weights):
        np.testing.assert_array_equal(a, b)  # the server's weights are exactly the replayed ones

    # restart: newest snapshot (version 30) + log replay gives the same weights and version
    learner = make_learner(sjff_models, tmp_path / "state", snapshot_every=15, snapshot_interval_s=0)
    notes = learner.recover()
    assert learner.published.version == 33 and any("resumed at version 33" in n for n in notes)
    assert learner.snapshots.list()[-1].version == 30  # snapshot_every=15 (taken at group ends)
    for a, b in zip(learner.published.model.weights, ref.weights):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(learner.published.model.eligibility, ref.eligibility):
        np.testing.assert_array_equal(a, b)


def test_learner_rollback_and_state_at(sjff_models, mnist_samples, tmp_path):
    images, labels = mnist_samples
    xs = as_float(images[:10])

    async def run():
        learner = make_learner(sjff_models, tmp_path / "s", snapshot_every=0, snapshot_interval_s=0)
        learner.recover()
        await learner.start()
        for i in range(6):
            await learner.learn(job(xs[i : i + 1], labels[i], seed=i))
        new, restored = await learner.rollback(2)
        assert (new, restored) == (7, 2)
        v, _ = await learner.learn(job(xs[7:8], labels[7], seed=7))
        assert v == 8
        with pytest.raises(RequestError) as err:
            await learner.rollback(99)
        assert code(err.value) == "OUT_OF_RANGE"
        state8 = [w.copy() for w in learner.published.model.weights]
        await learner.close()
        return state8

    state8 = asyncio.run(run())
    ref = replay(sjff_models, [(xs[i : i + 1], labels[i], i, None) for i in range(2)] + [(xs[7:8], labels[7], 7, None)])
    for a, b in zip(state8, ref.weights):
        np.testing.assert_array_equal(a, b)
    learner = make_learner(sjff_models, tmp_path / "s")
    learner.recover()
    assert learner.published.version == 8
    # version 5 is still reachable through the log; version 7 (the rollback) equals version 2
    five = learner.state.state_at(5)
    ref5 = replay(sjff_models, [(xs[i : i + 1], labels[i], i, None) for i in range(5)])
    np.testing.assert_array_equal(five.weights[0], ref5.weights[0])
    np.testing.assert_array_equal(learner.state.state_at(7).weights[0], learner.state.state_at(2).weights[0])
    history = [(h[0], h[1]) for h in learner.history]
    assert history[-2:] == [(7, "rollback"), (8, "update")]


def test_changed_artifact_is_detected(sjff_models, tmp_path):
    learner = make_learner(sjff_models, tmp_path / "s")
    learner.recover()
    with pytest.raises(StateInUse, match="in use by another process"):  # one owner at a time
        make_learner(sjff_models, tmp_path / "s").recover()
    learner.state.release()
    marker = tmp_path / "s" / "artefact.json"
    data = json.loads(marker.read_text())
    data["sha256"] = "0" * 64
    marker.write_text(json.dumps(data))
    with pytest.raises(StateMismatch, match="another artefact"):
        make_learner(sjff_models, tmp_path / "s").recover()
    learner = make_learner(sjff_models, tmp_path / "s", reset_changed=True)
    notes = learner.recover()
    assert any("archived" in n for n in notes)
    assert len([p for p in os.listdir(tmp_path) if p.startswith("s.archived-")]) == 1


def test_storage_failure_stops_learning_but_keeps_the_durable_weights(sjff_models, mnist_samples, tmp_path):
    images, labels = mnist_samples
    xs = as_float(images[:20])

    async def run():
        learner = make_learner(sjff_models, tmp_path / "s", snapshot_every=0, snapshot_interval_s=0)
        learner.recover()
        await learner.start()
        for i in range(3):
            await learner.learn(job(xs[i : i + 1], labels[i], seed=i))
        durable = [w.copy() for w in learner.published.model.weights]
        real_append = learner.log.append

        def failing_append(records):
            raise OSError(28, "No space left on device")

        learner.log.append = failing_append
        results = await asyncio.gather(
            *[learner.learn(job(xs[i : i + 1], labels[i], seed=i)) for i in range(3, 9)], return_exceptions=True
        )
        assert all(isinstance(r, RequestError) and code(r) == "UNAVAILABLE" for r in results)
        assert learner.failed is not None and "No space left" in learner.failed
        assert learner.published.version == 3  # nothing that was not durable got published
        for a, b in zip(durable, learner.published.model.weights):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(RequestError) as err:
            await learner.learn(job(xs[10:11], labels[10], seed=10))
        assert code(err.value) == "UNAVAILABLE"
        learner.log.append = real_append
        await learner.close(final_snapshot=False)

    asyncio.run(run())
    learner = make_learner(sjff_models, tmp_path / "s")
    learner.recover()
    assert learner.published.version == 3


def test_failed_sync_is_not_applied_and_never_replayed(sjff_models, mnist_samples, tmp_path, monkeypatch):
    """The fsync fails after the group's bytes were written: every update of the group is
    answered "not applied", and a restart does not bring them back (they were cut off)."""
    import sjff_server.storage.durability as durability

    images, labels = mnist_samples
    xs = as_float(images[:10])
    failed_models = []

    async def run():
        learner = make_learner(sjff_models, tmp_path / "s", snapshot_every=0, snapshot_interval_s=0)
        learner.recover()
        learner.on_failed = failed_models.append
        await learner.start()
        for i in range(3):
            await learner.learn(job(xs[i : i + 1], labels[i], seed=i))
        monkeypatch.setattr(durability, "_sync", lambda fd: (_ for _ in ()).throw(OSError(5, "Input/output error")))
        results = await asyncio.gather(
            *[learner.learn(job(xs[i : i + 1], labels[i], seed=i)) for i in range(3, 7)], return_exceptions=True
        )
        monkeypatch.undo()
        assert all(isinstance(r, RequestError) and code(r) == "UNAVAILABLE" for r in results), results
        assert any("not applied" in r.message for r in results)
        assert learner.published.version == 3 and failed_models == [learner]
        await learner.close(final_snapshot=False)

    asyncio.run(run())
    learner = make_learner(sjff_models, tmp_path / "s")
    learner.recover()
    assert learner.published.version == 3  # a retry now applies the update once, not twice


def test_outcome_unknown_when_the_log_cannot_be_cut_back(sjff_models, mnist_samples, tmp_path, monkeypatch):
    import sjff_server.storage.durability as durability

    images, labels = mnist_samples
    xs = as_float(images[:4])

    async def run():
        learner = make_learner(sjff_models, tmp_path / "s", snapshot_every=0, snapshot_interval_s=0)
        learner.recover()
        await learner.start()
        await learner.learn(job(xs[:1], labels[0], seed=0))
        monkeypatch.setattr(durability, "_sync", lambda fd: (_ for _ in ()).throw(OSError(5, "EIO")))
        monkeypatch.setattr(durability.os, "ftruncate", lambda fd, n: (_ for _ in ()).throw(OSError(5, "EIO")))
        with pytest.raises(RequestError) as err:
            await learner.learn(job(xs[1:2], labels[1], seed=1))
        monkeypatch.undo()
        assert code(err.value) == "UNKNOWN" and err.value.message.startswith("outcome unknown")
        assert "ListVersions" in err.value.message and learner.failed is not None
        with pytest.raises(RequestError) as err:
            await learner.learn(job(xs[2:3], labels[2], seed=2))
        assert code(err.value) == "UNAVAILABLE"
        await learner.close(final_snapshot=False)

    asyncio.run(run())


def test_a_writer_failure_fails_waiting_calls_at_once(sjff_models, mnist_samples, tmp_path):
    """An unexpected error of the writer must not leave clients waiting for their deadline:
    queued calls fail at once, learning is marked failed, and an update that was already
    durable is still answered as applied (never "failed" for something that stands)."""
    images, labels = mnist_samples
    xs = as_float(images[:4])

    async def run():
        learner = make_learner(sjff_models, tmp_path / "s", snapshot_every=0, snapshot_interval_s=0)
        learner.recover()
        with pytest.raises(RequestError, match="not started"):
            await learner.learn(job(xs[:1], labels[0], seed=0))
        await learner.start()

        def broken_settle(group, outcome):
            raise RuntimeError("a bug after the sync")

        learner.writer._settle = broken_settle
        version, _ = await asyncio.wait_for(learner.learn(job(xs[:1], labels[0], seed=0)), timeout=60)
        assert version == 1 and "a bug after the sync" in learner.failed
        with pytest.raises(RequestError) as err:
            await learner.learn(job(xs[1:2], labels[1], seed=1))
        assert code(err.value) == "UNAVAILABLE"
        await asyncio.wait_for(learner.close(final_snapshot=False), timeout=60)

        second = make_learner(sjff_models, tmp_path / "s2", snapshot_every=0, snapshot_interval_s=0)
        second.recover()
        await second.start()

        def broken_take():
            raise RuntimeError("a bug in the writer loop")

        second.writer._take_group = broken_take
        with pytest.raises(RequestError) as err:
            await asyncio.wait_for(second.learn(job(xs[:1], labels[0], seed=0)), timeout=60)
        assert code(err.value) == "INTERNAL" and "a bug in the writer loop" in second.failed
        await asyncio.wait_for(second.close(final_snapshot=False), timeout=60)  # no hang on a dead writer
        return learner

    asyncio.run(run())
    learner = make_learner(sjff_models, tmp_path / "s")
    learner.recover()
    assert learner.published.version == 1  # the update answered as applied is there


def test_replay_is_checked_against_logged_digests(sjff_models, mnist_samples, tmp_path, monkeypatch):
    """Digests logged every few versions make a replay that differs in the last bit (other
    arithmetic) an error that says so, not silently other weights."""
    from sjff_server.storage.snapshots import state_digest
    from sjff_server.storage.state import ReplayMismatch

    images, labels = mnist_samples
    xs = as_float(images[:12])

    async def run():
        learner = make_learner(sjff_models, tmp_path / "s", snapshot_every=0, snapshot_interval_s=0, digest_every=4)
        learner.recover()
        await learner.start()
        for i in range(10):
            await learner.learn(job(xs[i : i + 1], labels[i], seed=i))
        version, digest = learner.weights_digest()
        assert version == 10
        assert digest == state_digest(learner.published.model.weights, learner.published.model.eligibility)
        await learner.close(final_snapshot=False)
        return digest

    digest = asyncio.run(run())
    kinds = [r.kind for r in UpdateLog(tmp_path / "s" / "log").records(0, 10)]
    assert kinds.count(3) == 2  # digests at versions 4 and 8
    learner = make_learner(sjff_models, tmp_path / "s")
    learner.recover()  # the same arithmetic: the digests match
    assert learner.weights_digest() == (10, digest)
    learner.state.release()

    from spikingjelly_ff.runtime.analog import AnalogModel

    real_learn = AnalogModel.learn

    def other_arithmetic(self, *args, **kw):
        out = real_learn(self, *args, **kw)
        self.weights[0][0, 0] = np.nextafter(self.weights[0][0, 0], np.float32(np.inf))
        return out

    monkeypatch.setattr(AnalogModel, "learn", other_arithmetic)
    with pytest.raises(ReplayMismatch, match="at version 4.*arithmetic differs"):
        make_learner(sjff_models, tmp_path / "s").recover()


def test_segments_rotate_by_size_and_recover(sjff_models, mnist_samples, tmp_path):
    images, labels = mnist_samples
    xs = as_float(images[:40])

    weights = learn_and_crash(sjff_models, tmp_path / "s", xs, labels, 40, snapshot_every=0, segment_bytes=1 << 16)
    log = UpdateLog(tmp_path / "s" / "log")
    assert len(log.segments()) >= 2
    assert all(p.stat().st_size < (1 << 16) + 4000 for _, p in log.segments())
    learner = make_learner(sjff_models, tmp_path / "s")
    learner.recover()
    assert learner.published.version == 40
    for a, b in zip(weights, learner.published.model.weights):
        np.testing.assert_array_equal(a, b)


def test_recovery_refuses_damage_and_repair_cuts_it(sjff_models, mnist_samples, tmp_path):
    """A damaged record in the newest segment: the model refuses to load (nothing changes on
    disk); `sjff state repair --truncate` cuts after the last intact version; then it loads."""
    from sjff_server.storage.repair import main as repair_main

    images, labels = mnist_samples
    xs = as_float(images[:30])

    learn_and_crash(sjff_models, tmp_path / "state" / "mnist" / "1", xs, labels, 25, snapshot_every=10)
    state = tmp_path / "state" / "mnist" / "1"
    newest = UpdateLog(state / "log").segments()[-1][1]  # versions 21..25
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x10
    newest.write_bytes(bytes(data))
    with pytest.raises(LogCorruption, match=r"byte \d+ of \d+.*versions 2\d\.\.25 are affected.*sjff state repair"):
        make_learner(sjff_models, state).recover()
    assert newest.read_bytes() == bytes(data)  # refused, not repaired
    assert repair_main([str(tmp_path / "state"), "--model", "mnist"]) == 1  # report only
    assert newest.read_bytes() == bytes(data)
    assert repair_main([str(tmp_path / "state"), "--model", "mnist", "--truncate"]) == 0
    learner = make_learner(sjff_models, state)
    learner.recover()
    assert 20 <= learner.published.version < 25
    assert repair_main([str(tmp_path / "state"), "--model", "mnist"]) == 2  # the state is owned meanwhile
    learner.state.release()
    assert repair_main([str(tmp_path / "state"), "--model", "mnist"]) == 0


def test_repair_of_an_old_segment_keeps_every_acknowledged_update(sjff_models, mnist_samples, tmp_path):
    """Damage below an intact snapshot only costs history: repair drops the older segments and
    snapshots, and the current version and weights stay."""
    from sjff_server.storage.repair import main as repair_main

    images, labels = mnist_samples
    xs = as_float(images[:30])

    weights = learn_and_crash(sjff_models, tmp_path / "state" / "mnist" / "1", xs, labels, 25, snapshot_every=10)
    state = tmp_path / "state" / "mnist" / "1"
    first = UpdateLog(state / "log").segments()[0][1]  # versions 1..10
    data = bytearray(first.read_bytes())
    data[100] ^= 0x01
    first.write_bytes(bytes(data))
    with pytest.raises(LogCorruption):
        make_learner(sjff_models, state).recover()
    assert repair_main([str(tmp_path / "state"), "--model", "mnist", "--truncate"]) == 0
    learner = make_learner(sjff_models, state)
    learner.recover()
    assert learner.published.version == 25 and learner.oldest_restorable() == 10
    for a, b in zip(weights, learner.published.model.weights):
        np.testing.assert_array_equal(a, b)


def test_zero_filled_tail_is_a_torn_write(tmp_path):
    """After a power loss, never-synced appended blocks can read back as zeros: no
    acknowledged frame is all zeros, so that tail is cut like a torn write."""
    ((_, path),) = write_log(tmp_path, [1, 2]).segments()
    path.write_bytes(path.read_bytes() + bytes(4096))
    last, damage = UpdateLog(tmp_path).replay(lambda r: None)
    assert last == 2 and damage.torn and "zero bytes" in damage.reason


def test_close_finishes_when_storage_fails_during_shutdown(sjff_models, mnist_samples, tmp_path):
    images, labels = mnist_samples
    xs = as_float(images[:4])

    async def run():
        learner = make_learner(sjff_models, tmp_path / "s", snapshot_every=0, snapshot_interval_s=0, max_group=1)
        learner.recover()
        await learner.start()

        def failing_append(records):
            raise OSError(5, "Input/output error")

        learner.log.append = failing_append
        calls = [asyncio.ensure_future(learner.learn(job(xs[i : i + 1], labels[i], seed=i))) for i in range(3)]
        await asyncio.sleep(0)
        await asyncio.wait_for(learner.close(final_snapshot=True), timeout=60)  # a queued stop survives the failure
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, RequestError) and code(r) == "UNAVAILABLE" for r in results)

    asyncio.run(run())


def test_a_rollback_that_fails_before_its_append_reuses_no_version(sjff_models, mnist_samples, tmp_path):
    images, labels = mnist_samples
    xs = as_float(images[:6])

    async def run():
        learner = make_learner(sjff_models, tmp_path / "s", snapshot_every=0, snapshot_interval_s=0)
        learner.recover()
        await learner.start()
        for i in range(3):
            await learner.learn(job(xs[i : i + 1], labels[i], seed=i))
        real_publish = learner.engine.publish

        def failing_publish(version, model):
            raise MemoryError("preparing weights")

        learner.engine.publish = failing_publish
        with pytest.raises(MemoryError):
            await learner.rollback(1)
        learner.engine.publish = real_publish
        assert (await learner.learn(job(xs[4:5], labels[4], seed=4)))[0] == 4
        await learner.close(final_snapshot=False)

    asyncio.run(run())
    learner = make_learner(sjff_models, tmp_path / "s")
    learner.recover()
    assert learner.published.version == 4 and [h[1] for h in learner.history] == ["update"] * 4


def test_repair_bridges_a_gap_with_the_snapshot_at_the_next_segment(sjff_models, mnist_samples, tmp_path):
    """An older segment lost its last frame exactly at a frame boundary: the next segment no
    longer follows it. The snapshot where that segment starts bridges the gap: nothing lost."""
    from sjff_server.storage.repair import apply_repair, plan_repair
    from sjff_server.storage.scan import SegmentScan

    images, labels = mnist_samples
    xs = as_float(images[:10])
    state = tmp_path / "s"

    learn_and_crash(sjff_models, state, xs, labels, 8, snapshot_every=5)
    log = UpdateLog(state / "log")
    base, first = log.segments()[0]
    scan = SegmentScan(first, base)
    ends = [scan.valid_end for _ in scan]
    first.write_bytes(first.read_bytes()[: ends[-2]])  # version 5's frame (and its digest) gone
    plan = plan_repair(state)
    assert plan.damage.gap and plan.keep_from_snapshot == 5 and plan.damage.later == (6, 8)
    apply_repair(state, plan)
    learner = make_learner(sjff_models, state)
    learner.recover()
    assert learner.published.version == 8


def test_a_log_that_ends_before_the_newest_snapshot_is_refused_then_repaired(sjff_models, mnist_samples, tmp_path):
    from sjff_server.storage.repair import apply_repair, plan_repair

    images, labels = mnist_samples
    xs = as_float(images[:10])
    state = tmp_path / "s"

    async def run():
        learner = make_learner(sjff_models, state, snapshot_every=0, snapshot_interval_s=0)
        learner.recover()
        await learner.start()
        for i in range(5):
            await learner.learn(job(xs[i : i + 1], labels[i], seed=i))
        await learner.snapshot()
        await learner.close(final_snapshot=False)

    asyncio.run(run())
    log = UpdateLog(state / "log")
    (b0, p0), (b5, p5) = log.segments()
    p5.unlink()
    p0.write_bytes(p0.read_bytes()[:200])  # as if a cut had happened and the snapshot stayed
    with pytest.raises(LogCorruption, match="ends at version .* before|newest usable snapshot is version 5"):
        make_learner(sjff_models, state).recover()
    plan = plan_repair(state)
    assert plan.keep_from_snapshot == 5
    apply_repair(state, plan)
    learner = make_learner(sjff_models, state)
    learner.recover()
    assert learner.published.version == 5


def test_client_tells_outcome_unknown_from_not_applied():
    import grpc
    from sjff_client import RequestFailed, outcome_unknown

    def Rpc(code):  # noqa: N802 - the error an asyncio call raises, as grpc builds it
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="x")

    assert outcome_unknown(Rpc(grpc.StatusCode.UNKNOWN)) and outcome_unknown(RequestFailed("UNKNOWN", "x"))
    assert not outcome_unknown(Rpc(grpc.StatusCode.UNAVAILABLE)) and not outcome_unknown(RequestFailed("ABORTED", "x"))
    assert not outcome_unknown(ValueError("x"))


def test_state_command_line_errors_are_one_line(tmp_path, capsys):
    from spikingjelly_ff.cli import main

    assert main(["state", "fix"]) == 2
    assert "the only subcommand is 'repair'" in capsys.readouterr().err
    assert main(["state", "repair", str(tmp_path), "--model", "m"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "m" / "1").mkdir(parents=True)
    assert main(["state", "repair", str(tmp_path), "--model", "m"]) == 2
    assert "holds no update log" in capsys.readouterr().err
