"""Input spikes drawn a batch ahead on a worker thread (``learning/ahead.py``): the same
weights, traces and random stream as drawing each batch when it comes, whatever order the
batches then come in."""

from __future__ import annotations

import copy
import threading
import weakref

import pytest
import torch
from conftest import MINI, stream_epoch_of

from spikingjelly_ff.learning import ahead as ahead_module
from spikingjelly_ff.learning.engine import SpikingTrainer
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.config import load_config
from spikingjelly_ff.runs.data import load_split
from spikingjelly_ff.runs.samples import make_samples

CFG = load_config("paper/hebbian-batched-symmetric", ["model.layers=[32]"])


@pytest.fixture(scope="module")
def data():
    x, labels = load_split(str(MINI), "train").take(400).to_tensors()
    return x, labels


def _pair():
    """Two trainers of one fresh net: (drawing ahead, drawing when the batch comes)."""
    net = build_model(CFG.model, 784, 10, CFG.seed)
    other = copy.deepcopy(net)
    return SpikingTrainer(net, CFG.train.hebbian, seed=3), SpikingTrainer(other, CFG.train.hebbian, seed=3)


def _batches(data, n: int = 6, size: int = 20):
    x, labels = data
    g = torch.Generator().manual_seed(5)
    out = []
    for i in range(n):
        _, shown, y = make_samples(labels[i * size : (i + 1) * size], "mixed", 10, g)
        out.append((x[i * size : (i + 1) * size], shown, y))
    return out


def _drawn(trainer: SpikingTrainer) -> None:
    """Wait until the worker has drawn every announced batch: without it, whether a draw ahead
    came before what follows would be a race the tests could win by chance."""
    for *_, future in trainer._ahead._queue:
        future.result()


def _assert_same(a: SpikingTrainer, b: SpikingTrainer) -> None:
    for la, lb, ea, eb in zip(a.net.layers, b.net.layers, a.eligibility, b.eligibility):
        assert torch.equal(la.weight, lb.weight)
        assert torch.equal(ea, eb)
        assert torch.equal(la.neuron.v, lb.neuron.v)
    assert torch.equal(a.state_dict()["generator"], b.state_dict()["generator"])


@pytest.fixture
def threads(monkeypatch) -> list[bool]:
    """For every draw made ahead, whether it ran on the main thread."""
    seen = []
    real = ahead_module.DrawAhead._run

    def spy(self, *args):
        out = real(self, *args)
        assert out[2] is None or "out of bounds" in str(out[2])  # drawn, not failed and redrawn
        seen.append(threading.current_thread() is threading.main_thread())
        return out

    monkeypatch.setattr(ahead_module.DrawAhead, "_run", spy)
    return seen


def test_an_epoch_drawn_ahead_trains_bit_for_bit_as_one_drawn_batch_by_batch(data, threads):
    a, b = _pair()
    x, labels = data
    batches = [(x[i : i + 20], labels[i : i + 20], None) for i in range(0, 400, 20)]
    counts = [stream_epoch_of(a, batches, CFG, ahead=a.prefetch), stream_epoch_of(b, batches, CFG)]
    assert counts[0] == counts[1] and counts[0][1] == 400
    _assert_same(a, b)
    assert len(threads) == 20 and not any(threads)  # every batch drawn once, on the worker
    assert (a.net.layers[0].weight != build_model(CFG.model, 784, 10, CFG.seed).layers[0].weight).any()


def test_batches_that_come_otherwise_than_announced_keep_the_stream(data, threads):
    """Announced early (the first batch not announced), one never coming: each batch is drawn
    in the order the batches are trained, as without announcements."""
    b0, b1, b2, b3, b4, b5 = _batches(data)
    a, b = _pair()
    assert a.prefetch(b1[0], b1[1]) and a.prefetch(b2[0], b2[1])
    _drawn(a)
    for batch in (b0, b1, b2):  # b0 came before the announced b1: drawn first, b1 and b2 again
        a.train_batch(*batch)
        b.train_batch(*batch)
    assert len(threads) == 4  # b1 and b2, then again after b0
    _assert_same(a, b)
    a.prefetch(b3[0], b3[1])  # b3 never comes
    _drawn(a)
    for t in (a, b):
        t.train_batch(*b4)  # b3 is drawn again after it, in case it comes yet
    assert len(a._ahead) == 1
    a.prefetch(b5[0], b5[1])
    _drawn(a)
    for t in (a, b):
        t.train_batch(*b5)
    assert len(a._ahead) == 0  # b3 was dropped when b5, announced after it, came
    _assert_same(a, b)


def test_a_batch_changed_in_place_after_it_was_announced_is_drawn_again(data):
    b0, b1, *_ = _batches(data)
    a, b = _pair()
    x = b1[0].clone()
    for t in (a, b):
        t.train_batch(*b0)
    a.prefetch(x, b1[1])
    _drawn(a)
    x.mul_(0.5)  # its version moves: the draw made from what it held is not used
    for t in (a, b):
        t.train_batch(x, b1[1], b1[2])
    _assert_same(a, b)


def test_the_saved_state_is_the_state_without_draws_ahead(data):
    b0, b1, b2, *_ = _batches(data)
    a, b = _pair()
    a.prefetch(b0[0], b0[1])
    a.train_batch(*b0)
    a.prefetch(b1[0], b1[1])
    _drawn(a)
    b.train_batch(*b0)
    state = a.state_dict()  # b1's draw is undone
    assert torch.equal(state["generator"], b.state_dict()["generator"])
    c, _ = _pair()
    c.load_state_dict(state)
    c.net.load_state_dict(a.net.state_dict())
    for t in (a, b, c):
        t.train_batch(*b1)
        t.train_batch(*b2)
    _assert_same(a, b)
    _assert_same(c, b)


def test_a_bad_batch_drawn_ahead_is_refused_when_it_comes(data):
    b0, b1, b2, *_ = _batches(data)
    a, b = _pair()
    bad = b1[1].clone()
    bad[3] = 10  # no such label
    a.prefetch(b0[0], b0[1])
    a.prefetch(b1[0], bad)  # the worker's draw fails; the batch is refused when it comes
    a.prefetch(b2[0], b2[1])  # drawn after it
    _drawn(a)
    for t in (a, b):
        t.train_batch(*b0)
        with pytest.raises(ValueError, match=r"labels must be 20 integers in \[0, 10\)"):
            t.train_batch(b1[0], bad, b1[2])
    assert a.count == b.count == 1  # refused before it was counted
    for t in (a, b):  # b2's draw ahead was undone with the refused batch
        t.train_batch(*b2)
    _assert_same(a, b)


def test_a_draw_that_fails_on_the_worker_raises_in_its_place():
    """A draw's error is raised by ``get`` of its batch, drawn again in the caller; the draws
    made after it on the worker are undone and made again after it."""
    g = torch.Generator().manual_seed(0)

    def draw(x, shown):
        if bool((shown < 0).any()):
            raise ValueError("no such label")
        return torch.rand(3, generator=g)

    ahead = ahead_module.DrawAhead(g, draw)
    x, ok, bad = torch.zeros(2, 4), torch.tensor([1, 2]), torch.tensor([1, -1])
    first = ahead.get(x, ok)
    ahead.submit(x, bad)
    ahead.submit(x.clone(), ok)
    for *_, future in ahead._queue:
        assert future.result()[0] is not None
    with pytest.raises(ValueError, match="no such label"):
        ahead.get(x, bad)
    assert len(ahead) == 0
    again = ahead.get(x, ok)  # where the stream stood after the first draw
    want = torch.Generator().manual_seed(0)
    assert torch.equal(first, torch.rand(3, generator=want)) and torch.equal(again, torch.rand(3, generator=want))


def test_a_trainer_that_drew_ahead_copies_and_is_freed(data):
    b0, b1, *_ = _batches(data)
    a, b = _pair()
    a.prefetch(b0[0], b0[1])
    a.train_batch(*b0)
    b.train_batch(*b0)
    a.prefetch(b1[0], b1[1])
    _drawn(a)
    c = copy.deepcopy(a)  # the pending draw undone in both: each draws b1 when it comes
    for t in (a, b, c):
        t.train_batch(*b1)
    _assert_same(a, b)
    _assert_same(c, b)
    gone = weakref.ref(a)
    del a  # no cycle holds it: freed at once, and with it the worker's pool (its thread ends)
    assert gone() is None


def test_online_learning_does_not_draw_ahead_and_its_stream_is_kept(data):
    b0, b1, *_ = _batches(data)
    a, b = _pair()
    assert not a.prefetch(b0[0][:1], b0[1][:1])  # batch-1 learning: its own numpy stream
    a.prefetch(b1[0], b1[1])
    _drawn(a)
    for t in (a, b):  # the online path seeds its stream from the generator: b1's draw is undone
        t.train_batch(b0[0][:1], b0[1][:1], b0[2][:1])
        t.train_batch(*b1)
    _assert_same(a, b)
    seq = SpikingTrainer(a.net, CFG.train.hebbian, sequential=True)
    assert not seq.prefetch(b1[0], b1[1])  # rows one after another
