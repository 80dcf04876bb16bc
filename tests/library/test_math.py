"""Goodness and probability functions: values, ranges, the clamp, numpy/torch agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikingjelly_ff.functional.goodness import goodness, hebbian_gain, split_halves
from spikingjelly_ff.functional.hebbian import eligibility_step, ff_hebbian_delta
from spikingjelly_ff.functional.probability import Probability


def test_goodness_values():
    act = torch.tensor([[1.0, -2.0, 3.0, 0.0]])
    assert goodness(act, "sum_squares").item() == 14.0
    assert goodness(act, "mean_squares").item() == 3.5
    assert goodness(act, "l1").item() == 6.0
    gp, gn = goodness(act, "sum_squares", split=True)
    assert (gp.item(), gn.item()) == (5.0, 9.0)
    with pytest.raises(ValueError, match="even"):
        split_halves(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="unknown goodness"):
        goodness(act, "max")
    assert hebbian_gain("sum_squares", 200) == 2.0 and hebbian_gain("mean_squares", 200, split=True) == 0.02
    with pytest.raises(ValueError, match="not quadratic"):
        hebbian_gain("l1", 10)


def test_probabilities():
    g = torch.tensor([0.0, 3.5, 100.0])
    p = Probability("sigmoid", alpha=1.0, theta=3.5)(g)
    assert p[1].item() == pytest.approx(0.5) and p[2].item() == pytest.approx(1.0) and 0 < p[0] < 0.5
    sym = Probability("symmetric", eps=0.01)
    assert sym((torch.tensor([2.0]), torch.tensor([2.0]))).item() == pytest.approx(0.5)
    assert sym((torch.tensor([0.0]), torch.tensor([0.0]))).item() == pytest.approx(0.5)
    assert sym((torch.tensor([9.99]), torch.tensor([0.0]))).item() == pytest.approx(0.999)
    pol = Probability("polar", alpha=2.0, theta=1.0)
    assert pol((torch.tensor([3.0]), torch.tensor([2.0]))).item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        Probability("softmax")
    with pytest.raises(TypeError, match="pair"):
        sym(torch.tensor([1.0]))


def test_clip_gates_saturated_samples():
    prob = Probability("sigmoid", alpha=1.0, theta=0.0, clip=1e-5)
    g = torch.tensor([0.0, 30.0])  # P = 0.5, and P saturated at 1
    m = prob.modulation(g, torch.tensor([0.0, 0.0]))
    assert m[0].item() == pytest.approx(-0.5) and m[1].item() == 0.0
    gg = g.clone().requires_grad_(True)
    prob.loss(gg, torch.tensor([0.0, 0.0])).backward()
    assert gg.grad[1].item() == 0.0


def test_numpy_and_torch_math_agree():
    rng = np.random.default_rng(0)
    post = np.abs(rng.normal(size=(6, 10))).astype(np.float32)
    pre = rng.uniform(size=(6, 7)).astype(np.float32)
    y = (rng.uniform(size=6) < 0.5).astype(np.float32)
    for prob in (Probability("sigmoid", 2.0, 1.0), Probability("symmetric"), Probability("polar", 0.5, 0.2, clip=1e-3)):
        a = ff_hebbian_delta(prob, post, pre, y)
        b = ff_hebbian_delta(prob, torch.from_numpy(post), torch.from_numpy(pre), torch.from_numpy(y)).numpy()
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    e = np.ones((2, 2), np.float32)
    np.testing.assert_allclose(eligibility_step(e, e * 3, 0.25), e * 1.5)
