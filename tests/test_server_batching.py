"""Dynamic batching, interruptible workers, tokens, request validation, repository scanning."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import grpc
import numpy as np
import pytest
from sjff_client.pb import grpc_service_pb2 as pb
from sjff_server.auth import Authenticator, AuthError
from sjff_server.batching import Batcher
from sjff_server.engine import InferOptions
from sjff_server.errors import RequestError
from sjff_server.interrupt import Interrupted, WorkerPool
from sjff_server.repository import scan_repository
from sjff_server.validation import InferPlan, decode_infer

# -- batching -------------------------------------------------------------------------------------


def test_concurrent_requests_share_batches_and_get_their_rows():
    calls = []

    def run(x, opts):
        calls.append(len(x))
        return {"double": x * 2, "row": x[:, :1]}, 7

    async def main():
        b = Batcher(run, max_batch=8)
        xs = [np.full((1 + i % 3, 4), i, dtype=np.float32) for i in range(10)]
        futs = [b.submit(x, InferOptions()) for x in xs]
        outs = await asyncio.gather(*futs)
        for x, (out, version) in zip(xs, outs):
            assert version == 7
            np.testing.assert_array_equal(out["double"], x * 2)
        return calls

    calls = asyncio.run(main())
    assert sum(calls) == sum(1 + i % 3 for i in range(10))
    assert max(calls) <= 8 and len(calls) < 10  # batched, never above max_batch


def test_options_seeds_cancellation_and_errors():
    seen = []

    def run(x, opts):
        seen.append((len(x), opts))
        if opts.steps == 99:
            raise ValueError("boom")
        return {"x": x}, 0

    async def main():
        b = Batcher(run, max_batch=64)
        plain = [b.submit(np.zeros((1, 2), np.float32), InferOptions()) for _ in range(3)]
        seeded = [b.submit(np.zeros((1, 2), np.float32), InferOptions(seed=s)) for s in (1, 2)]
        gone = b.submit(np.zeros((1, 2), np.float32), InferOptions())
        gone.cancel()
        expired = b.submit(np.zeros((1, 2), np.float32), InferOptions(), deadline=time.monotonic() - 1)
        bad = b.submit(np.zeros((1, 2), np.float32), InferOptions(steps=99))
        await asyncio.gather(*plain, *seeded)
        with pytest.raises(asyncio.TimeoutError):
            await expired
        with pytest.raises(ValueError, match="boom"):
            await bad

    asyncio.run(main())
    assert seen[0] == (3, InferOptions())  # equal options batch, the cancelled one is dropped
    assert [s for s in seen if s[1].seed is not None] == [(1, InferOptions(seed=1)), (1, InferOptions(seed=2))]


def test_queue_delay_waits_for_more():
    sizes = []

    def run(x, opts):
        sizes.append(len(x))
        return {"x": x}, 0

    async def main():
        b = Batcher(run, max_batch=16, max_delay_s=0.05)
        first = b.submit(np.zeros((1, 1), np.float32), InferOptions())
        await asyncio.sleep(0.01)
        rest = [b.submit(np.zeros((1, 1), np.float32), InferOptions()) for _ in range(3)]
        await asyncio.gather(first, *rest)

    asyncio.run(main())
    assert sizes == [4]


# -- interruptible workers ------------------------------------------------------------------------


def spin(seconds: float) -> int:
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:  # a Python loop, like the time-step loop
        n += 1
    return n


def test_interrupt_stops_a_running_loop_and_the_worker_survives():
    pool = WorkerPool(1)

    async def main():
        loop = asyncio.get_running_loop()
        job = pool.submit(lambda: spin(30.0), loop)
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        assert pool.interrupt(job)
        with pytest.raises(Interrupted):
            await job.future
        stopped = time.perf_counter() - t0
        queued = pool.submit(lambda: spin(30.0), loop)
        blocker_done = pool.submit(lambda: 42, loop)
        assert pool.interrupt(queued)  # still queued behind nothing? either way it never runs long
        with pytest.raises(Interrupted):
            await queued.future
        assert await blocker_done.future == 42
        return stopped

    assert asyncio.run(main()) < 1.0
    pool.close()


def test_interrupt_races_never_lose_a_job():
    """Interrupts that arrive just as jobs finish must neither hang nor kill the worker."""
    pool = WorkerPool(2)

    async def main():
        loop = asyncio.get_running_loop()
        rng = np.random.default_rng(0)
        jobs = []
        for _ in range(300):
            job = pool.submit(lambda d=float(rng.uniform(0, 0.002)): spin(d), loop)
            jobs.append(job)
            if rng.random() < 0.5:
                loop.call_later(float(rng.uniform(0, 0.003)), pool.interrupt, job)
        results = await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs), return_exceptions=True), 60)
        assert all(isinstance(r, int | Interrupted) for r in results)
        assert await pool.submit(lambda: "alive", loop).future == "alive"

    asyncio.run(main())
    assert all(t.is_alive() for t in threading.enumerate() if t.name.startswith("sjff-worker"))
    pool.close()


# -- tokens ---------------------------------------------------------------------------------------


def md(value):
    return (("authorization", value),)


def test_authenticator(tmp_path, monkeypatch):
    f = tmp_path / "tokens"
    f.write_text("# comment\nfirst-token-0123456789\nsecond-token-0123456789\n")
    auth = Authenticator(f, None, recheck_s=0.0)
    assert auth.check(md("Bearer first-token-0123456789")) is None
    assert auth.check(md("bearer second-token-0123456789")) is None
    assert auth.check(None)[0] == grpc.StatusCode.UNAUTHENTICATED
    assert auth.check(md("Bearer wrong-token-0123456789"))[1] == "invalid token"
    assert auth.check(md("Basic first-token-0123456789"))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert auth.check(md("Bearer first-token-012345678"))[0] == grpc.StatusCode.UNAUTHENTICATED  # a prefix
    # rotation: the file is re-read when it changes
    f.write_text("third-token-0123456789\n")
    import os

    os.utime(f, (time.time() + 5, time.time() + 5))
    assert auth.check(md("Bearer third-token-0123456789")) is None
    assert auth.check(md("Bearer first-token-0123456789")) is not None
    monkeypatch.setenv("MY_TOKEN", "env-token-0123456789")
    assert Authenticator(None, "MY_TOKEN").check(md("Bearer env-token-0123456789")) is None
    assert Authenticator(None, "UNSET_VARIABLE_XYZ").check(md("Bearer x"))[0] == grpc.StatusCode.PERMISSION_DENIED
    f.write_text("short\n")
    with pytest.raises(AuthError, match="at least 16"):
        Authenticator(f, None)


# -- validation -----------------------------------------------------------------------------------


class FakeServed:
    kind = "analog"
    in_features = 4
    num_classes = 3
    max_steps = None
    default_outputs = ["scores", "label"]
    default_plan = InferPlan(InferOptions(), ("scores", "label"))

    class engine:  # noqa: N801
        outputs = {
            "scores": type("S", (), {"datatype": "FP32", "shape": (-1, 3)})(),
            "label": type("S", (), {"datatype": "INT64", "shape": (-1,)})(),
        }


def req(data, datatype="FP32", shape=None, raw=True, **kw) -> pb.ModelInferRequest:
    arr = np.asarray(data)
    r = pb.ModelInferRequest(model_name="m", **kw)
    t = r.inputs.add(name="images", datatype=datatype, shape=shape if shape is not None else arr.shape)
    if raw:
        r.raw_input_contents.append(arr.tobytes())
    else:
        t.contents.fp32_contents.extend(arr.ravel().tolist())
    return r


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (req(np.zeros((1, 5), np.float32)), "shape [N, 4]"),
        (req(np.zeros((1, 4), np.float32), shape=[1, 2, 3]), "shape [N, 4]"),
        (req(np.zeros((1, 4), np.float32), shape=[2, 4]), "hold 16 bytes"),
        (req(np.array([[0, np.nan, 0, 0]], np.float32)), "NaN or Inf"),
        (req(np.array([[0, np.inf, 0, 0]], np.float32)), "NaN or Inf"),
        (req(np.array([[0, 2, 0, 0]], np.float32)), "lie in [0, 1]"),
        (req(np.zeros((1, 4), np.int32), datatype="INT32"), "FP32"),
        (req(np.zeros((1, 4), np.float32), datatype="BYTES"), "FP32"),
        (req(np.zeros((0, 4), np.float32)), "no image"),
        (req(np.zeros((1, 4), np.float32), shape=[-1, 4]), "shape"),
        (req(np.zeros((1, 3), np.float32), raw=False, shape=[1, 4]), "holds 3 values"),
    ],
)
def test_bad_inference_inputs(request_, message):
    with pytest.raises(RequestError) as err:
        decode_infer(request_, FakeServed, 100)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.message


def test_good_inference_inputs():
    x, plan = decode_infer(req(np.full((2, 4), 255, np.uint8), datatype="UINT8"), FakeServed, 100)
    assert x.dtype == np.float32 and x.max() == 1.0 and plan.outputs == ("scores", "label")
    x, _ = decode_infer(req(np.full((1, 2, 2), 0.5, np.float64), datatype="FP64"), FakeServed, 100)
    assert x.shape == (1, 4) and x.dtype == np.float32
    x, _ = decode_infer(req(np.full((1, 4), 0.25, np.float32), raw=False), FakeServed, 100)
    np.testing.assert_array_equal(x, np.full((1, 4), 0.25, np.float32))
    r = req(np.zeros((1, 4), np.float32))
    r.outputs.add(name="nope")
    with pytest.raises(RequestError, match="unknown output"):
        decode_infer(r, FakeServed, 100)
    r = req(np.zeros((1, 4), np.float32))
    r.parameters["steps"].int64_param = 3
    with pytest.raises(RequestError, match="spiking models only"):
        decode_infer(r, FakeServed, 100)
    r = req(np.zeros((1, 4), np.float32))
    r.parameters["seed"].string_param = "x"
    with pytest.raises(RequestError, match="must be an integer"):
        decode_infer(r, FakeServed, 100)
    with pytest.raises(RequestError, match="at most 1 images"):
        decode_infer(req(np.zeros((2, 4), np.float32)), FakeServed, 1)


# -- repository -----------------------------------------------------------------------------------


def test_repository_scan(tmp_path, sjff_models):
    import shutil

    (tmp_path / "good" / "1").mkdir(parents=True)
    shutil.copy(sjff_models["analog"], tmp_path / "good" / "1" / "model.onnx")
    (tmp_path / "good" / "3").mkdir()
    shutil.copy(sjff_models["spike"], tmp_path / "good" / "3" / "model.nir")
    (tmp_path / "good" / "config.json").write_text(json.dumps({"max_batch_size": 8}))
    (tmp_path / "good" / "3" / "config.json").write_text(json.dumps({"learning": False}))
    (tmp_path / "empty" / "1").mkdir(parents=True)
    (tmp_path / "badcfg" / "1").mkdir(parents=True)
    shutil.copy(sjff_models["analog"], tmp_path / "badcfg" / "1" / "model.onnx")
    (tmp_path / "badcfg" / "config.json").write_text(json.dumps({"max_batch": 8}))
    (tmp_path / "bad name!" / "1").mkdir(parents=True)
    specs, problems = scan_repository(tmp_path)
    assert [(s.name, s.version, s.kind, s.config.max_batch_size, s.config.learning) for s in specs] == [
        ("good", "1", "analog", 8, True),
        ("good", "3", "spiking", 8, False),
    ]
    text = "\n".join(problems)
    assert (
        "needs exactly one of" in text
        and "unknown config keys ['max_batch']" in text
        and "not a valid model name" in text
    )


def test_window_policy_waits_only_under_load():
    from sjff_server.batching import WindowPolicy

    w = WindowPolicy(0.002, probe_every=10)
    delays = [w.delay(busy=False) for _ in range(30)]
    assert delays.count(0.0) == 27 and delays.count(0.0005) == 3  # a lone client: rare short probes only
    assert w.delay(busy=True) == 0.002
    w.record(1)
    assert not w.productive()
    w.record(6)  # a window caught company: keep waiting, end early once 6 are queued
    assert w.productive() and w.delay(busy=False) == 0.002
    ends = [w.early_flush_at() for _ in range(16)]
    assert ends.count(None) == 2 and set(ends) - {None} == {6}  # every 8th window explores
    for _ in range(32):
        w.record(1)  # load has gone
    assert not w.productive()


def test_batches_form_under_concurrent_arrivals():
    """Requests arriving one per loop turn (as grpc.aio delivers them) still share batches."""
    sizes = []

    def run(x, opts):
        sizes.append(len(x))
        return {"x": x}, 0

    async def main():
        b = Batcher(run, max_batch=64, busy_delay_s=0.05)
        futs = []
        for _ in range(20):
            futs.append(b.submit(np.zeros((1, 2), np.float32), InferOptions(), busy=bool(futs)))
            await asyncio.sleep(0.0002)  # the next call comes a little later
        await asyncio.gather(*futs)
        quiet = Batcher(run, max_batch=64, busy_delay_s=0.05)
        t0 = time.perf_counter()
        await quiet.submit(np.zeros((1, 2), np.float32), InferOptions())
        return time.perf_counter() - t0

    lone_wait = asyncio.run(main())
    assert max(sizes[:-1]) >= 5 and sum(sizes) == 21
    assert sizes[-1] == 1 and lone_wait < 0.02  # a lone request on a quiet server does not wait
