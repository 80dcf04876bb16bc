"""The compiled batch presentation (``kernels/numba_batch.py``), what batched training runs on
the CPU, against the per-step path (``SJFF_COMPILED=0``): spikes and traces equal, membranes,
weights and eligibility to float rounding; and where it does not apply, the per-step path."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from spikingjelly_ff.functional.params import HebbianParams, NeuronParams, TraceParams
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.kernels import numba_batch, numba_online
from spikingjelly_ff.simulation.encoding import SpikeIndex
from spikingjelly_ff.simulation.layer import Dynamics, input_major, run_layer

# CI sets SJFF_REQUIRE_NUMBA=1: there a missing numba fails these tests instead of skipping them
REQUIRE_NUMBA = os.environ.get("SJFF_REQUIRE_NUMBA") == "1"
pytestmark = pytest.mark.skipif(
    not numba_online.AVAILABLE and not REQUIRE_NUMBA, reason="numba not installed (extra [fast])"
)

PAPER = Dynamics(
    NeuronParams(form="beta", beta=0.85, v_threshold=0.001), TraceParams("count", scale=10.0),
    Probability("symmetric", eps=0.01),
)  # fmt: skip
PAPER_SPEC = HebbianParams(eta=0.5, eligibility_tau=0.1, learn_after=15)
CASES = {
    "paper": (PAPER, PAPER_SPEC),
    "sigmoid-mean-lif-no-eligibility": (
        Dynamics(
            NeuronParams(form="lif", tau=2.5, v_threshold=0.3, decay_input=True, v_reset=-0.1),
            TraceParams("leaky", 0.6), Probability("sigmoid", alpha=2.0, theta=0.5), "mean_squares",
        ),
        HebbianParams(eta=0.3, eligibility_tau=None, learn_after=5),
    ),  # fmt: skip
    "polar-clip-hard-trace": (
        Dynamics(
            NeuronParams(form="beta", beta=0.7, v_threshold=0.2, fire=">="), TraceParams("hard", 0.8),
            Probability("polar", alpha=1.5, theta=0.2, clip=0.02),
        ),
        HebbianParams(eta=0.2, eligibility_tau=0.3, learn_after=10),
    ),  # fmt: skip
    "soft-reset-no-trace": (
        dataclasses.replace(
            PAPER, neuron=NeuronParams(beta=0.85, v_threshold=0.1, v_reset=None), trace=TraceParams("none")
        ),
        PAPER_SPEC,
    ),
    "fires-at-rest": (dataclasses.replace(PAPER, neuron=NeuronParams(beta=0.85, v_threshold=-0.05)), PAPER_SPEC),
    "lif-plain": (
        dataclasses.replace(PAPER, neuron=NeuronParams(form="lif", tau=3.0, v_threshold=0.5, v_reset=-0.1)),
        PAPER_SPEC,
    ),
}


def _problem(seed: int, t: int = 23, n: int = 12, d: int = 90, h: int = 24):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(t, n, d, generator=g) < 0.15).float()
    w = input_major(torch.randn(h, d, generator=g) * 0.5)
    e = input_major(torch.randn(h, d, generator=g) * 1e-3)
    v = torch.randn(n, h, generator=g) * 0.2
    y = (torch.rand(n, generator=g) < 0.5).float()
    return x, w, e, v, y


def _run(x, w, e, v, y, dyn, spec, compiled: bool, monkeypatch, index: bool = True, rest: int = 20):
    monkeypatch.setenv("SJFF_COMPILED", "1" if compiled else "0")
    w, e, v = w.clone().t().contiguous().t(), e.clone().t().contiguous().t(), v.clone()
    pre_index = SpikeIndex.from_dense(x.reshape(-1, x.shape[-1])) if index else None
    spikes, trace = run_layer(x, w, v, dyn, "torch", (y, spec, spec.eta, e), pre_index, rest_steps=rest)
    return spikes, trace, v, w, e


def _assert_close(got, want, spec):
    spikes, trace, v, w, e = got
    assert spikes.sum() > 0 and (spikes == 0).sum() > 0
    assert torch.equal(spikes, want[0]) and torch.equal(trace, want[1])
    torch.testing.assert_close(v, want[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w, want[3], rtol=1e-5, atol=1e-6)
    if spec.eligibility_tau is not None:
        torch.testing.assert_close(e, want[4], rtol=1e-4, atol=1e-8)
    else:  # dW applied at once: the trace is not touched
        assert torch.equal(e, want[4])


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("index", [True, False])
def test_batch_presentation_equals_the_per_step_path(case, index, monkeypatch):
    dyn, spec = CASES[case]
    calls = []
    real = numba_batch.present_batch
    monkeypatch.setattr(numba_batch, "present_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, w, e, v, y = _problem(1)
    want = _run(x, w, e, v, y, dyn, spec, False, monkeypatch)
    assert not calls
    got = _run(x, w, e, v, y, dyn, spec, True, monkeypatch, index=index)
    assert calls == [1]
    _assert_close(got, want, spec)
    assert not torch.equal(got[3], w)  # it learned


def test_many_batches_stay_with_the_per_step_path(monkeypatch):
    """Weights and carried membranes over ten batches of the paper's layer."""
    x, w, e, v, y = _problem(2, n=20, d=120, h=30)
    g = torch.Generator().manual_seed(3)
    state = {c: (w, e, v) for c in (False, True)}
    flips = 0
    for _ in range(10):
        x = (torch.rand(x.shape, generator=g) < 0.15).float()
        y = (torch.rand(y.shape, generator=g) < 0.5).float()
        out = {c: _run(x, *state[c], y, PAPER, PAPER_SPEC, c, monkeypatch) for c in (False, True)}
        flips += int((out[True][0] != out[False][0]).sum())
        state = {c: (out[c][3], out[c][4], out[c][2]) for c in (False, True)}
    assert flips <= 2  # a spike may flip where a membrane sits on the threshold
    torch.testing.assert_close(state[True][0], state[False][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state[True][1], state[False][1], rtol=1e-3, atol=1e-7)


def test_numpy_arrays_run_the_kernel_too(monkeypatch):
    """The torch-free runtime (the server's batched Learns) hands numpy arrays, input-major W
    and e, with backend ``numpy``."""
    calls = []
    real = numba_batch.present_batch
    monkeypatch.setattr(numba_batch, "present_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, w, e, v, y = _problem(4)
    want = _run(x, w, e, v, y, PAPER, PAPER_SPEC, False, monkeypatch)
    monkeypatch.setenv("SJFF_COMPILED", "1")
    wn, en = (np.asfortranarray(t.numpy().copy()) for t in (w, e))  # input-major: W.T contiguous
    vn = v.numpy().copy()
    spikes, trace = run_layer(x.numpy(), wn, vn, PAPER, "numpy", (y.numpy(), PAPER_SPEC, 0.5, en), rest_steps=20)
    assert calls == [1]
    got = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (spikes, trace, vn, wn, en))
    want = tuple(a.contiguous() for a in want)
    _assert_close(got, want, PAPER_SPEC)


def test_what_the_kernel_does_not_take_runs_the_per_step_path(monkeypatch):
    calls = []
    real = numba_batch.present_batch
    monkeypatch.setattr(numba_batch, "present_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("SJFF_COMPILED", "1")
    x, w, e, v, y = _problem(5)
    learn = (y, PAPER_SPEC, 0.5, e)
    run_layer(x * 0.5, w.clone(), v.clone(), PAPER, "torch", learn)  # not spikes: a dense product
    run_layer(x, w.clone().contiguous(), v.clone(), PAPER, "torch", learn)  # W output-major
    kwta = dataclasses.replace(PAPER, neuron=NeuronParams(beta=0.85, v_threshold=0.001, kwta=3))
    run_layer(x, w.clone(), v.clone(), kwta, "torch", learn)
    run_layer(x, w.clone(), v.clone(), PAPER, "torch", None)  # inference: the scorer's paths
    assert not calls
    run_layer(x, w.clone(), v.clone(), PAPER, "torch", (y, PAPER_SPEC, 0.5, e.clone()))
    assert calls == [1]


@pytest.mark.parametrize("compiled", [True, False])
def test_spikes_without_their_dense_array(compiled, monkeypatch):
    """The engine asks for the index alone (the kernel's input): it holds the same spikes, and
    a presentation that runs another path gets them made dense from it."""
    from spikingjelly_ff.simulation.encoding import encode_spikes

    monkeypatch.setenv("SJFF_COMPILED", "1" if compiled else "0")
    rates = torch.rand(12, 90, generator=torch.Generator().manual_seed(9)) * 0.3
    dense, full = encode_spikes(rates, 23, torch.Generator().manual_seed(1), index=True)
    none, index = encode_spikes(rates, 23, torch.Generator().manual_seed(1), index=True, dense=False)
    assert none is None and index.shape == (23, 12, 90) and full.shape == (23, 12, 90)
    assert torch.equal(index.cols, full.cols) and torch.equal(index.offsets, full.offsets)
    assert torch.equal(index.dense(), dense) and dense.sum() > 0
    monkeypatch.setenv("SJFF_COMPILED", "0")  # the per-step path, from the index alone
    _, w, e, v, y = _problem(6)
    want = _run(dense, w, e, v, y, PAPER, PAPER_SPEC, False, monkeypatch)
    w2, e2, v2 = w.clone().t().contiguous().t(), e.clone().t().contiguous().t(), v.clone()
    got = run_layer(None, w2, v2, PAPER, "torch", (y, PAPER_SPEC, 0.5, e2), index, rest_steps=20)
    assert torch.equal(got[0], want[0]) and torch.equal(w2, want[3]) and torch.equal(e2, want[4])
    with pytest.raises(ValueError, match="SpikeIndex with its shape"):
        run_layer(None, w2, v2, PAPER, "torch", (y, PAPER_SPEC, 0.5, e2), SpikeIndex(index.cols, index.offsets))


def test_shapes_that_do_not_fit_get_the_per_step_paths_errors(monkeypatch):
    """numba checks no bounds: what does not fit goes to the per-step path, which says why."""
    monkeypatch.setenv("SJFF_COMPILED", "1")
    x, w, e, v, y = _problem(7)
    learn = (y, PAPER_SPEC, 0.5, e)
    with pytest.raises(RuntimeError):
        run_layer(x[:, :, :-10], w, v.clone(), PAPER, "torch", learn)  # 80 inputs for W's 90
    with pytest.raises((RuntimeError, ValueError)):
        run_layer(x, w, v.clone(), PAPER, "torch", (y[:-2], PAPER_SPEC, 0.5, e))  # targets for 10 of 12
    split = dataclasses.replace(PAPER, probability=Probability("polar", alpha=1.5))
    w_odd, e_odd = input_major(torch.randn(23, 90)), input_major(torch.zeros(23, 90))
    with pytest.raises(ValueError):
        run_layer(x, w_odd, torch.zeros(12, 23), split, "torch", (y, PAPER_SPEC, 0.5, e_odd))


def test_a_float64_network_trains_on_the_per_step_path(monkeypatch):
    """The engine asks for the index alone only where the kernel takes the batch (float32)."""
    from spikingjelly_ff.learning.engine import SpikingTrainer
    from spikingjelly_ff.runs.build import build_model
    from spikingjelly_ff.runs.config import load_config

    monkeypatch.setenv("SJFF_COMPILED", "1")
    cfg = load_config("paper/hebbian-batched-symmetric")
    net = build_model(cfg.model, 20, 10, 0).double()
    trainer = SpikingTrainer(net, cfg.train.hebbian)
    g = torch.Generator().manual_seed(0)
    w0 = net.layers[0].weight.detach().clone()
    for _ in range(2):
        x = torch.rand(4, 20, generator=g, dtype=torch.float64)
        trainer.train_batch(x, torch.randint(0, 10, (4,), generator=g), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert net.layers[0].weight.dtype == torch.float64 and not torch.equal(net.layers[0].weight, w0)


def test_a_nan_in_the_trace_stays_nan(monkeypatch):
    """As in the per-step path: the floor does not turn a NaN (a diverging run) into 0."""
    x, w, e, v, y = _problem(8)
    e[0, 0] = float("nan")  # input 0 of neuron 0
    want = _run(x, w, e, v, y, PAPER, PAPER_SPEC, False, monkeypatch)
    got = _run(x, w, e, v, y, PAPER, PAPER_SPEC, True, monkeypatch)
    assert torch.isnan(want[4][0, 0]) and torch.isnan(want[3][0, 0])
    for k in (3, 4):  # W and e: NaN at the same places
        assert torch.equal(torch.isnan(got[k]), torch.isnan(want[k]))


def test_a_direct_call_with_arrays_that_do_not_fit_is_refused():
    """``present_batch`` itself says what does not fit instead of writing out of bounds."""
    x, w, e, v, y = _problem(9)
    index = SpikeIndex.from_dense(x.reshape(-1, x.shape[-1]))
    args = (index.cols.numpy(), index.offsets.numpy(), 23)
    rest = (PAPER,)
    wt, et = w.T.numpy().copy(), e.T.numpy().copy()
    with pytest.raises(ValueError, match="targets"):
        numba_batch.present_batch(*args, wt, et, v.numpy().copy(), *rest, y.numpy()[:-1].copy(), 16, 0.1, 0.5)
    with pytest.raises(ValueError, match="inputs"):
        numba_batch.present_batch(*args, wt[:-1].copy(), None, v.numpy().copy(), *rest, y.numpy(), 16, None, 0.5)
    with pytest.raises(ValueError, match="eligibility"):
        numba_batch.present_batch(*args, wt, et[:, :-1].copy(), v.numpy().copy(), *rest, y.numpy(), 16, 0.1, 0.5)
    with pytest.raises(ValueError, match="shape"):
        SpikeIndex(index.cols, index.offsets).dense()
    cols, offsets = index.cols.numpy(), index.offsets.numpy()
    for bad_cols, bad_offsets, message in [
        (np.where(cols == cols.max(), 90, cols), offsets, "spikes at inputs 0..90 for weights of 90"),
        (np.where(cols == cols.max(), -1, cols), offsets, "spikes at inputs -1"),
        (cols, offsets[::-1].copy(), "row offsets that are not ascending"),
        (cols, np.where(offsets == offsets.max(), len(cols) + 1, offsets), "row offsets that are not ascending"),
    ]:
        with pytest.raises(ValueError, match=message):
            numba_batch.present_batch(bad_cols, bad_offsets, 23, wt, et, v.numpy(), *rest, y.numpy(), 16, 0.1, 0.5)
