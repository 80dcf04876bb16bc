"""The Learner when its storage fails: a failed sync, a log that cannot be cut back, a writer
that dies, a shutdown or rollback that fails (in process, a real analog model, real files)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from learner_utils import code, job, make_learner, started_learner
from serving_utils import as_float
from sjff_server.errors import RequestError


def test_storage_failure_stops_learning_but_keeps_the_durable_weights(sjff_models, mnist_samples, tmp_path):
    images, labels = mnist_samples
    xs = as_float(images[:20])

    async def run():
        learner = await started_learner(sjff_models, tmp_path / "s", xs, labels, 3)
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
        learner = await started_learner(sjff_models, tmp_path / "s", xs, labels, 1)
        monkeypatch.setattr(durability, "_sync", lambda fd: (_ for _ in ()).throw(OSError(5, "EIO")))
        monkeypatch.setattr(durability.os, "ftruncate", lambda fd, n: (_ for _ in ()).throw(OSError(5, "EIO")))
        with pytest.raises(RequestError) as err:
            await learner.learn(job(xs[1:2], labels[1], seed=1), request_id="unsure")
        monkeypatch.undo()
        assert code(err.value) == "UNKNOWN" and err.value.message.startswith("outcome unknown")
        assert "ListVersions" in err.value.message and learner.failed is not None
        with pytest.raises(RequestError) as err:  # learning is stopped: a retry waits for the restart
            await learner.learn(job(xs[1:2], labels[1], seed=1), request_id="unsure")
        assert code(err.value) == "UNAVAILABLE"
        await learner.close(final_snapshot=False)

    async def restarted():
        # the write reached the file (only its sync failed): the restart replays it, and the
        # retry is answered with it instead of applying it a second time
        learner = await started_learner(sjff_models, tmp_path / "s", xs, labels, 0)
        assert learner.published.version == 2
        assert (await learner.learn(job(xs[1:2], labels[1], seed=1), request_id="unsure"))[0] == 2
        assert learner.published.version == 2
        await learner.close()

    asyncio.run(run())
    asyncio.run(restarted())


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


def test_close_finishes_when_storage_fails_during_shutdown(sjff_models, mnist_samples, tmp_path):
    images, labels = mnist_samples
    xs = as_float(images[:4])

    async def run():
        learner = await started_learner(sjff_models, tmp_path / "s", xs, labels, 0, max_group=1)

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
        learner = await started_learner(sjff_models, tmp_path / "s", xs, labels, 3)
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
