"""The compiled batch-1 presentation (``kernels.numba_online``) against the numpy path and
the per-step reference (``run_layer`` with learning): same spikes, same final trace and
membrane, W and e equal to float rounding, for every neuron form, trace, probability and
goodness the kernel takes."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import per_step_path

from spikingjelly_ff.functional.goodness import hebbian_gain
from spikingjelly_ff.functional.params import HebbianParams, NeuronParams, TraceParams
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.kernels import numba_online
from spikingjelly_ff.simulation import Dynamics, input_major, online_layer, run_layer

# CI installs the dev extra, numba included, and sets SJFF_REQUIRE_NUMBA=1: there the kernel is
# tested or the run fails (test_numba_is_installed_where_required)
REQUIRE_NUMBA = os.environ.get("SJFF_REQUIRE_NUMBA") == "1"
pytestmark = pytest.mark.skipif(
    not numba_online.AVAILABLE and not REQUIRE_NUMBA, reason="numba not installed (extra [fast])"
)


def test_numba_is_installed_where_required():
    """Where numba is required (CI), a missing numba is a failure, not a module of skips."""
    assert numba_online.AVAILABLE, "numba is not installed (SJFF_REQUIRE_NUMBA=1; pip install 'spikingjelly-ff[fast]')"


PROBS = {
    "sigmoid": Probability("sigmoid", alpha=0.5, theta=2.0),
    "symmetric": Probability("symmetric", eps=0.01),
    "polar": Probability("polar", alpha=0.5, theta=0.5),
    "sigmoid-clip": Probability("sigmoid", alpha=0.5, theta=2.0, clip=0.2),
}
NEURONS = {
    "beta": NeuronParams(beta=0.85, v_threshold=0.001),
    "lif": NeuronParams(form="lif", tau=3.0, v_threshold=0.5, v_reset=-0.1, fire=">="),
    "lif-decay-input": NeuronParams(form="lif", tau=2.0, decay_input=True, v_threshold=0.3),
    "beta-soft": NeuronParams(beta=0.85, v_threshold=0.2, v_reset=None),
}


def sample(seed: int, t: int = 23, d: int = 120, h: int = 40):
    rng = np.random.default_rng(seed)
    x = (rng.random((t, 1, d)) < 0.15).astype(np.float32)
    w = input_major(rng.normal(0.0, 0.4, (h, d)).astype(np.float32))
    e = input_major(rng.normal(0.0, 0.01, (h, d)).astype(np.float32))
    v = rng.normal(0.0, 0.2, (1, h)).astype(np.float32)
    return x, w, e, v


def three_ways(d: Dynamics, spec: HebbianParams, y: float, seed: int, eta: float = 0.3):
    """(compiled, numpy low-rank, per-step reference) results: (spikes, trace, v, W, e)."""
    out = []
    for how in ("compiled", "numpy", "reference"):
        x, w, e, v = sample(seed)
        if how == "reference":
            with per_step_path():
                spikes, tr = run_layer(x, w, v, d, learn=(np.float32([y]), spec, eta, e))
        else:
            spikes, tr = online_layer(x, w, v, d, y, spec, eta, e, compiled=how == "compiled")
        out.append((spikes, tr, v, w, e))
    return out


@pytest.mark.parametrize("prob", sorted(PROBS))
@pytest.mark.parametrize("trace", ["count", "leaky", "hard", "none"])
@pytest.mark.parametrize("neuron", sorted(NEURONS))
def test_compiled_presentation_matches_numpy_and_reference(prob, trace, neuron):
    d = Dynamics(NEURONS[neuron], TraceParams(trace, 0.8), PROBS[prob], "sum_squares")
    spec = HebbianParams(eta=0.3, eligibility_tau=0.1, learn_after=11)
    x0, w0, _, _ = sample(0)
    for seed, y in ((0, 1.0), (1, 0.0), (2, 1.0)):
        (s_c, tr_c, v_c, w_c, e_c), *others = three_ways(d, spec, y, seed)
        assert s_c.shape == (23, 1, 40) and s_c.sum() > 0 and (s_c == 0).sum() > 0
        for s, tr, v, w, e in others:
            np.testing.assert_array_equal(s_c, s)
            np.testing.assert_allclose(tr_c, tr, rtol=0, atol=1e-6)
            np.testing.assert_allclose(v_c, v, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(w_c, w, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(e_c, e, rtol=1e-4, atol=1e-7)
    # it learned (the comparison is not between three untouched copies) ...
    _, w_first, _, _ = sample(0)
    (_, _, _, w_c, _), *_ = three_ways(d, spec, 1.0, 0)
    assert np.abs(w_c - w_first).max() > 1e-4 or PROBS[prob].clip > 0
    # ... and W stays input-major, written in place
    assert w_c.T.flags.c_contiguous and x0.dtype == w0.dtype == np.float32


def test_mean_squares_goodness_and_a_window_past_the_end():
    d = Dynamics(NEURONS["beta"], TraceParams("leaky", 0.85), PROBS["symmetric"], "mean_squares")
    (s_c, tr_c, _, w_c, e_c), (s_n, tr_n, _, w_n, e_n), _ = three_ways(d, HebbianParams(0.5, 0.1, 15), 1.0, 3)
    np.testing.assert_array_equal(s_c, s_n)
    np.testing.assert_allclose(w_c, w_n, rtol=1e-5, atol=1e-6)
    # learn_after beyond the presentation: nothing learns, W and e are untouched
    x, w, e, v = sample(4)
    w_before, e_before = w.copy(), e.copy()
    online_layer(x, w, v, d, 1.0, HebbianParams(0.5, 0.1, 40), 0.5, e, compiled=True)
    np.testing.assert_array_equal(w, w_before)
    np.testing.assert_array_equal(e, e_before)


def test_modulation_on_scalars_is_the_probability_modules():
    """The kernel's scalar modulation equals ``Probability.modulation`` for every kind."""
    rng = np.random.default_rng(5)
    for prob in PROBS.values():
        for y in (0.0, 1.0):
            for _ in range(20):
                tr = rng.random(10).astype(np.float32) * 2
                out = np.empty(10, np.float32)
                split = prob.split
                numba_online._modulated(tr, out, split, 5 if split else 10, ["sigmoid", "symmetric", "polar"].index(
                    prob.kind), prob.alpha, prob.theta, prob.eps, prob.clip, 0, 2.0, y)  # fmt: skip
                a = tr.astype(np.float64)
                if split:
                    m = prob.modulation(((a[:5] ** 2).sum(), (a[5:] ** 2).sum()), y)
                    want = np.concatenate([a[:5] * m[0], a[5:] * m[1]]) * 2.0
                else:
                    want = a * prob.modulation((a**2).sum(), y) * 2.0
                np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-7)
    assert hebbian_gain("sum_squares", 10) == 2.0


def test_the_compiled_kernel_is_what_runs():
    assert numba_online.AVAILABLE, "numba is missing: install the [fast] extra"
    assert type(numba_online._kernel).__name__ == "CPUDispatcher"


def test_layers_the_kernel_does_not_take_fall_back_to_numpy():
    assert not numba_online.supported(NeuronParams(kwta=3), "sum_squares", np.float32)
    assert not numba_online.supported(NeuronParams(), "l1", np.float32)
    assert not numba_online.supported(NeuronParams(), "sum_squares", np.float64)
    assert numba_online.supported(NeuronParams(), "sum_squares", np.float32)


def test_compiled_rest_equals_the_numpy_steps(monkeypatch):
    from spikingjelly_ff.simulation import rest

    d = Dynamics(NeuronParams(beta=0.85), TraceParams(), PROBS["symmetric"])
    v0 = np.random.default_rng(6).normal(0.0, 1.0, (1, 50)).astype(np.float32)
    v0[0, :3] = (-0.0, 1e-30, -1e-30)  # signed zeros and denormals on their way to zero
    compiled = rest(v0.copy(), d, 20)
    monkeypatch.setenv("SJFF_COMPILED", "0")  # the switch: the numpy path
    assert not numba_online.enabled()
    stepped = rest(v0.copy(), d, 20)
    assert compiled.tobytes() == stepped.tobytes()


def test_compiled_spike_scatter_equals_the_torch_ops(monkeypatch):
    """Dense spikes and the sparse index from the compiled scatter equal the torch path's."""
    import torch

    from spikingjelly_ff.simulation import bernoulli_spikes

    rates = torch.rand(7, 30, generator=torch.Generator().manual_seed(0)) * 0.6
    rates[rates < 0.2] = 0.0  # silent inputs: drawn for nothing
    rates[3] = 0.0  # a sample with no spike at all: empty rows
    got = bernoulli_spikes(rates, 9, torch.Generator().manual_seed(1), index=True)
    monkeypatch.setenv("SJFF_COMPILED", "0")
    want = bernoulli_spikes(rates, 9, torch.Generator().manual_seed(1), index=True)
    assert torch.equal(got[0], want[0]) and got[0].dtype == want[0].dtype and got[0].sum() > 0
    assert torch.equal(got[1].cols, want[1].cols) and torch.equal(got[1].offsets, want[1].offsets)


def test_fused_eligibility_update_equals_the_tensor_ops_bit_for_bit(monkeypatch):
    import torch

    from spikingjelly_ff.kernels import apply_delta
    from spikingjelly_ff.simulation import input_major

    g = torch.Generator().manual_seed(7)
    w0, e0, dw = (input_major(torch.randn(30, 50, generator=g)) for _ in range(3))
    got = [w0.clone().t().contiguous().t(), e0.clone().t().contiguous().t()]  # input-major copies
    apply_delta(got[0], dw, 0.3, 0.1, got[1])
    monkeypatch.setenv("SJFF_COMPILED", "0")
    want = [w0.clone(), e0.clone()]
    apply_delta(want[0], dw, 0.3, 0.1, want[1])
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not torch.equal(got[0], w0)
    # a layout the compiled pass does not take (output-major) goes through the tensor ops
    monkeypatch.delenv("SJFF_COMPILED")
    views = [t.T.numpy() for t in (got[1], got[0], dw)]  # e, w, dW
    assert numba_online.eligibility_apply(*[v.copy() for v in views], 0.1, 0.3)  # input-major: taken
    w1, e1 = w0.contiguous(), e0.contiguous()
    assert not numba_online.eligibility_apply(w1.T.numpy(), e1.T.numpy(), dw.T.numpy(), 0.1, 0.3)
    apply_delta(w1, dw, 0.3, 0.1, e1)
    assert torch.equal(w1, want[0]) and torch.equal(e1, want[1])


def test_online_trainer_refuses_a_label_outside_the_code():
    import torch

    from spikingjelly_ff.learning.engine import SpikingTrainer
    from spikingjelly_ff.runs.build import build_model
    from spikingjelly_ff.runs.config import load_config

    cfg = load_config("paper/hebbian-online-symmetric")
    trainer = SpikingTrainer(build_model(cfg.model, 784, 10, 0), cfg.train.hebbian)
    for label in (-1, 10):
        with pytest.raises(ValueError, match=r"labels must be 1 integers in \[0, 10\)"):
            trainer.train_batch(torch.rand(1, 784), torch.tensor([label]), torch.ones(1))
