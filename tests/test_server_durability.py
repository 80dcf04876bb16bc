"""The Learner's durability: ordering, refusals, rollbacks, recovery and repair (in process, a
real analog model, real files)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from learner_utils import code, job, learn_and_crash, make_learner, replay, started_learner
from serving_utils import as_float
from sjff_server.errors import RequestError
from sjff_server.inference.engine import make_engine
from sjff_server.learning.learner import Learner
from sjff_server.learning.options import LearnOptions
from sjff_server.storage.durability import UpdateLog
from sjff_server.storage.scan import LogCorruption
from sjff_server.storage.snapshots import StateInUse
from sjff_server.storage.state import StateMismatch

from spikingjelly_ff.runtime import load_exported


def test_learner_orders_groups_refuses_and_recovers(sjff_models, mnist_samples, tmp_path):
    images, labels = mnist_samples
    xs = as_float(images[:40])

    async def run():
        learner = await started_learner(sjff_models, tmp_path / "state", xs, labels, 0, snapshot_every=15)
        # 30 concurrent updates: applied in submission order, grouped, each its own version
        results = await asyncio.gather(*[learner.learn(job(xs[i : i + 1], labels[i], seed=i)) for i in range(30)])
        assert [v for v, _ in results] == list(range(1, 31))
        assert learner.stats.mean_group_size() > 1  # they shared fsyncs
        before = [w.copy() for w in learner.published.model.weights]
        # an update that overflows the weights is refused and changes nothing (a rate finite
        # in float64 but not in the weights' float32); a rate that is no step size is bad input
        with pytest.raises(RequestError) as err:
            await learner.learn(job(xs[30:31], labels[30], seed=1, eta=1e39))
        assert code(err.value) == "FAILED_PRECONDITION" and "non-finite" in err.value.message
        with pytest.raises(RequestError) as err:
            await learner.learn(job(xs[30:31], labels[30], seed=1, eta=np.inf))
        assert code(err.value) == "INVALID_ARGUMENT" and "eta must be a finite number" in err.value.message
        assert learner.published.version == 30
        for a, b in zip(before, learner.published.model.weights):
            np.testing.assert_array_equal(a, b)
        # a refused update inside a group leaves the others of the group intact
        mixed = await asyncio.gather(
            learner.learn(job(xs[31:32], labels[31], seed=31)),
            learner.learn(job(xs[32:33], labels[32], seed=32, eta=1e39)),
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
        learner = await started_learner(sjff_models, tmp_path / "s", xs, labels, 6)
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


@pytest.mark.parametrize("kind", ["analog", "spike"])
def test_the_state_belongs_to_the_bytes_the_model_was_read_from(sjff_models, tmp_path, kind):
    """A model file replaced after the server parsed it (before its learning state was opened)
    does not lend its sum to the state of the weights parsed before: the marker names the bytes
    the served model came from, so the next start, on the new file, says the state is another
    artefact's instead of applying it to other weights."""
    path = tmp_path / Path(sjff_models[kind]).name
    shutil.copy(sjff_models[kind], path)
    first = hashlib.sha256(path.read_bytes()).hexdigest()

    def learner(model) -> Learner:
        return Learner("m", "1", make_engine(model), model, path, tmp_path / "s", LearnOptions())

    model = load_exported(path)
    assert model.source_sha256 == first and model.copy().source_sha256 == first
    other = load_exported(path)
    other.weights[0] += 0.5
    other.save(path)  # replaced between the parse and the state
    served = learner(model)
    served.recover()
    assert json.loads((tmp_path / "s" / "artefact.json").read_text())["sha256"] == first
    served.state.release()
    with pytest.raises(StateMismatch, match="another artefact"):
        learner(load_exported(path)).recover()


@pytest.mark.parametrize("marker", ["deleted", "no sha256", "snapshots only"])
def test_state_without_a_marker_naming_its_model_file_is_refused(sjff_models, mnist_samples, tmp_path, marker):
    """An update log or snapshots without ``artefact.json`` (or one without its sha256) belong
    to an unknown model file: replayed onto the one there now they would give weights no caller
    was answered with, so recovery refuses (--reset-changed-models archives them)."""
    images, labels = mnist_samples
    xs = as_float(images[:10])
    state = tmp_path / "s"
    learn_and_crash(sjff_models, state, xs, labels, 5, snapshot_every=2 if marker == "snapshots only" else 0)
    path = state / "artefact.json"
    if marker == "no sha256":
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "sha256"}))
    else:
        path.unlink()
    if marker == "snapshots only":
        for segment in (state / "log").glob("*.log"):
            segment.unlink()
    with pytest.raises(StateMismatch, match="holds learning state .* but no artefact.json"):
        make_learner(sjff_models, state).recover()
    learner = make_learner(sjff_models, state, reset_changed=True)
    notes = learner.recover()
    assert any("archived" in n for n in notes) and learner.published.version == 0
    learner.state.release()
    model_sha = hashlib.sha256(Path(sjff_models["analog"]).read_bytes()).hexdigest()
    assert json.loads(path.read_text())["sha256"] == model_sha


def test_replay_is_checked_against_logged_digests(sjff_models, mnist_samples, tmp_path, monkeypatch):
    """Digests logged every few versions make a replay that differs in the last bit (other
    arithmetic) an error that says so, not silently other weights."""
    from sjff_server.storage.snapshots import state_digest
    from sjff_server.storage.state import ReplayMismatch

    images, labels = mnist_samples
    xs = as_float(images[:12])

    async def run():
        learner = await started_learner(sjff_models, tmp_path / "s", xs, labels, 10, digest_every=4)
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
        learner = await started_learner(sjff_models, state, xs, labels, 5)
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


def test_repair_says_so_when_no_snapshot_holds_the_start_of_the_log(sjff_models, mnist_samples, tmp_path):
    """Every snapshot deleted after the log before them was pruned: the server cannot rebuild
    the state, and repair had reported it clean. It says it is beyond a cut and changes nothing."""
    from sjff_server.storage.repair import main as repair_main
    from sjff_server.storage.repair import plan_repair

    images, labels = mnist_samples
    xs = as_float(images[:12])
    state = tmp_path / "state" / "mnist" / "1"
    learn_and_crash(sjff_models, state, xs, labels, 12, snapshot_every=4, keep_snapshots=1)
    log = UpdateLog(state / "log")
    assert log.segments()[0][0] > 0  # the log before the kept snapshot is pruned
    assert plan_repair(state).lost is None
    for snap in (state / "snapshots").glob("*.npz"):
        snap.unlink()
    plan = plan_repair(state)
    assert plan.lost is not None and "cannot be rebuilt" in plan.describe()
    before = sorted((p.name, p.stat().st_size) for p in (state / "log").iterdir())
    assert repair_main([str(tmp_path / "state"), "--model", "mnist", "--truncate"]) == 1
    assert sorted((p.name, p.stat().st_size) for p in (state / "log").iterdir()) == before
    with pytest.raises(LogCorruption):
        make_learner(sjff_models, state).recover()


def test_a_state_moved_with_its_renamed_model_still_loads(sjff_models, mnist_samples, tmp_path):
    """What ties a snapshot to its model is the artefact's sha256, not the model's name: a state
    moved along with its model to a new name (or version folder) rebuilds what it held."""
    images, labels = mnist_samples
    xs = as_float(images[:12])
    old = tmp_path / "state" / "mnist" / "1"
    weights = learn_and_crash(sjff_models, old, xs, labels, 12, snapshot_every=4, keep_snapshots=1)
    assert UpdateLog(old / "log").segments()[0][0] > 0  # only the snapshot holds the early versions
    new = tmp_path / "state" / "digits" / "2"
    new.parent.mkdir(parents=True)
    os.replace(old, new)
    model = load_exported(sjff_models["analog"], threads=1)
    learner = Learner("digits", "2", make_engine(model), model, sjff_models["analog"], new, LearnOptions())
    learner.recover()
    assert learner.published.version == 12
    assert all(np.array_equal(a, b) for a, b in zip(learner.published.model.weights, weights))
    learner.state.release()
