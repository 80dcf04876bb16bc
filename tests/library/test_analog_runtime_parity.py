"""The server's on-line rule equals the training rule: ``runtime.AnalogModel.learn`` (numpy,
applied by the server to an exported ONNX model) against ``AnalogHebbian.step`` (torch, the
reference), driven from the same weights with the same samples, eta and eligibility tau."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikingjelly_ff.export.onnx import analog_to_onnx
from spikingjelly_ff.learning.analog_hebbian import AnalogHebbian
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.config import HebbianConfig, config_from_dict
from spikingjelly_ff.runtime import load_exported

IN_FEATURES = 40  # synthetic images: the runtime takes any in_features the export declares
STEPS = 6
# Both sides compute the same float32 ops; only the matmul summation order differs (a few
# ulp per step). Weights are O(0.5) and move by 0.02..0.7 over the run, so a real rule
# difference (a wrong tau, eta, gain or normalisation) is orders of magnitude above this.
# Each net's eta keeps it out of runaway growth (an unnormalised net at eta 0.2 grows its
# weights 10x in six steps, and the rounding noise grows with them past 1e-6).
RTOL, ATOL = 1e-5, 1e-6

# name: (model config, normalise the first layer's input too, eta)
NETS = {
    "one-layer/pattern/sigmoid": ({"layers": [24], "probability": {"kind": "sigmoid", "theta": 2.0}}, False, 0.2),
    "two-layer/normalize/pattern/symmetric": (
        {"layers": [24, 12], "normalize": True, "probability": {"kind": "symmetric"}},
        False,
        0.2,
    ),
    "two-layer/no-normalize/onehot/polar": (
        {
            "layers": [24, 12],
            "normalize": False,
            "embedding": {"kind": "onehot", "scale": 2.0},
            "probability": {"kind": "polar", "theta": 1.0},
        },
        False,
        0.03,
    ),
    # every layer normalised: the export embeds the label before the first layer (no
    # label-separable current, float32 first-layer weights)
    "two-layer/normalize-all/pattern/sigmoid": (
        {"layers": [24, 12], "normalize": True, "probability": {"kind": "sigmoid", "theta": 1.0}},
        True,
        0.2,
    ),
}


def _net(model: dict, normalize_first: bool):
    model = {"kind": "analog", "embedding": {"kind": "pattern", "bits": 16}, **model}
    net = build_model(config_from_dict({"model": model}).model, IN_FEATURES, 10, 3)
    net.layers[0].normalize_input = normalize_first
    with torch.no_grad():  # larger than torch's default init, so that the goodness is O(1)
        for layer in net.layers:
            layer.weight.mul_(3.0)
    return net


def _samples(batch: int, steps: int, seed: int):
    """``steps`` tuples of (images ``[batch, IN_FEATURES]`` float32 in [0, 1], labels
    ``[batch]`` int64, positive ``[batch]`` bool)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        x = rng.random((batch, IN_FEATURES), dtype=np.float32)
        labels = rng.integers(0, 10, batch)
        positive = rng.random(batch) < 0.5
        out.append((x, labels, positive))
    return out


def _check(model, heb: AnalogHebbian, what: str) -> None:
    for i, layer in enumerate(heb.net.layers):
        np.testing.assert_allclose(
            model.weights[i], layer.weight.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg=f"{what}: weight {i}"
        )
        np.testing.assert_allclose(
            model.eligibility[i], heb.eligibility[i].numpy(), rtol=RTOL, atol=ATOL, err_msg=f"{what}: eligibility {i}"
        )


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("tau", [None, 0.3], ids=["no-trace", "trace"])
@pytest.mark.parametrize("name", list(NETS))
def test_runtime_learn_equals_torch_hebbian(tmp_path, name, tau, batch):
    model_cfg, normalize_first, eta = NETS[name]
    net = _net(model_cfg, normalize_first)
    path = analog_to_onnx(net, tmp_path / "model.onnx", hebbian=HebbianConfig(eta=eta, eligibility_tau=tau))
    model = load_exported(path)
    assert model.eligibility_tau == tau
    heb = AnalogHebbian(net, HebbianConfig(eta=eta, eligibility_tau=tau))
    start = [layer.weight.detach().clone() for layer in net.layers]
    _check(model, heb, "as exported")

    for step, (x, labels, positive) in enumerate(_samples(batch, STEPS, seed=batch * 10 + len(net.layers))):
        # like the server: each group learns on a copy of the published model, with an
        # explicit seed, and an explicit eta on some requests (the exported default otherwise)
        model = model.copy()
        step_eta = None if step % 2 else eta * 0.5
        log_odds = model.learn(x, labels, positive, seed=step + 1, eta=step_eta)
        xt = torch.from_numpy(x)
        acts = heb.step(
            net.embedding(xt, torch.from_numpy(labels)),
            torch.from_numpy(positive).float(),
            factor=1.0 if step_eta is None else step_eta / eta,
        )
        _check(model, heb, f"after update {step + 1}")
        # the returned log-odds are those of the weights before the update
        np.testing.assert_allclose(log_odds, net.pn_logit(acts).numpy(), rtol=1e-5, atol=1e-5)

    # the rule did real work: the weights moved far beyond the tolerance
    moved = [float((layer.weight.detach() - w0).abs().max()) for layer, w0 in zip(net.layers, start)]
    assert min(moved) > 1e-2, moved
    if tau is None:
        assert not any(e.any() for e in model.eligibility)
    else:
        assert all(np.abs(e).max() > 1e-3 for e in model.eligibility)
    # inference with the learned weights (fed to the graph, the first layer in float64) agrees
    x = _samples(5, 1, seed=99)[0][0]
    with torch.no_grad():
        np.testing.assert_allclose(model.scores(x), net.scores(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
