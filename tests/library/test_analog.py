"""Analog FF networks: label embeddings, batched all-label scoring, layer-local learning, and
the Hebbian learner as a SpikingJelly-style module."""

from __future__ import annotations

import json

import pytest
import torch

from spikingjelly_ff.functional.goodness import goodness
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.learning.learners import HebbianLearner, LocalLossLearner
from spikingjelly_ff.nn.embedding import OneHotOverlay, PatternEmbedding
from spikingjelly_ff.nn.layers import FFLinear
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.config import config_from_dict


def analog(**model):
    return build_model(config_from_dict({"model": {"kind": "analog", **model}}).model, 784, 10, 0)


def test_embeddings():
    x = torch.rand(4, 784)
    pat = PatternEmbedding(10, bits=100, density=0.3, seed=1)
    assert pat(x, torch.tensor([0, 1, 2, 3])).shape == (4, 884)
    assert torch.equal(pat.all_labels(x)[3], pat(x, torch.full((4,), 3)))
    assert 0.2 < pat.patterns.mean() < 0.4
    assert torch.equal(PatternEmbedding(10, seed=1).patterns, pat.patterns), "patterns must be reproducible"
    hot = OneHotOverlay(10)
    out = hot(x, torch.tensor([0, 1, 2, 3]))
    assert out.shape == (4, 784) and out[2, :10].tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert torch.equal(out[:, 10:], x[:, 10:])
    assert torch.equal(hot.all_labels(x)[7], hot(x, torch.full((4,), 7)))


@pytest.mark.parametrize("prob", ["sigmoid", "symmetric", "polar"])
def test_batched_scores_equal_per_label_loop(prob):
    net = analog(layers=[32, 16], probability={"kind": prob})
    x = torch.rand(5, 784)
    with torch.no_grad():
        batched = net.scores(x)
        loop = torch.stack([net.score_activities(net.label_activities(x, torch.full((5,), c))) for c in range(10)], 1)
    torch.testing.assert_close(batched, loop)
    assert net.predict(x).shape == (5,)


def test_length_normalisation_between_layers():
    layer = FFLinear(8, 4, normalize_input=True)
    x = torch.rand(3, 8)
    torch.testing.assert_close(layer(x), layer(x * 7.0))


def test_local_loss_learner_keeps_gradients_local():
    net = analog(layers=[32, 16], probability={"kind": "symmetric"})
    opt = torch.optim.SGD(net.layers.parameters(), lr=0.0)
    learner = LocalLossLearner(net, opt)
    x = net.embedding(torch.rand(6, 784), torch.arange(6))
    y = torch.tensor([1.0, 0, 1, 0, 1, 0])
    learner.step(x, y)
    # layer 0's gradient is exactly the gradient of its own loss
    w0 = net.layers[0].weight
    l0 = net.layers[0](x)
    (g0,) = torch.autograd.grad(net.probability.loss(net.layer_goodness(l0), y), w0)
    torch.testing.assert_close(w0.grad, g0)


def test_hebbian_learner_hooks_like_stdp_learner_and_equals_sgd():
    """SpikingJelly-style learner on an analog layer: step() writes -dW into weight.grad, so an
    SGD step with lr eta equals the autograd FF step (the theorem, through the module API)."""
    torch.manual_seed(0)
    prob = Probability("symmetric")
    layer = FFLinear(20, 8)
    twin = FFLinear(20, 8)
    twin.load_state_dict(layer.state_dict())
    learner = HebbianLearner("s", layer.synapse, layer.act, prob)
    opt = torch.optim.SGD(layer.parameters(), lr=0.3)
    x = torch.rand(6, 20)
    y = torch.tensor([1.0, 0, 1, 1, 0, 0])
    with torch.no_grad():
        layer(x)
    opt.zero_grad()
    assert learner.step(y) is None
    opt.step()
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.3)
    prob.loss(goodness(twin(x), split=True), y).backward()
    twin_opt.step()
    torch.testing.assert_close(layer.synapse.weight, twin.synapse.weight)
    # records are consumed; a second step has nothing to do
    assert learner.step(y) is None and learner.in_spike_monitor.records == []
    learner.close()


def test_hebbian_learner_refuses_bias():
    layer = FFLinear(4, 2, bias=True)
    with pytest.raises(ValueError, match="bias"):
        HebbianLearner("s", layer.synapse, layer.act, Probability())


def test_analog_model_learns_on_mnist_subset(analog_run):
    metrics = json.loads((analog_run / "metrics.json").read_text())
    assert metrics["final"]["test_accuracy"] > 0.8
    assert len(metrics["epochs"]) == 3 and all("train_seconds" in e for e in metrics["epochs"])


def test_analog_hebbian_training_equals_sgd_training(mini):
    """The whole training loop with learner=hebbian (no autograd) reproduces plain SGD on the
    local losses, step for step."""
    from spikingjelly_ff.learning.analog_hebbian import AnalogHebbian
    from spikingjelly_ff.runs.config import HebbianConfig

    torch.manual_seed(1)
    net = analog(layers=[24, 12], probability={"kind": "sigmoid", "theta": 2.0})
    twin = analog(layers=[24, 12], probability={"kind": "sigmoid", "theta": 2.0})
    twin.load_state_dict(net.state_dict())
    heb = AnalogHebbian(net, HebbianConfig(eta=0.05, eligibility_tau=None))
    opt = torch.optim.SGD(twin.layers.parameters(), lr=0.05)
    loc = LocalLossLearner(twin, opt)
    for _ in range(5):
        x = net.embedding(torch.rand(8, 784), torch.randint(0, 10, (8,)))
        y = (torch.rand(8) < 0.5).float()
        heb.step(x, y)
        loc.step(x, y)
    for a, b in zip(net.layers, twin.layers):
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)
