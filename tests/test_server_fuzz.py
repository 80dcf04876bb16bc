"""Fuzz run: thousands of hostile requests from 16 concurrent clients against a real server
(benchmarks/fuzz_server.py; the calls: benchmarks/fuzz_calls.py). Every call must get a proper
status (never INTERNAL/UNKNOWN, never a hang), the server must keep serving with unchanged
answers from the models that do not learn, the learning models' versions must count exactly
the updates answered OK, and the log must hold no error. ``SJFF_FUZZ_COUNT`` sets the number
of calls (the benchmark runs 10,000)."""

from __future__ import annotations

import collections
import os
import sys

import pytest
import serving_utils as su
from sjff_server.harness import ServerProcess

sys.path.insert(0, str(su.ROOT / "benchmarks"))
import fuzz_calls as fc  # noqa: E402
import fuzz_requests as fr  # noqa: E402
import fuzz_server as fz  # noqa: E402

COUNT = int(os.environ.get("SJFF_FUZZ_COUNT", "5000"))
SEED = 12345


@pytest.fixture(scope="module")
def server(sjff_models, tmp_path_factory, token_path):
    root = fz.make_repository(tmp_path_factory.mktemp("repo"), sjff_models["analog"], sjff_models["spike"])
    state = tmp_path_factory.mktemp("state")
    with ServerProcess(root, state_dir=state, token_file=token_path, extra_args=fz.SERVER_ARGS, metrics=False) as srv:
        yield srv


def test_fuzz_hostile_requests(server, mnist_samples):
    images, labels = mnist_samples
    result, checks = fz.fuzz_server(server, images, labels, token=su.TOKEN, count=COUNT, concurrency=16, seed=SEED)
    fz.print_report(result, checks)
    failed = [(name, detail) for name, ok, detail in checks if not ok]
    replay = f"replay: python benchmarks/fuzz_server.py --seed {SEED} --only <index>"
    assert not failed, (failed, result["problems"][:5], replay)
    assert result["calls"] == COUNT and not result["problems"]

    # the run covered what it should: every kind of call, each refusal it provokes, and learning
    assert set(result["codes"]) == set(fc.KINDS)
    codes = collections.Counter()
    for per_kind in result["codes"].values():
        codes.update(per_kind)
    assert codes["INVALID_ARGUMENT"] > COUNT // 5, codes
    for code in ("NOT_FOUND", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED"):
        assert codes[code] > 0, (code, codes)
    assert codes["OUT_OF_RANGE"] > 0 and codes["CANCELLED"] > 0, codes  # absurd rollbacks, abandoned streams
    assert set(result["codes"]["oversized"]) == {"RESOURCE_EXHAUSTED"}
    assert "OK" not in result["codes"]["bad_token"]
    assert all(result["learned"].get(m, 0) > COUNT // 100 for m in fr.LEARNING), result["learned"]
    in_stream = result["items"]["learn_stream"].get("OK", 0) + result["items"]["abandoned_learn_stream"].get("OK", 0)
    assert in_stream > 0  # updates answered inside LearnStreams are part of the count
    # request ids sent several times: answered OK more often than applied, other samples refused
    retried = result["codes"]["learn_retry"]
    assert retried.get("OK", 0) > sum(result["learned_once"].values()) > 0 and retried.get("INVALID_ARGUMENT"), retried


def test_replayed_call_is_the_same_call():
    """A problem is reported by its index: making call ``i`` again gives the same bytes."""
    images, labels = su.mnist_test(32)
    ctx = fr.Context(su.TOKEN, images, labels, fz.MAX_MESSAGE_BYTES)
    for i in range(200):
        assert fc.make_call(SEED, i, ctx) == fc.make_call(SEED, i, ctx)
