"""Idempotent Learn without --replication: an update with a request_id is applied once while its
id is remembered, whether the retry comes concurrently, after its caller went away, after a
restart, or after the log segments that held it were pruned with old snapshots (in process, a
real analog model, real files)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import numpy as np
import pytest
from learner_utils import code, job, started_learner
from serving_utils import as_float
from sjff_server.storage.durability import UpdateLog
from sjff_server.storage.records import UPDATE, UpdateRecord, decode_payload, encode_payload
from sjff_server.storage.requests import Answer, RequestWindow, read_answers


def _weights(learner) -> list[np.ndarray]:
    return [w.copy() for w in learner.published.model.weights]


def _learn_and_crash(sjff_models, state, xs, labels, n: int, **opts) -> list:
    """``n`` updates with request ids ``id-<i>`` (sample i, seed i), closed without a final
    snapshot as a crash after the last answer leaves it; returns their answers."""

    async def run():
        learner = await started_learner(sjff_models, state, xs, labels, 0, **opts)
        got = [await learner.learn(job(xs[i : i + 1], labels[i], seed=i), request_id=f"id-{i}") for i in range(n)]
        await learner.close(final_snapshot=False)
        return got

    return asyncio.run(run())


def _retries_after_restart(sjff_models, state, xs, labels, got: list, snapshot: int = 0, **opts) -> None:
    """A restarted learner (resumed from the snapshot of version ``snapshot``) answers each
    retry of ``got`` as before and changes nothing."""

    async def run():
        learner = await started_learner(sjff_models, state, xs, labels, 0, **opts)
        assert learner.last_snapshot == snapshot
        weights = _weights(learner)
        for i, (version, log_odds) in enumerate(got):
            again = await learner.learn(job(xs[i : i + 1], labels[i], seed=i), request_id=f"id-{i}")
            assert again[0] == version and np.array_equal(again[1], log_odds)
        assert learner.published.version == len(got)
        assert all(np.array_equal(a, b) for a, b in zip(weights, _weights(learner)))
        assert (await learner.learn(job(xs[-1:], labels[len(xs) - 1]), request_id="new"))[0] == len(got) + 1
        await learner.close()

    asyncio.run(run())


def test_a_retry_is_answered_and_changes_nothing(sjff_models, mnist_samples, tmp_path):
    images, labels = mnist_samples
    xs = as_float(images[:8])

    async def run():
        learner = await started_learner(sjff_models, tmp_path / "state", xs, labels, 0)
        first = await learner.learn(job(xs[:1], labels[0], seed=3), request_id="a")
        after = _weights(learner)
        again = await learner.learn(job(xs[:1], labels[0], seed=3), request_id="a")
        assert first[0] == again[0] == learner.published.version == 1
        np.testing.assert_array_equal(first[1], again[1])
        assert all(np.array_equal(a, b) for a, b in zip(after, _weights(learner)))
        # the same id with other samples is refused, not dropped: a new update needs a new id
        with pytest.raises(Exception) as err:
            await learner.learn(job(xs[1:2], labels[1]), request_id="a")
        assert code(err.value) == "INVALID_ARGUMENT" and "version 1" in str(err.value)
        assert (await learner.learn(job(xs[1:2], labels[1]), request_id="b"))[0] == 2
        assert (await learner.learn(job(xs[1:2], labels[1])))[0] == 3  # no id: applied each time
        assert learner.stats.accepted == 3
        await learner.close()

    asyncio.run(run())


def test_concurrent_retries_share_one_application(sjff_models, mnist_samples, tmp_path):
    images, labels = mnist_samples
    xs = as_float(images[:16])

    async def run():
        learner = await started_learner(sjff_models, tmp_path / "state", xs, labels, 0)
        calls = []
        for i in range(6):  # each update sent three times, the copies interleaved with the others
            calls += [learner.learn(job(xs[i : i + 1], labels[i], seed=i), request_id=f"r{i}") for _ in range(3)]
        got = await asyncio.gather(*calls)
        versions = [v for v, _ in got]
        assert sorted(set(versions)) == list(range(1, 7)) and learner.published.version == 6
        for i in range(6):
            same = got[3 * i : 3 * i + 3]
            assert len({v for v, _ in same}) == 1 and all(np.array_equal(lo, same[0][1]) for _, lo in same)
        assert learner.stats.accepted == 6
        await learner.close()

    asyncio.run(run())


def test_a_caller_gone_before_the_start_leaves_it_for_a_retry(sjff_models, mnist_samples, tmp_path):
    images, labels = mnist_samples
    xs = as_float(images[:8])

    async def run():
        learner = await started_learner(sjff_models, tmp_path / "state", xs, labels, 0, max_group=1)
        gate, entered = threading.Event(), threading.Event()
        compute = learner.writer._compute_group

        def held(base, updates):  # the first group waits in the compute thread until released
            entered.set()
            gate.wait(30)
            return compute(base, updates)

        learner.writer._compute_group = held
        running = asyncio.ensure_future(learner.learn(job(xs[:1], labels[0], seed=1), request_id="running"))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
        queued = asyncio.ensure_future(learner.learn(job(xs[1:2], labels[1], seed=2), request_id="queued"))
        # a caller whose deadline passes while its update waits, and a retry without one
        soon = asyncio.get_running_loop().time() + 0.02
        late = [learner.learn(job(xs[2:3], labels[2], seed=3), d, request_id="late") for d in (soon, None)]
        late = [asyncio.ensure_future(x) for x in late]
        await asyncio.sleep(0.05)
        # both callers go away: the started update is still applied, the queued one is not, and
        # a retry sent right behind the cancellation queues it anew
        running.cancel()
        queued.cancel()
        requeued = asyncio.ensure_future(learner.learn(job(xs[1:2], labels[1], seed=2), request_id="queued"))
        retry = asyncio.ensure_future(learner.learn(job(xs[:1], labels[0], seed=1), request_id="running"))
        await asyncio.sleep(0)
        learner.writer._compute_group = compute
        gate.set()
        assert (await retry)[0] == 1  # joined the first call's application
        # the retry kept the update alive past its first caller's deadline
        assert [v for v, _ in await asyncio.gather(*late)] == [2, 2]
        assert (await requeued)[0] == 3
        assert (await learner.learn(job(xs[1:2], labels[1], seed=2), request_id="queued"))[0] == 3
        assert learner.published.version == 3 and learner.stats.accepted == 3
        for task in (running, queued):
            assert task.cancelled()
        await learner.close()

    asyncio.run(run())


def test_a_retry_after_a_restart_gets_the_first_answer(sjff_models, mnist_samples, tmp_path):
    images, labels = mnist_samples
    xs = as_float(images[:12])
    got = _learn_and_crash(sjff_models, tmp_path / "state", xs, labels, 5)
    _retries_after_restart(sjff_models, tmp_path / "state", xs, labels, got)


def test_ids_outlive_the_log_segments_pruned_with_old_snapshots(sjff_models, mnist_samples, tmp_path):
    images, labels = mnist_samples
    xs = as_float(images[:12])
    state = tmp_path / "state"
    opts = {"snapshot_every": 2, "keep_snapshots": 1, "max_group": 1}
    got = _learn_and_crash(sjff_models, state, xs, labels, 7, **opts)
    log = UpdateLog(state / "log")
    assert log.segments()[0][0] == 6  # versions 1..6 are only in the snapshot now
    snapshots = sorted((state / "snapshots").glob("*.npz"))
    assert [int(p.stem) for p in snapshots] == [6]
    assert sorted(rid for rid, _ in read_answers(snapshots[0])) == [f"id-{i}" for i in range(6)]
    _retries_after_restart(sjff_models, state, xs, labels, got, 6, **opts)


def test_the_window_forgets_by_age_then_by_memory():
    now = [1000.0]
    window = RequestWindow(60.0, 10_000, clock=lambda: now[0])
    odds = np.zeros(4, np.float32)
    window.add([(f"k{i}", Answer(i + 1, 1000.0 + i, odds, bytes(32))) for i in range(10)])
    assert window.get("k0").version == 1 and len(window) == 10
    now[0] = 1061.5  # k0 and k1 are past the window
    assert window.get("k0") is None and window.get("k2").version == 3
    window.add([("late", Answer(11, 1061.5, odds, bytes(32)))])
    assert len(window) == 9 and window.forgotten_early == 0
    # a flood of distinct ids is bounded by memory: the oldest go first, and are counted
    window.add([(f"f{i}", Answer(12 + i, 1061.5, odds, bytes(32))) for i in range(100)])
    assert window.bytes <= 10_000 and window.get("f99").version == 111 and window.get("k2") is None
    assert window.forgotten_early == 9 + 100 - len(window)
    # an id keeps its answer; one applied again (forgotten or expired meanwhile) takes the new one
    window.add([("f99", Answer(50, 1061.5, odds, bytes(32)))])
    assert window.get("f99").version == 111
    now[0] = 2000.0
    assert window.get("f99") is None
    window.add([("f99", Answer(500, 2000.0, odds, bytes(32)))])
    assert window.get("f99").version == 500 and len(window) == 1


def test_an_update_record_carries_its_id_and_answer():
    x = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    plain = job(x, 1, seed=5, eta=0.1)
    plain = replace(plain, labels=np.array([1, 2]), positive=np.array([1.0, 0.0], np.float32))
    old = encode_payload(UpdateRecord(UPDATE, 7, 1.5, plain))
    assert old[0] == UPDATE and decode_payload(old).update.request_id == ""  # as earlier releases wrote it
    odds = np.array([0.25, -3.0], np.float32)
    rec = UpdateRecord(UPDATE, 7, 1.5, replace(plain, request_id="é-7"), log_odds=odds)
    payload = encode_payload(rec)
    assert payload[0] == 4 and len(payload) == len(old) + 2 + len("é-7".encode()) + 8
    back = decode_payload(payload)
    assert back.kind == UPDATE and back.update.request_id == "é-7" and np.array_equal(back.log_odds, odds)
    np.testing.assert_array_equal(back.update.images, x)
    assert back.update.samples_sha256() == rec.update.samples_sha256()
    for bad in (payload[:-1], payload + b"\0", payload[: len(old) + 1]):
        with pytest.raises(ValueError):
            decode_payload(bad)
    with pytest.raises(ValueError):  # an answer per sample
        encode_payload(replace(rec, log_odds=odds[:1]))


def test_damaged_ids_in_a_snapshot_come_from_an_older_one_and_the_log(sjff_models, mnist_samples, tmp_path):
    images, labels = mnist_samples
    xs = as_float(images[:8])
    state = tmp_path / "state"
    opts = {"snapshot_every": 3, "keep_snapshots": 2, "max_group": 1}
    got = _learn_and_crash(sjff_models, state, xs, labels, 7, **opts)
    newest = sorted((state / "snapshots").glob("*.npz"))[-1]
    with np.load(newest) as z:
        arrays = dict(z)
    arrays["rq_id_end"] = arrays["rq_id_end"][:-1]  # offsets that no longer match the ids
    with open(newest, "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(ValueError, match="request-id arrays"):
        read_answers(newest)
    # the weights still come from the newest snapshot; the ids from the older one and the log
    _retries_after_restart(sjff_models, state, xs, labels, got, 6, **opts)


def test_past_the_memory_bound_the_oldest_ids_are_forgotten_and_said(sjff_models, mnist_samples, tmp_path, caplog):
    images, labels = mnist_samples
    xs = as_float(images[:8])

    async def run():
        # room for the answers of two single-sample updates
        learner = await started_learner(sjff_models, tmp_path / "state", xs, labels, 0, request_window_bytes=1300)
        for i in range(5):
            await learner.learn(job(xs[i : i + 1], labels[i], seed=i), request_id=f"id-{i}")
        window = learner.state.requests
        assert len(window) == 2 and window.forgotten_early == 3
        # a forgotten id is a new update again; a remembered one is answered
        assert (await learner.learn(job(xs[4:5], labels[4], seed=4), request_id="id-4"))[0] == 5
        assert (await learner.learn(job(xs[:1], labels[0], seed=0), request_id="id-0"))[0] == 6
        await learner.close()

    asyncio.run(run())
    warned = [r for r in caplog.records if "forgotten before --idempotency-window-s" in r.getMessage()]
    assert len(warned) == 1
