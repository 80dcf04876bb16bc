"""The paper's theorem as a test: with ReLU and a quadratic goodness, the FF loss gradient
is a modulated Hebbian product; with a non-quadratic goodness it is a different local rule."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikingjelly_ff.functional.goodness import goodness_grad
from spikingjelly_ff.functional.hebbian import ff_hebbian_delta, ff_local_rule_delta, hebbian_delta, neuron_modulation
from spikingjelly_ff.functional.probability import Probability

F64 = torch.float64

PROBS = {
    "sigmoid": Probability("sigmoid", alpha=0.7, theta=2.0),
    "symmetric": Probability("symmetric", eps=0.01),
    "polar": Probability("polar", alpha=0.3, theta=0.5),
}


def autograd_delta(prob, w, x, y, goodness_kind):
    """-dL/dW by autograd, L = mean BCE(P(G(relu(W x))), y)."""
    w = w.clone().requires_grad_(True)
    act = torch.relu(x @ w.T)
    from spikingjelly_ff.functional.goodness import goodness

    loss = prob.loss(goodness(act, goodness_kind, split=prob.split), y)
    (grad,) = torch.autograd.grad(loss, w)
    return -grad, act.detach()


shapes = st.tuples(st.integers(1, 12), st.integers(1, 20), st.integers(1, 8).map(lambda h: 2 * h))


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes,
    seed=st.integers(0, 2**31 - 1),
    prob_kind=st.sampled_from(sorted(PROBS)),
    goodness_kind=st.sampled_from(["sum_squares", "mean_squares"]),
    scale=st.floats(0.05, 3.0),
)
def test_hebbian_delta_equals_negative_gradient(shape, seed, prob_kind, goodness_kind, scale):
    n, d, h = shape
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(h, d, generator=g, dtype=F64) * scale
    x = torch.randn(n, d, generator=g, dtype=F64).abs()
    y = (torch.rand(n, generator=g, dtype=F64) < 0.5).double()
    prob = PROBS[prob_kind]
    expected, act = autograd_delta(prob, w, x, y, goodness_kind)
    delta = ff_hebbian_delta(prob, act, x, y, goodness_kind)
    torch.testing.assert_close(delta, expected, rtol=1e-9, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), prob_kind=st.sampled_from(sorted(PROBS)))
def test_l1_goodness_gives_a_gated_rule_not_hebbian(shape, seed, prob_kind):
    n, d, h = shape
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(h, d, generator=g, dtype=F64)
    x = torch.randn(n, d, generator=g, dtype=F64).abs() + 0.1
    y = (torch.rand(n, generator=g, dtype=F64) < 0.5).double()
    prob = PROBS[prob_kind]
    expected, act = autograd_delta(prob, w, x, y, "l1")
    dact = (act > 0).double()
    # The exact rule: M * sign(act) * relu'(z) x^T = M * 1[act > 0] x^T (pre-synaptic, gated by firing).
    exact = ff_local_rule_delta(prob, act, x, y, "l1", dact)
    torch.testing.assert_close(exact, expected, rtol=1e-9, atol=1e-12)
    m = neuron_modulation(prob, act, y, "l1")
    gated = hebbian_delta(m, dact, x)
    torch.testing.assert_close(gated, expected, rtol=1e-9, atol=1e-12)
    # The plain Hebbian product M act x^T is a different update whenever some unit is active
    # with an activity other than 1.
    plain = hebbian_delta(m, act, x)
    if ((act > 0) & ((act - 1).abs() > 1e-3)).any() and expected.abs().max() > 1e-6:
        assert not torch.allclose(plain, expected, rtol=1e-3, atol=1e-6)


def test_goodness_grad_matches_autograd():
    g = torch.Generator().manual_seed(0)
    act = torch.randn(5, 8, generator=g, dtype=F64).requires_grad_(True)
    from spikingjelly_ff.functional.goodness import goodness

    for kind in ["sum_squares", "mean_squares", "l1"]:
        (auto,) = torch.autograd.grad(goodness(act, kind).sum(), act)
        torch.testing.assert_close(goodness_grad(act.detach(), kind), auto)


def test_modulation_is_minus_dloss_dgoodness():
    g = torch.Generator().manual_seed(1)
    y = (torch.rand(7, generator=g, dtype=F64) < 0.5).double()
    for prob in PROBS.values():
        if prob.split:
            gp = (torch.rand(7, generator=g, dtype=F64) * 5).requires_grad_(True)
            gn = (torch.rand(7, generator=g, dtype=F64) * 5).requires_grad_(True)
            loss = torch.nn.functional.binary_cross_entropy(prob((gp, gn)), y, reduction="sum")
            dp, dn = torch.autograd.grad(loss, (gp, gn))
            mp, mn = prob.modulation((gp.detach(), gn.detach()), y)
            torch.testing.assert_close(mp, -dp)
            torch.testing.assert_close(mn, -dn)
        else:
            gg = (torch.rand(7, generator=g, dtype=F64) * 5).requires_grad_(True)
            loss = torch.nn.functional.binary_cross_entropy(prob(gg), y, reduction="sum")
            (d,) = torch.autograd.grad(loss, gg)
            torch.testing.assert_close(prob.modulation(gg.detach(), y), -d)
