"""Runs of batch-1 samples learnt in one compiled call (``SpikingTrainer.train_rows``,
``kernels/numba_rows.py``): the same weights, traces, membranes, judgements and random streams
as one ``train_batch`` per row, bit for bit; what the call does not take goes row by row."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from conftest import MINI, stream_epoch_of

from spikingjelly_ff.kernels import numba_online, numba_rows
from spikingjelly_ff.learning.engine import SpikingTrainer
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.config import load_config
from spikingjelly_ff.runs.data import load_split
from spikingjelly_ff.runs.samples import make_samples

pytestmark = pytest.mark.skipif(
    not numba_online.AVAILABLE and os.environ.get("SJFF_REQUIRE_NUMBA") != "1", reason="needs numba (extra [fast])"
)

# the paper's online row on a narrower layer, eta decaying over the run (a rate per row)
SETS = ["model.layers=[48]", "train.hebbian.schedule=cosine"]


@pytest.fixture(scope="module")
def data():
    return load_split(str(MINI), "train").take(300).to_tensors()


def _pair(sets=()):
    cfg = load_config("paper/hebbian-online-symmetric", [*SETS, *sets])
    net = build_model(cfg.model, 784, 10, cfg.seed)
    make = lambda n: SpikingTrainer(n, cfg.train.hebbian, steps_total=300, seed=3, sequential=True)  # noqa: E731
    return cfg, make(net), make(copy.deepcopy(net))


def _samples(data, start: int, n: int):
    x, labels = data
    g = torch.Generator().manual_seed(start)
    rows = [make_samples(labels[i : i + 1], "mixed", 10, g) for i in range(start, start + n)]
    return x[start : start + n], torch.cat([r[1] for r in rows]), torch.cat([r[2] for r in rows])


def _assert_same(a: SpikingTrainer, b: SpikingTrainer) -> None:
    for la, lb, ea, eb in zip(a.net.layers, b.net.layers, a.eligibility, b.eligibility):
        assert torch.equal(la.weight, lb.weight)
        assert torch.equal(ea, eb)
        assert torch.equal(la.neuron.v, lb.neuron.v)
        assert torch.equal(la.neuron.trace, lb.neuron.trace)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["count"] == sb["count"]
    assert torch.equal(sa["generator"], sb["generator"])
    assert sa["rng"] == sb["rng"]


def _row_by_row(trainer: SpikingTrainer, x, shown, y) -> torch.Tensor:
    return torch.cat([trainer.train_batch(x[i : i + 1], shown[i : i + 1], y[i : i + 1]) for i in range(len(x))])


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """The number of rows of every ``numba_rows.present_rows`` call."""
    seen = []
    real = numba_rows.present_rows
    monkeypatch.setattr(numba_rows, "present_rows", lambda *a, **k: seen.append(len(a[9])) or real(*a, **k))
    return seen


def test_runs_of_rows_learn_bit_for_bit_as_one_call_per_row(data, calls):
    _, a, b = _pair()
    for start, n in ((0, 40), (40, 1), (41, 64), (105, 7)):
        x, shown, y = _samples(data, start, n)
        assert torch.equal(a.train_rows(x, shown, y), _row_by_row(b, x, shown, y))
        _assert_same(a, b)
    assert calls == [40, 1, 64, 7]  # each run in one compiled call
    assert a.count == 112
    assert (a.net.layers[0].weight != _pair()[1].net.layers[0].weight).any()  # it learnt


def test_a_batch_of_rows_shown_one_after_another_learns_in_one_call(data, calls):
    """A sequential trainer's batch (e.g. a positive and a negative sample of one image): its
    rows one after another at one learning rate, as the per-row loop runs them."""
    _, a, b = _pair()
    for start in range(0, 40, 4):
        x, shown, y = _samples(data, start, 4)
        got = a.train_batch(x, shown, y)
        eta = b.rate()
        b.count += 1
        want = torch.cat([b._train(x[i : i + 1], shown[i : i + 1], y[i : i + 1], eta, None) for i in range(4)])
        assert torch.equal(got, want)
        _assert_same(a, b)
    assert calls == [4] * 10


def test_membranes_that_are_not_carried_start_every_row_at_rest(data, calls):
    _, a, b = _pair(["model.encoder.carry_membrane=false"])
    for start in (0, 20):
        x, shown, y = _samples(data, start, 20)
        assert torch.equal(a.train_rows(x, shown, y), _row_by_row(b, x, shown, y))
        _assert_same(a, b)
    assert calls == [20, 20]


def test_what_one_call_does_not_take_goes_row_by_row(data, calls):
    """Two layers, regular coding: the rows one call each, as before."""
    for sets in (["model.layers=[24, 16]"], ["model.encoder.coding=regular"]):
        _, a, b = _pair(sets)
        x, shown, y = _samples(data, 0, 12)
        assert not a._rows_fit(x)
        assert torch.equal(a.train_rows(x, shown, y), _row_by_row(b, x, shown, y))
        _assert_same(a, b)
    assert calls == []


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, s, y: (x, torch.where(torch.arange(12) == 5, 10, s), y), r"labels must be 12 integers in \[0, 10\)"),
        (lambda x, s, y: (x, s.float() + 0.5, y), "labels must be 12 integers"),
        (lambda x, s, y: (x, s, y[:-1]), r"targets must be \[12\]"),
        (lambda x, s, y: (x[:, :700], s, y), r"images must be \[N, 784\]"),
        (lambda x, s, y: (torch.where(torch.rand(x.shape) < 0.01, torch.nan, x), s, y), "NaN or infinite"),
    ],
)
def test_a_run_with_bad_input_is_refused_before_a_row_learns(data, change, message, calls):
    _, a, b = _pair()
    x, shown, y = change(*_samples(data, 0, 12))
    with pytest.raises(ValueError, match=message):
        a.train_rows(x, shown, y)
    # b never trained: nothing learnt, counted, drawn or stepped
    assert torch.equal(a.net.layers[0].weight, b.net.layers[0].weight) and not a.eligibility[0].any()
    assert a.count == 0 and a._rng is None and a.net.layers[0].neuron.v == b.net.layers[0].neuron.v
    assert torch.equal(a.generator.get_state(), b.generator.get_state()) and calls == []


def test_an_epoch_of_one_row_batches_learns_in_runs_as_row_by_row(data, monkeypatch):
    sizes = []
    cfg, a, b = _pair()
    real = a.train_rows
    monkeypatch.setattr(a, "train_rows", lambda x, s, y: sizes.append(len(x)) or real(x, s, y))
    x, labels = data
    batches = [(x[i : i + 1], labels[i : i + 1], None) for i in range(len(x))]
    batches[100:103] = [(x[100:103], labels[100:103], None)]  # three rows: step's, after the run before it
    counts = [stream_epoch_of(a, batches, cfg, rows=a.train_rows), stream_epoch_of(b, batches, cfg)]
    assert counts[0] == counts[1] and counts[0][1] == 300
    _assert_same(a, b)
    assert sizes == [64, 36, 63, 64, 64, 6]  # runs of at most 64 rows; one flushed before the 3-row batch


def test_a_direct_call_with_draws_that_do_not_fit_is_refused():
    images, label_rates = np.zeros((2, 784), np.float32), np.full((10, 100), 0.25, np.float32)
    for labels, message in [(np.array([0, 10]), r"labels must lie in \[0, 10\)"), (np.array([0]), "for 1 labels")]:
        with pytest.raises(ValueError, match=message):
            numba_rows.live_rows(images, 0.25, label_rates, labels, slice(0, 784), slice(784, 884), 884)
    with pytest.raises(ValueError, match="image positions to 800"):
        numba_rows.live_rows(images, 0.25, label_rates, np.array([0, 1]), slice(0, 800), slice(800, 900), 900)
    cfg = load_config("paper/hebbian-online-symmetric", SETS)
    d = build_model(cfg.model, 784, 10, 0).dynamics
    wt = np.zeros((884, 48), np.float32)
    rates, live, starts = np.full(3, 0.5, np.float32), np.array([1, 2, 900]), np.array([0, 3])
    args = (d,)
    with pytest.raises(ValueError, match="inputs up to 900"):
        numba_rows.present_rows(np.zeros(69, np.float32), rates, live, starts, 23, wt, wt.copy(),
                                np.zeros(48, np.float32), *args, np.ones(1), 16, 0.1, np.ones(1))  # fmt: skip
    with pytest.raises(ValueError, match="draws of 1 samples for 2 targets"):
        numba_rows.present_rows(np.zeros(69, np.float32), rates, live[:3] % 884, starts, 23, wt, wt.copy(),
                                np.zeros(48, np.float32), *args, np.ones(2), 16, 0.1, np.ones(2))  # fmt: skip
    with pytest.raises(ValueError, match="2 rates for 3 inputs"):
        numba_rows.present_rows(np.zeros(69, np.float32), rates[:2], live % 884, starts, 23, wt, wt.copy(),
                                np.zeros(48, np.float32), *args, np.ones(1), 16, 0.1, np.ones(1))  # fmt: skip
