"""Spiking FF: SpikingJelly conventions, the fast engine against the per-step reference loop,
and Hebbian training without autograd."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import functional

from spikingjelly_ff.functional.dynamics import charge, fire, reset, trace_step
from spikingjelly_ff.functional.params import NeuronParams, TraceParams
from spikingjelly_ff.kernels import numba_batch, numba_online
from spikingjelly_ff.learning.engine import SpikingScorer, SpikingTrainer
from spikingjelly_ff.learning.reference import ReferenceLoop
from spikingjelly_ff.nn.layers import SpikingFFLayer
from spikingjelly_ff.nn.neuron import FFLIFNode
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.config import config_from_dict


def small_net(prob="symmetric", trace="leaky", carry=True, layers=(16, 8), kwta=None, form="beta", eligibility=0.1):
    cfg = config_from_dict(
        {
            "model": {
                "kind": "spiking",
                "layers": list(layers),
                "init": "normal",
                "probability": {"kind": prob, "alpha": 6.0, "theta": 1.0},
                "trace": {"kind": trace},
                "neuron": {"kwta": kwta, "form": form, "tau": 3.0},
                "encoder": {"steps": 8, "rest_steps": 3, "carry_membrane": carry},
                "embedding": {"bits": 10},
            },
            "train": {"learner": "hebbian", "hebbian": {"eta": 0.5, "eligibility_tau": eligibility, "learn_after": 3}},
        }
    )
    return cfg, build_model(cfg.model, 20, 10, 0)



def test_soft_reset_rate_grows_with_the_current_where_the_hard_reset_codes_its_sign():
    """Constant currents over 24 steps through SpikingJelly's two resets. The paper's neuron
    (threshold 0.001, V <- 0) fires at every step for any positive current; with the soft reset
    (``v_reset=None``: V <- V - V_th) the spike count rises with the current, and V keeps the
    remainder, as SpikingJelly's neurons with ``v_reset=None`` do."""
    currents = torch.linspace(0.05, 1.0, 20)
    counts = {}
    for name, p in (("hard", NeuronParams(v_threshold=0.001)), ("soft", NeuronParams(v_threshold=0.4, v_reset=None))):
        v, total = torch.zeros(20), torch.zeros(20)
        for _ in range(24):
            v = charge(v, currents, p)
            s = fire(v, p)
            v = reset(v, s, p)
            total += s.float()
        counts[name] = total
    assert torch.all(counts["hard"] == 24)
    soft = counts["soft"]
    assert torch.all(soft[1:] >= soft[:-1]) and len(set(soft.tolist())) >= 8 and soft[0] == 0 and soft[-1] == 24
    v = reset(torch.tensor([0.9, 0.2]), torch.tensor([True, False]), NeuronParams(v_threshold=0.4, v_reset=None))
    assert torch.allclose(v, torch.tensor([0.5, 0.2]))
    with pytest.raises(ValueError, match="must be > 0"):
        NeuronParams(v_threshold=0.0, v_reset=None)

def test_node_single_and_multi_step_agree_and_reset_net_clears_state():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 4, 30, generator=g)
    multi = FFLIFNode(NeuronParams(beta=0.8, v_threshold=0.3), TraceParams("hard", 0.7), step_mode="m")
    single = FFLIFNode(NeuronParams(beta=0.8, v_threshold=0.3), TraceParams("hard", 0.7), step_mode="s")
    s_multi = multi(x)
    s_single = torch.stack([single(x[t]) for t in range(12)])
    assert torch.equal(s_multi, s_single)
    assert torch.equal(multi.v, single.v) and torch.equal(multi.trace, single.trace)
    assert s_multi.sum() > 0 and (s_multi == 0).sum() > 0
    functional.reset_net(multi)
    assert multi.v == 0.0 and multi.trace == 0.0


def test_layer_is_a_spikingjelly_step_module():
    layer = SpikingFFLayer(30, 10, step_mode="s")
    functional.set_step_mode(layer, "m")
    assert layer.synapse.step_mode == "m" and layer.neuron.step_mode == "m"
    out = layer(torch.rand(5, 3, 30).round())
    assert out.shape == (5, 3, 10)
    assert layer.activity.shape == (3, 10)


def test_dynamics_follow_the_paper():
    p = NeuronParams(beta=0.85, v_threshold=0.001)
    v = torch.tensor([[0.5, -2.0, 0.0009]])
    v = charge(v, torch.tensor([[1.0, 1.0, 0.0]]), p)
    torch.testing.assert_close(v, torch.tensor([[1.425, -0.7, 0.000765]]))
    s = fire(v, p)
    assert s.tolist() == [[True, False, False]]
    assert reset(v, s, p).tolist()[0][0] == 0.0
    tr = torch.zeros(1, 3)
    assert trace_step(tr, s, TraceParams("count", scale=10.0)).tolist()[0][0] == pytest.approx(0.1)
    assert trace_step(tr + 0.5, s, TraceParams("leaky", 0.85)).tolist()[0] == pytest.approx([0.575, 0.425, 0.425])
    assert trace_step(tr + 0.5, s, TraceParams("hard", 0.85)).tolist()[0] == pytest.approx([1.0, 0.425, 0.425])
    # k-WTA lets only the k largest fire
    assert fire(torch.tensor([[3.0, 1.0, 2.0, 0.5]]), NeuronParams(kwta=2)).tolist() == [[True, False, True, False]]
    # the '>=' rule fires at the threshold itself
    assert fire(torch.tensor([[0.001]]), NeuronParams(fire=">=")).item()


def test_rest_only_decays_the_membrane():
    node = FFLIFNode(NeuronParams(beta=0.5), step_mode="s")
    node(torch.tensor([[-8.0, 0.0005]]))
    node.rest(3)
    torch.testing.assert_close(node.v, torch.tensor([[-1.0, 0.0000625]]))


@pytest.mark.parametrize("prob", ["sigmoid", "symmetric"])
@pytest.mark.parametrize("trace", ["count", "leaky", "hard"])
@pytest.mark.parametrize("carry,kwta", [(True, None), (False, None), (True, 5)])
def test_engine_matches_reference_loop(prob, trace, carry, kwta, monkeypatch):
    """Batched training and all-label scoring through the per-step path (the compiled batch
    presentation off): same spikes, same weights, same scores."""
    monkeypatch.setenv("SJFF_COMPILED", "0")
    cfg, net = small_net(prob, trace, carry, kwta=kwta)
    ref_net = copy.deepcopy(net)
    g = torch.Generator().manual_seed(1)
    trainer = SpikingTrainer(net, cfg.train.hebbian)
    with ReferenceLoop(ref_net, cfg.train.hebbian) as ref:
        _train_alike(net, trainer, ref, g)
        for a, b in zip(net.layers, ref_net.layers):
            assert torch.equal(a.weight, b.weight)
            torch.testing.assert_close(a.neuron.v, b.neuron.v, rtol=0, atol=1e-5)
        x = torch.rand(4, 20, generator=g)
        spikes = torch.stack([net.encode(net.rates(x, torch.full((4,), c)), g) for c in range(10)])
        torch.testing.assert_close(SpikingScorer(net).scores(x, spikes), ref.scores(spikes), rtol=0, atol=0)
    assert not torch.equal(net.layers[0].weight, copy.deepcopy(build_model(cfg.model, 20, 10, 0)).layers[0].weight)


@pytest.mark.parametrize("prob", ["sigmoid", "symmetric"])
@pytest.mark.parametrize("trace", ["count", "leaky", "hard"])
@pytest.mark.parametrize("carry", [True, False])
def test_compiled_batch_presentation_matches_reference_loop(prob, trace, carry, monkeypatch):
    """The same with the compiled batch presentation (``kernels.numba_batch``, what batched
    CPU training runs): the same judgements and spikes, weights and membranes to float
    rounding (its delta and goodness sums run in another order than BLAS's and torch's)."""
    if not numba_online.AVAILABLE and os.environ.get("SJFF_REQUIRE_NUMBA") != "1":  # CI requires it
        pytest.skip("numba not installed (extra [fast])")
    cfg, net = small_net(prob, trace, carry, kwta=None)
    ref_net = copy.deepcopy(net)
    g = torch.Generator().manual_seed(1)
    trainer = SpikingTrainer(net, cfg.train.hebbian)
    calls = []
    real = numba_batch.present_batch
    monkeypatch.setattr(numba_batch, "present_batch", lambda *a, **k: calls.append(1) or real(*a, **k))

    def same_traces():  # the spikes were the same
        assert all(torch.equal(a.neuron.trace, b.neuron.trace) for a, b in zip(net.layers, ref_net.layers))

    with ReferenceLoop(ref_net, cfg.train.hebbian) as ref:
        _train_alike(net, trainer, ref, g, same_traces)
        for a, b in zip(net.layers, ref_net.layers):
            torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(a.neuron.v, b.neuron.v, rtol=0, atol=1e-5)
    assert len(calls) == 4 * len(net.layers)  # every layer of every batch ran the kernel


def _train_alike(net, trainer, ref, g, after_each=lambda: None, batches: int = 4, n: int = 3) -> None:
    """``batches`` batches of ``n`` through the engine and the reference loop: the same judgements."""
    for _ in range(batches):
        x = torch.rand(n, 20, generator=g)
        lab = torch.randint(0, 10, (n,), generator=g)
        y = (torch.rand(n, generator=g) < 0.5).float()
        spikes = net.encode(net.rates(x, lab), g)
        assert torch.equal(trainer.train_batch(x, lab, y, spikes=spikes), ref.train_presentation(spikes, y))
        after_each()


@pytest.mark.parametrize("prob", ["sigmoid", "symmetric"])
@pytest.mark.parametrize("trace", ["count", "leaky", "hard"])
def test_online_path_matches_reference_loop(prob, trace):
    """Batch-1 training defers the weight writes to the end of each sample; the result equals
    the per-step updates up to float rounding, with identical decisions."""
    cfg, net = small_net(prob, trace)
    ref_net = copy.deepcopy(net)
    g = torch.Generator().manual_seed(2)
    trainer = SpikingTrainer(net, cfg.train.hebbian)
    with ReferenceLoop(ref_net, cfg.train.hebbian) as ref:
        _train_alike(net, trainer, ref, g, batches=20, n=1)
        for a, b, e in zip(net.layers, ref.learners, trainer.eligibility):
            torch.testing.assert_close(a.weight, b.synapse.weight, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(e, b.eligibility, rtol=1e-4, atol=1e-7)
        assert (net.layers[0].weight - build_model(cfg.model, 20, 10, 0).layers[0].weight).abs().max() > 1e-3


def test_spiking_training_builds_no_autograd_graph():
    cfg, net = small_net()
    assert all(layer.weight.requires_grad for layer in net.layers)
    saved = []

    def pack(t):
        saved.append(t.shape)
        return t

    trainer = SpikingTrainer(net, cfg.train.hebbian)
    g = torch.Generator().manual_seed(0)
    torch.set_grad_enabled(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for n in (3, 1):  # the batched and the online path
            x = torch.rand(n, 20, generator=g)
            pred = trainer.train_batch(x, torch.zeros(n, dtype=torch.long), torch.ones(n))
            assert pred.grad_fn is None
        scores = SpikingScorer(net).scores(torch.rand(2, 20, generator=g))
    assert saved == [], "autograd saved tensors: a graph was built"
    assert scores.grad_fn is None
    assert all(layer.weight.grad is None for layer in net.layers)


def test_scoring_an_empty_batch_gives_an_empty_answer():
    """The tail of a split test set can be empty: [0, C] scores, no reshape error."""
    _, net = small_net()
    scorer = SpikingScorer(net)
    assert scorer.scores(torch.rand(0, 20)).shape == (0, 10)
    assert scorer.predict(torch.rand(0, 20)).shape == (0,)


def test_spiking_model_learns_on_mnist_subset(spiking_run):
    import json

    metrics = json.loads((spiking_run / "metrics.json").read_text())
    # One epoch on 2,000 digits with the paper's rule: far above chance (10%).
    assert metrics["final"]["test_accuracy"] > 0.3


def test_learning_window_and_eta_zero_leave_weights():
    cfg, net = small_net()
    before = [layer.weight.clone() for layer in net.layers]
    trainer = SpikingTrainer(net, cfg.train.hebbian.__class__(eta=0.0, eligibility_tau=0.1, learn_after=3))
    trainer.train_batch(torch.rand(2, 20), torch.zeros(2, dtype=torch.long), torch.ones(2))
    assert all(torch.equal(a, layer.weight) for a, layer in zip(before, net.layers))


def test_numpy_and_torch_dynamics_agree_bitwise():
    from spikingjelly_ff.functional.probability import Probability
    from spikingjelly_ff.simulation import Dynamics, neuron_forward

    g = np.random.default_rng(0)
    cur = g.normal(size=(10, 4, 32)).astype(np.float32)
    for form in ("beta", "lif"):
        for trace in ("count", "leaky", "hard"):
            d = Dynamics(NeuronParams(form=form, tau=3.0, v_threshold=0.2), TraceParams(trace), Probability())
            v1, t1 = np.zeros((4, 32), np.float32), np.zeros((4, 32), np.float32)
            s1 = neuron_forward(cur, v1, t1, d)
            v2, t2 = torch.zeros(4, 32), torch.zeros(4, 32)
            s2 = neuron_forward(torch.from_numpy(cur), v2, t2, d)
            assert np.array_equal(s1, s2.numpy()) and np.array_equal(v1, v2.numpy()) and np.array_equal(t1, t2.numpy())


def test_hebbian_learner_multi_step_accumulates_with_fixed_weights():
    """In 'm' mode the learner sees [T, N, D] records and sums the per-step deltas computed
    with the weights of the forward pass (like SpikingJelly's STDPLearner)."""
    from spikingjelly_ff.functional.hebbian import ff_hebbian_delta
    from spikingjelly_ff.functional.probability import Probability
    from spikingjelly_ff.learning.learners import HebbianLearner

    torch.manual_seed(0)
    layer = SpikingFFLayer(30, 12, NeuronParams(beta=0.8, v_threshold=0.1), TraceParams("leaky", 0.8), step_mode="m")
    prob = Probability("symmetric")
    learner = HebbianLearner("m", layer.synapse, layer.neuron, prob, trace=TraceParams("leaky", 0.8), learn_after=2)
    x = (torch.rand(6, 4, 30) < 0.3).float()
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    with torch.no_grad():
        spikes = layer(x)
    dw = learner.step(y, on_grad=False)
    tr = torch.zeros(4, 12)
    expected = torch.zeros_like(layer.weight)
    for t in range(6):
        tr = trace_step(tr, spikes[t] > 0, TraceParams("leaky", 0.8))
        if t > 2:
            expected += ff_hebbian_delta(prob, tr, x[t], y)
    torch.testing.assert_close(dw, expected)
    assert spikes.sum() > 0
    # on_grad=True: written as -dW into weight.grad for any torch optimizer
    functional.reset_net(layer)
    learner.reset()
    with torch.no_grad():
        layer(x)
    assert learner.step(y) is None
    torch.testing.assert_close(layer.weight.grad, -expected)
    learner.close()
