"""On-line learning over gRPC: versions, durability, token, refusals, admin calls, crashes."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import serving_utils as su
from sjff_client import AsyncClient, Client, RequestFailed
from sjff_client.client import build_learn_request
from sjff_client.pb import learning_pb2 as lpb
from sjff_client.pb import learning_pb2_grpc as lpb_grpc
from sjff_server.harness import ServerProcess
from sjff_server.storage.durability import UpdateLog

from spikingjelly_ff.runtime import load_exported


@pytest.fixture
def repo(sjff_models, tmp_path):
    return su.make_repository(
        tmp_path / "repo",
        {"mnist": sjff_models["analog"], "snn": sjff_models["spike"], "frozen": sjff_models["analog"]},
        {"frozen": {"learning": False}},
    )


def start(repo, tmp_path, token_path, *extra, **kw) -> ServerProcess:
    args = ["--max-eta", "1e39", "--snapshot-interval", "0", *extra]
    return ServerProcess(repo, state_dir=tmp_path / "state", token_file=token_path, extra_args=args, **kw).start()


def replay(path, updates):
    """A fresh in-process model with (images, labels, positive, seed, eta) updates applied."""
    m = load_exported(path, threads=1) if str(path).endswith(".onnx") else load_exported(path)
    for x, labels, positive, seed, eta in updates:
        m.learn(x, labels, positive, seed=seed, eta=eta)
    return m


def rpc_code(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code()


def test_learn_versions_replay_exactly_and_survive_restart(repo, tmp_path, token_path, sjff_models, mnist_samples):
    images, labels = mnist_samples
    x = su.as_float(images)
    srv = start(repo, tmp_path, token_path)
    try:
        with Client(srv.target, token_file=token_path) as c:
            updates = []
            for i in range(12):
                positive = np.array([i % 3 != 0], dtype=np.float32)
                label = labels[i] if positive[0] else (labels[i] + 1) % 10
                r = c.learn(x[i : i + 1], [label], positive.astype(bool), seed=100 + i, eta=0.05 if i == 4 else None)
                assert r.version == i + 1 and r.log_odds.shape == (1,)
                updates.append((x[i : i + 1], np.array([label]), positive, 100 + i, 0.05 if i == 4 else None))
            # a batch of several samples is ONE update
            r = c.learn(images[20:24], labels[20:24])  # uint8 images, default seed = new version
            assert r.version == 13 and r.log_odds.shape == (4,)
            updates.append((x[20:24], labels[20:24], np.ones(4, np.float32), 13, None))
            ref = replay(sjff_models["analog"], updates)
            got = c.infer(x[:64])
            assert got.version == 13
            np.testing.assert_allclose(got.scores, ref.run(x[:64])["scores"], rtol=1e-5, atol=1e-5)
            # the log-odds the server reported are those of the model before each update
            before = replay(sjff_models["analog"], updates[:12])
            lo = before.learn(x[20:24], labels[20:24], np.ones(4, np.float32), seed=13)
            np.testing.assert_allclose(r.log_odds, lo, rtol=1e-5, atol=1e-5)
            stats = {m.model_name: m for m in c.stats().models}
            assert stats["mnist"].learning_version == 13 and stats["mnist"].updates_accepted == 13
            assert stats["mnist"].samples_learned == 16 and not stats["frozen"].learning_enabled
        assert srv.stop() == 0
        assert any(r["msg"] == "learning state saved" and r["learning_version"] == 13 for r in srv.log_records())
        srv.restart()
        with Client(srv.target, token_file=token_path) as c:
            again = c.infer(x[:64])
            assert again.version == 13
            np.testing.assert_array_equal(again.scores, got.scores)
            assert c.learn(x[30:31], [labels[30]]).version == 14
    finally:
        srv.stop()


def test_a_request_id_is_applied_once_across_retries_and_a_restart(repo, tmp_path, token_path, mnist_samples):
    """Without --replication: a retried Learn (unary or in a stream) gets its first answer; the
    same id with other samples is refused; after a restart the id is still known."""
    images, labels = mnist_samples
    x = su.as_float(images[:8])
    srv = start(repo, tmp_path, token_path)
    try:
        with Client(srv.target, token_file=token_path) as c:
            first = c.learn(x[:2], labels[:2], seed=5, request_id="retry-me")
            again = c.learn(x[:2], labels[:2], seed=5, request_id="retry-me")
            assert first.version == again.version == 1 and np.array_equal(first.log_odds, again.log_odds)
            code = rpc_code(lambda: c.learn(x[2:3], labels[2:3], request_id="retry-me"))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            samples = [(x[3 + i % 2 : 4 + i % 2], labels[3 + i % 2 : 4 + i % 2], None, f"s{i % 2}") for i in range(4)]
            streamed = list(c.learn_stream(samples))
            assert [r.version for r in streamed] == [2, 3, 2, 3]
            stats = {m.model_name: m for m in c.stats().models}
            assert stats["mnist"].learning_version == 3 and stats["mnist"].updates_accepted == 3
        metrics = urllib.request.urlopen(srv.metrics_url, timeout=5).read().decode()  # noqa: S310 - loopback
        assert 'sjff_learning_updates_total{model="mnist",outcome="repeated",version="1"} 3.0' in metrics
        assert 'sjff_learning_updates_total{model="mnist",outcome="accepted",version="1"} 3.0' in metrics
        assert 'sjff_learning_request_ids{model="mnist",version="1"} 3.0' in metrics
        assert 'sjff_learning_request_ids_forgotten_early{model="mnist",version="1"} 0.0' in metrics
        assert srv.stop() == 0
        srv.restart()
        with Client(srv.target, token_file=token_path) as c:
            assert c.learn(x[:2], labels[:2], seed=5, request_id="retry-me").version == 1
            assert c.list_versions().current_version == 3
        scrape = urllib.request.urlopen(srv.metrics_url, timeout=5).read().decode()  # noqa: S310 - loopback
        assert 'sjff_learning_request_ids{model="mnist",version="1"} 3.0' in scrape  # rebuilt at the restart
    finally:
        srv.stop()


def test_token_is_required_and_refusals_change_nothing(repo, tmp_path, token_path, mnist_samples):
    images, labels = mnist_samples
    srv = start(repo, tmp_path, token_path)
    try:
        good = Client(srv.target, token_file=token_path)
        before = good.infer(images[:32])
        for client in (Client(srv.target), Client(srv.target, token="not-the-token-0123456789")):
            assert rpc_code(lambda c=client: c.learn(images[:1], [labels[0]])) == grpc.StatusCode.UNAUTHENTICATED
            assert rpc_code(lambda c=client: c.rollback(0)) == grpc.StatusCode.UNAUTHENTICATED
            assert rpc_code(lambda c=client: c.snapshot()) == grpc.StatusCode.UNAUTHENTICATED
            assert rpc_code(lambda c=client: c.stats()) == grpc.StatusCode.UNAUTHENTICATED
            assert (
                rpc_code(lambda c=client: list(c.learn_stream([(images[:1], [1])]))) == grpc.StatusCode.UNAUTHENTICATED
            )
            client.close()
        bad = [
            ({"labels": [10]}, "labels must lie in [0, 10)"),
            ({"labels": [-1]}, "labels must lie"),
            ({"eta": 0.0}, "eta must be finite"),
            ({"eta": float("nan")}, "eta must be finite"),
            ({"eta": -1.0}, "eta must be finite"),
        ]
        for change, message in bad:
            req = build_learn_request(images[:1], change.get("labels", [labels[0]]), eta=change.get("eta"))
            with pytest.raises(grpc.RpcError) as err:
                good.learning.Learn(req, metadata=good._metadata)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
        req = build_learn_request(images[:2], [1, 2])
        req.images = req.images[:-1]
        with pytest.raises(grpc.RpcError) as err:
            good.learning.Learn(req, metadata=good._metadata)
        assert "images hold 1567 bytes" in err.value.details()
        nan = build_learn_request(np.full((1, 784), np.nan, np.float32), [1])
        assert rpc_code(lambda: good.learning.Learn(nan, metadata=good._metadata)) == grpc.StatusCode.INVALID_ARGUMENT
        assert rpc_code(lambda: good.learn(images[:1], [1], model="nope")) == grpc.StatusCode.NOT_FOUND
        assert rpc_code(lambda: good.learn(images[:1], [1], model="frozen")) == grpc.StatusCode.FAILED_PRECONDITION
        assert rpc_code(lambda: good.learn(images[:1], [1], expected_version=5)) == grpc.StatusCode.ABORTED
        # an update that would make the spiking model's weights non-finite is refused
        snn_before = good.infer(images[:2], model="snn")
        with pytest.raises(grpc.RpcError) as err:
            good.learn(images[:1], [labels[0]], model="snn", eta=3e38)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "non-finite" in err.value.details()
        snn_after = good.infer(images[:2], model="snn")
        assert snn_after.version == 0
        np.testing.assert_array_equal(snn_after.scores, snn_before.scores)
        after = good.infer(images[:32])
        assert after.version == 0
        np.testing.assert_array_equal(after.scores, before.scores)
        stats = {m.model_name: m for m in good.stats().models}
        assert stats["snn"].updates_refused == 1 and stats["mnist"].updates_accepted == 0
        good.close()
    finally:
        srv.stop()


def test_learn_stream_admin_calls_and_rollback(repo, tmp_path, token_path, mnist_samples):
    images, labels = mnist_samples
    srv = start(repo, tmp_path, token_path)
    try:
        with Client(srv.target, token_file=token_path) as c:
            samples = [(images[i : i + 1], [labels[i]]) for i in range(20)]
            samples[7] = (images[7:8], [42])  # refused in-band, the stream goes on
            results = list(c.learn_stream(samples))
            assert isinstance(results[7], RequestFailed) and results[7].code == "INVALID_ARGUMENT"
            versions = [r.version for r in results if not isinstance(r, RequestFailed)]
            assert versions == list(range(1, 20))
            at5 = None
            snap = c.snapshot(export=True)
            assert snap.version == 19 and snap.bytes > 0 and snap.artifact_path.endswith("model.onnx")
            exported = load_exported(snap.artifact_path, threads=1)
            now = c.infer(images[:16])
            np.testing.assert_allclose(
                exported.run(su.as_float(images[:16]))["scores"], now.scores, rtol=1e-5, atol=1e-5
            )
            lv = c.list_versions(limit=5)
            assert lv.current_version == 19 and lv.oldest_restorable == 0
            assert [s.version for s in lv.snapshots] == [19] and [h.version for h in lv.history] == [15, 16, 17, 18, 19]
            # roll back to version 5: a new version (20) with version 5's weights
            r = c.rollback(5)
            assert (r.version, r.restored_version) == (20, 5)
            at5 = c.infer(images[:16])
            assert at5.version == 20
            ref = replay(
                srv.repo / "mnist" / "1" / "model.onnx",
                [
                    (su.as_float(images[i : i + 1]), np.array([labels[i]]), np.ones(1, np.float32), i + 1, None)
                    for i in range(5)
                ],
            )
            np.testing.assert_allclose(at5.scores, ref.run(su.as_float(images[:16]))["scores"], rtol=1e-5, atol=1e-5)
            assert c.list_versions(limit=1).history[0].kind == "rollback"
            assert rpc_code(lambda: c.rollback(99)) == grpc.StatusCode.OUT_OF_RANGE
            assert c.learn(images[:1], [labels[0]]).version == 21
    finally:
        srv.stop()


def test_kill_9_during_learning_loses_no_acknowledged_update(repo, tmp_path, token_path, sjff_models, mnist_samples):
    images, labels = mnist_samples
    srv = start(repo, tmp_path, token_path, "--snapshot-every", "50")
    acked: dict[int, tuple[int, int, str]] = {}  # version -> (sample index, seed, request id)
    unsure: list[tuple[int, int, str]] = []  # the calls the kill cut off: applied or not
    stop = threading.Event()

    def learner(worker: int) -> None:
        c = Client(srv.target, token_file=token_path, timeout=10)
        i = worker
        while not stop.is_set():
            sent = (i % 256, 10_000 + i, f"kill-{worker}-{i}")
            try:
                r = c.learn(images[i % 256 : i % 256 + 1], [labels[i % 256]], seed=sent[1], request_id=sent[2])
            except grpc.RpcError:
                unsure.append(sent)
                return  # the server is gone
            acked[r.version] = sent
            i += 4

    threads = [threading.Thread(target=learner, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    srv.kill()  # SIGKILL in the middle of the learning traffic
    stop.set()
    for t in threads:
        t.join(15)
    top = max(acked)
    assert len(acked) >= 150 and sorted(acked) == list(range(1, top + 1))

    # every acknowledged update is in the log with exactly what was sent
    log = UpdateLog(tmp_path / "state" / "mnist" / "1" / "log")  # a torn tail is skipped when read
    logged = {r.version: r for r in log.records(0, 10**9) if r.changes_state}
    for version, (idx, seed, _) in acked.items():
        if version in logged:  # older versions may already be covered by a snapshot only
            u = logged[version].update
            assert u.seed == seed and int(u.labels[0]) == labels[idx]
            np.testing.assert_array_equal(u.images, su.as_float(images[idx : idx + 1]))
    srv.restart()
    try:
        with Client(srv.target, token_file=token_path) as c:
            current = c.list_versions().current_version
            assert current >= top  # durable but unacknowledged updates may also be there
            # the restarted weights are exactly the replay of the acknowledged updates (+ logged extras)
            updates = []
            for v in range(1, current + 1):
                if v in acked:
                    idx, seed, _ = acked[v]
                else:
                    u = logged[v].update
                    idx, seed = int(np.flatnonzero((su.as_float(images) == u.images[0]).all(1))[0]), u.seed
                updates.append(
                    (su.as_float(images[idx : idx + 1]), labels[idx : idx + 1], np.ones(1, np.float32), seed, None)
                )
            ref = replay(sjff_models["analog"], updates)
            got = c.infer(images[:32])
            assert got.version == current
            np.testing.assert_allclose(got.scores, ref.run(su.as_float(images[:32]))["scores"], rtol=1e-5, atol=1e-5)
            # what the clients could not be sure of, retried with its request id, is applied once
            # (answered from the log where the kill came after the write); an acknowledged one,
            # retried, is answered as before
            assert current - top <= len(unsure) <= 4
            for idx, seed, rid in unsure:
                c.learn(images[idx : idx + 1], [labels[idx]], seed=seed, request_id=rid)
            for v in sorted(acked)[-8:]:
                idx, seed, rid = acked[v]
                assert c.learn(images[idx : idx + 1], [labels[idx]], seed=seed, request_id=rid).version == v
            assert c.list_versions().current_version == top + len(unsure)
    finally:
        srv.stop()


def test_concurrent_learn_and_infer_never_see_torn_weights(repo, tmp_path, token_path, sjff_models, mnist_samples):
    images, labels = mnist_samples
    probe = images[200:208]
    srv = start(repo, tmp_path, token_path)
    observed: list[tuple[int, np.ndarray]] = []
    acked: dict[int, tuple[int, int]] = {}

    async def run():
        async with AsyncClient(srv.target, token_file=token_path) as c:
            stop = asyncio.Event()

            async def learner(w: int) -> None:
                for k in range(40):
                    i = (w * 40 + k) % 200
                    r = await c.learn(images[i : i + 1], [labels[i]], seed=w * 1000 + k)
                    acked[r.version] = (i, w * 1000 + k)

            async def reader() -> None:
                while not stop.is_set():
                    r = await c.infer(probe)
                    observed.append((r.version, r.scores.copy()))

            readers = [asyncio.create_task(reader()) for _ in range(4)]
            await asyncio.gather(*[learner(w) for w in range(4)])
            stop.set()
            await asyncio.gather(*readers)
            return (await c.list_versions()).current_version

    try:
        final = asyncio.run(run())
    finally:
        srv.stop()
    assert final == 160 and sorted(acked) == list(range(1, 161))  # acknowledged == final version
    # rebuild every version offline and check each observed answer against its version
    m = load_exported(sjff_models["analog"], threads=1)
    expected = {0: m.run(su.as_float(probe))["scores"]}
    for v in range(1, 161):
        i, seed = acked[v]
        m.learn(su.as_float(images[i : i + 1]), labels[i : i + 1], np.ones(1, np.float32), seed=seed)
        expected[v] = m.run(su.as_float(probe))["scores"]
    assert len(observed) > 20 and len({v for v, _ in observed}) > 5
    for version, scores in observed:
        np.testing.assert_allclose(scores, expected[version], rtol=1e-5, atol=1e-5)
        if version > 0:  # and it is not the neighbouring version: the check can tell them apart
            assert not np.allclose(scores, expected[version - 1], rtol=1e-5, atol=1e-5)


def test_sigterm_drains_in_flight_updates(repo, tmp_path, token_path, mnist_samples):
    images, labels = mnist_samples
    srv = start(repo, tmp_path, token_path, "--shutdown-grace", "20")
    results: list = []

    async def run():
        async with AsyncClient(srv.target, token_file=token_path, model="snn") as c:
            calls = [c.learn(su.as_float(images[i : i + 16]), labels[i : i + 16], seed=i) for i in range(12)]
            tasks = [asyncio.ensure_future(x) for x in calls]
            await asyncio.sleep(0.3)
            srv.proc.send_signal(15)  # SIGTERM while the spiking updates are queued
            results.extend(await asyncio.gather(*tasks, return_exceptions=True))

    asyncio.run(run())
    assert srv.proc.wait(60) == 0
    ok = [r.version for r in results if not isinstance(r, BaseException)]
    assert sorted(ok) == list(range(1, len(ok) + 1)) and len(ok) >= 1
    for r in results:
        if isinstance(r, BaseException):
            assert r.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    saved = [r for r in srv.log_records() if r["msg"] == "learning state saved" and r["model"] == "snn"]
    assert saved and saved[0]["learning_version"] == max(ok)
    srv.restart()
    try:
        with Client(srv.target, token_file=token_path, model="snn") as c:
            assert c.list_versions().current_version == max(ok)
    finally:
        srv.stop()


def test_a_short_grace_never_cuts_off_an_update_it_then_applies(repo, tmp_path, token_path, mnist_samples):
    """SIGTERM with a grace period shorter than the queued work: the learners answer their
    calls before the server cancels any. Whatever the timing, every update and rollback the
    server applied was answered OK, and every other call was refused as not applied, or cut
    off before it reached the learner (before, gRPC's "Cancelling all calls" reached calls
    whose updates were then written: 29 refused, 30 applied)."""
    images, labels = mnist_samples
    srv = start(repo, tmp_path, token_path, "--shutdown-grace", "0.3")
    x = su.as_float(np.resize(images, (256, 784)))
    y = np.resize(labels, 256)

    async def run():
        async with AsyncClient(srv.target, token_file=token_path, model="snn") as c:
            tasks = [asyncio.ensure_future(c.learn(x, y, seed=i)) for i in range(20)]
            tasks.append(asyncio.ensure_future(c.rollback(1)))
            tasks += [asyncio.ensure_future(c.learn(x, y, seed=100 + i)) for i in range(10)]
            await asyncio.sleep(0.5)
            srv.proc.send_signal(15)
            return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(run())
    assert srv.proc.wait(60) == 0
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    for r in refused:
        assert r.code() == grpc.StatusCode.UNAVAILABLE, r
        assert "shutting down" in r.details() or r.details() == "Cancelling all calls", r
    srv.restart()
    try:
        with Client(srv.target, token_file=token_path, model="snn") as c:
            assert c.list_versions().current_version == len(ok)  # each answered call made one version
    finally:
        srv.stop()


def test_learning_without_state_dir_is_disabled(repo, token_path, mnist_samples):
    images, labels = mnist_samples
    with (
        ServerProcess(repo, token_file=token_path, metrics=False) as srv,
        Client(srv.target, token_file=token_path) as c,
    ):
        with pytest.raises(grpc.RpcError) as err:
            c.learn(images[:1], [labels[0]])
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--state-dir" in err.value.details()
        stub = lpb_grpc.LearningStub(c.channel)
        stats = stub.GetStats(lpb.GetStatsRequest(), metadata=c._metadata)
        assert not any(m.learning_enabled for m in stats.models)
        assert json.loads(json.dumps(srv.info))["learning"] is False
