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
from sjff_server.durability import (
    MAGIC,
    ROLLBACK,
    UPDATE,
    LogCorruption,
    SnapshotStore,
    UpdateLog,
    UpdateRecord,
    decode_payload,
    encode_record,
)
from sjff_server.engine import make_engine
from sjff_server.errors import RequestError
from sjff_server.learning import Learner, LearnJob, LearnOptions, StateMismatch

from spikingjelly_ff.runtime import load_model


def record(version: int, n: int = 2, d: int = 5, seed: int = 0) -> UpdateRecord:
    rng = np.random.default_rng(version)
    return UpdateRecord(
        UPDATE,
        version,
        1.5 * version,
        seed,
        0.25,
        rng.random((n, d), dtype=np.float32),
        rng.integers(0, 10, n),
        (rng.random(n) > 0.5).astype(np.float32),
    )


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 6), d=st.integers(1, 40), seed=st.integers(0, 2**63 - 1), eta=st.floats(1e-6, 1e3))
def test_record_round_trip(n, d, seed, eta):
    r = record(3, n, d)
    r = UpdateRecord(UPDATE, 7, 123.0, seed, eta, r.images, r.labels, r.positive)
    frame = encode_record(r)
    back = decode_payload(frame[8:])
    assert (back.kind, back.version, back.seed, back.eta, back.created) == (UPDATE, 7, seed, eta, 123.0)
    np.testing.assert_array_equal(back.images, r.images)
    np.testing.assert_array_equal(back.labels, r.labels)
    np.testing.assert_array_equal(back.positive, r.positive)
    rb = decode_payload(encode_record(UpdateRecord(ROLLBACK, 9, 1.0, restored=4))[8:])
    assert (rb.kind, rb.version, rb.restored) == (ROLLBACK, 9, 4)


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
    assert log.last_version() == 5
    log.prune(3)  # versions <= 3 are covered by a snapshot: the first segment goes
    assert [b for b, _ in log.segments()] == [3]


def test_torn_tail_is_truncated_at_every_offset(tmp_path):
    """A crash can cut the last write anywhere: recovery keeps exactly the complete frames."""
    log = UpdateLog(tmp_path / "ref")
    log.open(0)
    log.append([record(1), record(2)])
    log.close()
    ((_, path),) = log.segments()
    full = path.read_bytes()
    first_end = len(MAGIC) + len(encode_record(record(1)))
    for cut in range(len(MAGIC), len(full), 97):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / path.name).write_bytes(full[:cut])
        torn = UpdateLog(d)
        notes = torn.repair()
        expected = [1] if cut >= first_end else []
        if cut == len(full):
            expected = [1, 2]
        assert [r.version for r in torn.records(0, 10)] == expected, cut
        assert bool(notes) == (cut not in (len(MAGIC), first_end))
        torn.open(0)  # appending after the repair continues cleanly
        torn.append([record(len(expected) + 1)])
        torn.close()
        assert [r.version for r in torn.records(0, 10)] == [*expected, len(expected) + 1]


def test_corruption_inside_an_old_segment_is_refused(tmp_path):
    log = UpdateLog(tmp_path)
    log.open(0)
    log.append([record(1), record(2)])
    log.rotate(2)
    log.append([record(3)])
    log.close()
    old = log.segments()[0][1]
    data = bytearray(old.read_bytes())
    data[len(MAGIC) + 20] ^= 0xFF  # flip a bit in the first record
    old.write_bytes(bytes(data))
    with pytest.raises(LogCorruption, match="CRC"):
        UpdateLog(tmp_path).repair()


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
    model = load_model(sjff_models["analog"], threads=1)
    return Learner("mnist", "1", make_engine(model), model, sjff_models["analog"], state, LearnOptions(**opts))


def job(x, label, seed=None, eta=None, positive=1.0, expected=None) -> LearnJob:
    return LearnJob(x, np.array([label], dtype=np.int64), np.array([positive], dtype=np.float32), seed, eta, expected)


def replay(sjff_models, updates):
    """Apply (x, label, seed, eta) updates to a fresh in-process model, the reference."""
    ref = load_model(sjff_models["analog"], threads=1)
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
        assert learner.mean_group_size() > 1  # they shared fsyncs
        before = [w.copy() for w in learner.published.model.weights]
        # an update that overflows the weights is refused and changes nothing
        with pytest.raises(RequestError) as err:
            await learner.learn(job(xs[30:31], labels[30], seed=1, eta=np.inf))
        assert err.value.code.name == "FAILED_PRECONDITION" and "non-finite" in err.value.message
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
        assert err.value.code.name == "ABORTED"
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
        assert err.value.code.name == "OUT_OF_RANGE"
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
    five = learner._state_at(5)
    ref5 = replay(sjff_models, [(xs[i : i + 1], labels[i], i, None) for i in range(5)])
    np.testing.assert_array_equal(five.weights[0], ref5.weights[0])
    np.testing.assert_array_equal(learner._state_at(7).weights[0], learner._state_at(2).weights[0])
    history = [(h[0], h[1]) for h in learner.history]
    assert history[-2:] == [(7, "rollback"), (8, "update")]


def test_changed_artefact_is_detected(sjff_models, tmp_path):
    learner = make_learner(sjff_models, tmp_path / "s")
    learner.recover()
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
        assert all(isinstance(r, RequestError) and r.code.name == "UNAVAILABLE" for r in results)
        assert learner.failed is not None and "No space left" in learner.failed
        assert learner.published.version == 3  # nothing that was not durable got published
        for a, b in zip(durable, learner.published.model.weights):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(RequestError) as err:
            await learner.learn(job(xs[10:11], labels[10], seed=10))
        assert err.value.code.name == "UNAVAILABLE"
        learner.log.append = real_append
        await learner.close(final_snapshot=False)

    asyncio.run(run())
    learner = make_learner(sjff_models, tmp_path / "s")
    learner.recover()
    assert learner.published.version == 3
