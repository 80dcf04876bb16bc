"""Spiking FF with Hebbian learning, written the SpikingJelly way.

A layer is a SpikingJelly `layer.Linear` followed by our `FFLIFNode`; a `HebbianLearner`
hooks the synapse and the neuron like SpikingJelly's `STDPLearner` and, stepped once per
time step, applies the modulated Hebbian rule through the eligibility trace. No autograd.

    python examples/spikingjelly_style.py [--samples 2000]

This is the readable form of what `sjff train paper/hebbian-online-symmetric`
runs much faster (spikingjelly_ff.learning.engine gives the same spikes and weights).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from spikingjelly.activation_based import functional

from spikingjelly_ff import FFLIFNode, HebbianLearner, NeuronParams, Probability, TraceParams
from spikingjelly_ff.functional.goodness import goodness
from spikingjelly_ff.nn.embedding import PatternEmbedding
from spikingjelly_ff.nn.layers import SpikingFFLayer
from spikingjelly_ff.runs.data import load_split

MINI = Path(__file__).resolve().parents[1] / "tests" / "data" / "mnist-mini"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--test", type=int, default=200, help="test images to classify")
    ap.add_argument("--data", default=str(MINI), help="mnist, fashion-mnist or an IDX directory")
    args = ap.parse_args()
    torch.manual_seed(0)
    # one sample and one step at a time: the tensors are small, and a second thread only waits
    # (badly so when another process holds the other core)
    torch.set_num_threads(1)

    # the paper's layer: V <- 0.85 V + W x, fire above 0.001, hard reset, leaky trace as activity
    neuron = NeuronParams(form="beta", beta=0.85, v_threshold=0.001)
    trace = TraceParams(kind="leaky", decay=0.85)
    labels = PatternEmbedding(num_classes=10, bits=100, density=0.3, seed=0)
    layer = SpikingFFLayer(784 + 100, 200, neuron, trace, step_mode="s")
    with torch.no_grad():
        layer.weight.copy_(torch.randn(200, 884))
    prob = Probability("symmetric", eps=0.01)
    learner = HebbianLearner(
        "s", layer.synapse, layer.neuron, prob, trace=trace, eta=0.5, eligibility_tau=0.1, learn_after=15
    )
    assert isinstance(layer.neuron, FFLIFNode)

    train = load_split(args.data, "train").take(args.samples)
    x, y = train.to_tensors()
    g = torch.Generator().manual_seed(0)
    correct = 0
    with torch.no_grad():
        for i in range(len(y)):
            positive = bool(torch.rand(1, generator=g) < 0.5)
            shown = y[i : i + 1] if positive else (y[i : i + 1] + torch.randint(1, 10, (1,), generator=g)) % 10
            rates = labels(x[i : i + 1], shown) * 0.25
            # a new sample: the paper keeps the membrane and lets it decay over 20 rest steps
            # (functional.reset_net(layer) would zero it, the usual SpikingJelly convention)
            layer.neuron.rest(20)
            layer.neuron.clear_trace()
            learner.reset()
            target = torch.tensor([1.0 if positive else 0.0])
            for _ in range(23):  # one step at a time; the learner updates W after each
                layer((torch.rand(rates.shape, generator=g) < rates).float())
                learner.apply(target)
            p = prob(goodness(layer.activity, split=True))
            correct += int((p.item() > 0.5) == positive)
    print(f"positive/negative accuracy over {len(y)} samples while learning: {correct / len(y):.3f}")
    learner.close()

    # classify: present every candidate label, keep the one with the highest P
    test = load_split(args.data, "test").take(args.test)
    xt, yt = test.to_tensors()
    hits = 0
    with torch.no_grad():
        for i in range(len(yt)):
            p_label = []
            for c in range(10):
                functional.reset_net(layer)
                rates = labels(xt[i : i + 1], torch.tensor([c])) * 0.25
                for _ in range(23):
                    layer((torch.rand(rates.shape, generator=g) < rates).float())
                p_label.append(prob(goodness(layer.activity, split=True)).item())
            hits += int(max(range(10), key=p_label.__getitem__) == int(yt[i]))
    print(f"test accuracy on {len(yt)} images: {hits / len(yt):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
