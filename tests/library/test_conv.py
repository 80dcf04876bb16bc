"""Convolutional FF layers: the theorem for ReLU convolutions (the Hebbian conv delta is the
negative autograd gradient of the layer's FF loss), and the analog and spiking conv modules."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from spikingjelly.activation_based import functional

from spikingjelly_ff.functional.conv import (
    conv_goodness,
    conv_summed_score,
    conv_weight_correlation,
    entry_units,
    ff_conv_hebbian_delta,
    ff_conv_hebbian_deltas,
    length_normalize_map,
)
from spikingjelly_ff.functional.dynamics import NeuronParams, TraceParams
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.nn import FFConv2d, FFLIFNode, SpikingFFConv2d

F64 = torch.float64

PROBS = {
    "sigmoid": Probability("sigmoid", alpha=0.2, theta=2.0),
    "symmetric": Probability("symmetric", eps=0.01),
    "polar": Probability("polar", alpha=0.3, theta=0.5),
}


def autograd_conv_delta(prob, w, x, y, stride, padding, goodness_kind, over, code=None, b=None):
    """-dL/dW by autograd, L = mean BCE over the goodness entries of relu(conv(x, W) + code @ B);
    with ``code`` ``[N, L]`` and ``b`` ``[L, C, OH, OW]`` also -dL/dB."""
    w = w.clone().requires_grad_(True)
    z = F.conv2d(x, w, stride=stride, padding=padding)
    if b is not None:
        b = b.clone().requires_grad_(True)
        z = z + torch.tensordot(code, b, 1)
    act = torch.relu(z)
    g = conv_goodness(act, goodness_kind, split=prob.split, over=over)
    g_one = g[0] if prob.split else g
    y_entries = y.reshape(-1, *([1] * (g_one.ndim - 1))).expand_as(g_one)
    grads = torch.autograd.grad(prob.loss(g, y_entries), [w] if b is None else [w, b])
    if b is None:
        return -grads[0], act.detach()
    return (-grads[0], -grads[1]), act.detach()


@st.composite
def conv_cases(draw):
    """Small conv problems: input [N, I, H, W], weights [C, I, K, K], stride, padding."""
    n, ci = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    h, w = draw(st.integers(2, 7)), draw(st.integers(2, 7))
    padding = draw(st.integers(0, 2))
    k = draw(st.integers(1, min(4, h + 2 * padding, w + 2 * padding)))
    stride = draw(st.integers(1, 3))
    c = 2 * draw(st.integers(1, 3))  # even: the split probabilities halve the channels
    return n, ci, h, w, c, k, stride, padding


@settings(max_examples=80, deadline=None)
@given(
    case=conv_cases(),
    seed=st.integers(0, 2**31 - 1),
    prob_kind=st.sampled_from(sorted(PROBS)),
    goodness_kind=st.sampled_from(["sum_squares", "mean_squares"]),
    over=st.sampled_from(["map", "location"]),
    scale=st.floats(0.05, 1.5),
)
def test_conv_hebbian_delta_equals_negative_gradient(case, seed, prob_kind, goodness_kind, over, scale):
    n, ci, h, w, c, k, stride, padding = case
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(c, ci, k, k, generator=g, dtype=F64) * scale
    x = torch.rand(n, ci, h, w, generator=g, dtype=F64)
    y = (torch.rand(n, generator=g, dtype=F64) < 0.5).double()
    prob = PROBS[prob_kind]
    expected, act = autograd_conv_delta(prob, weight, x, y, stride, padding, goodness_kind, over)
    delta = ff_conv_hebbian_delta(prob, act, x, y, k, stride, padding, goodness_kind, over)
    torch.testing.assert_close(delta, expected, rtol=1e-9, atol=1e-12)
    # the same pure function on numpy arrays (the torch-free runtime's path)
    delta_np = ff_conv_hebbian_delta(prob, act.numpy(), x.numpy(), y.numpy(), k, stride, padding, goodness_kind, over)
    np.testing.assert_allclose(delta_np, expected.numpy(), rtol=1e-9, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    case=conv_cases(),
    seed=st.integers(0, 2**31 - 1),
    prob_kind=st.sampled_from(sorted(PROBS)),
    over=st.sampled_from(["map", "location"]),
    labels=st.integers(1, 5),
)
def test_conv_hebbian_deltas_with_label_weights_equal_negative_gradients(case, seed, prob_kind, over, labels):
    """The theorem for a conv layer whose pre-activation also has a label term code @ B (one
    weight per unit and label, as the conv nets read the label): dW and dB are both -dL/d."""
    n, ci, h, w, c, k, stride, padding = case
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(c, ci, k, k, generator=g, dtype=F64) * 0.5
    x = torch.rand(n, ci, h, w, generator=g, dtype=F64)
    oh, ow = F.conv2d(x, weight, stride=stride, padding=padding).shape[-2:]
    b = torch.randn(labels, c, oh, ow, generator=g, dtype=F64) * 0.5
    code = (torch.rand(n, labels, generator=g, dtype=F64) < 0.5).double()
    y = (torch.rand(n, generator=g, dtype=F64) < 0.5).double()
    prob = PROBS[prob_kind]
    (dw_exp, db_exp), act = autograd_conv_delta(prob, weight, x, y, stride, padding, "sum_squares", over, code, b)
    dw, db = ff_conv_hebbian_deltas(prob, act, x, y, code, k, stride, padding, "sum_squares", over)
    torch.testing.assert_close(dw, dw_exp, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(db, db_exp, rtol=1e-9, atol=1e-12)
    args = (prob, act.numpy(), x.numpy(), y.numpy(), code.numpy(), k, stride, padding, "sum_squares", over)
    np.testing.assert_allclose(ff_conv_hebbian_deltas(*args)[1], db_exp.numpy(), rtol=1e-9, atol=1e-12)


def test_theorem_cases_are_not_trivial():
    """A fixed case where the gradient is far from zero, so the property test compares updates."""
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(4, 2, 3, 3, generator=g, dtype=F64) * 0.3
    x = torch.rand(3, 2, 6, 6, generator=g, dtype=F64)
    y = torch.tensor([1.0, 0.0, 1.0], dtype=F64)
    for over in ("map", "location"):
        expected, act = autograd_conv_delta(PROBS["sigmoid"], weight, x, y, 1, 1, "sum_squares", over)
        assert expected.abs().max() > 1e-3
        delta = ff_conv_hebbian_delta(PROBS["sigmoid"], act, x, y, 3, 1, 1, "sum_squares", over)
        torch.testing.assert_close(delta, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), ((1, 2), (2, 0))])
def test_weight_correlation_is_the_conv_weight_gradient(stride, padding):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 7, 8, generator=g, dtype=F64)
    w = torch.randn(5, 2, 3, 2, generator=g, dtype=F64)
    post = torch.randn_like(F.conv2d(x, w, stride=stride, padding=padding))
    expected = torch.nn.grad.conv2d_weight(x, w.shape, post, stride=stride, padding=padding)
    torch.testing.assert_close(conv_weight_correlation(post, x, (3, 2), stride, padding), expected)
    # numpy runs its own loop over kernel offsets
    got = conv_weight_correlation(post.numpy(), x.numpy(), (3, 2), stride, padding)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-12, atol=1e-12)


def test_weight_correlation_rejects_a_map_of_the_wrong_size():
    with pytest.raises(ValueError, match="does not fit"):
        conv_weight_correlation(np.zeros((1, 2, 4, 4)), np.zeros((1, 1, 5, 5)), 3)


def test_split_goodness_needs_even_channels():
    act = torch.rand(2, 3, 4, 4, dtype=F64)
    with pytest.raises(ValueError, match="even number of channels"):
        ff_conv_hebbian_delta(PROBS["symmetric"], act, torch.rand(2, 1, 6, 6, dtype=F64), torch.ones(2), 3)


def test_conv_goodness_regions():
    act = torch.rand(2, 4, 3, 5, dtype=F64)
    torch.testing.assert_close(conv_goodness(act), (act**2).sum((1, 2, 3)))
    torch.testing.assert_close(conv_goodness(act, over="location"), (act**2).sum(1))
    gp, gn = conv_goodness(act, split=True, over="map")
    torch.testing.assert_close(gp, (act[:, :2] ** 2).sum((1, 2, 3)))
    torch.testing.assert_close(gn, (act[:, 2:] ** 2).sum((1, 2, 3)))


@pytest.mark.parametrize("score", ["probability", "goodness"])
@pytest.mark.parametrize("prob", ["sigmoid", "symmetric"])
def test_entry_units_and_the_summed_score(prob, score):
    """The goodness entries' units: a sample's whole map channel-major, or each location's
    channels, sample-major; the summed score adds each voting layer's entries' scores, a
    layer named twice twice, alike on tensors and numpy arrays."""
    acts = [torch.rand(2, 4, 3, 5), torch.rand(2, 6, 2, 2)]
    a = acts[0]
    assert torch.equal(entry_units(a, "map"), a.reshape(2, 60))
    loc = entry_units(a, "location")
    assert loc.shape == (30, 4) and torch.equal(loc[7], a[0, :, 1, 2]) and torch.equal(loc[15 + 7], a[1, :, 1, 2])
    assert np.array_equal(entry_units(a.numpy(), "location"), loc.numpy())
    p = PROBS[prob]
    for over in ("map", "location"):
        one = [conv_summed_score(acts, [i], p, "sum_squares", score, over) for i in range(2)]
        assert one[0].shape == (2,)
        summed = conv_summed_score(acts, [1, 0, 1], p, "sum_squares", score, over)
        torch.testing.assert_close(summed, one[0] + 2 * one[1])
        on_numpy = conv_summed_score([t.numpy() for t in acts], [1, 0, 1], p, "sum_squares", score, over)
        assert on_numpy.dtype == np.float32
        np.testing.assert_allclose(on_numpy, summed.numpy(), rtol=1e-5, atol=1e-5)
    g = conv_goodness(acts[1], over="location").reshape(2, -1).sum(1)
    torch.testing.assert_close(conv_summed_score(acts, [1], PROBS["sigmoid"], score="goodness", over="location"), g)
    with pytest.raises(ValueError, match="goodness region"):
        entry_units(a, "pixel")


@pytest.mark.parametrize("over,dims", [("map", (-3, -2, -1)), ("location", (-3,))])
def test_length_normalize_map(over, dims):
    x = torch.rand(2, 3, 4, 5, 6, dtype=F64)
    out = length_normalize_map(x, over)
    norm = torch.linalg.vector_norm(out, dim=dims)
    torch.testing.assert_close(norm, torch.ones_like(norm), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(length_normalize_map(x.numpy(), over), out.numpy())


# -- modules ------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", [None, "max", "avg"])
def test_ff_conv2d_shapes_and_step_modes(pool):
    torch.manual_seed(0)
    conv = FFConv2d(2, 6, 3, padding=1, normalize_input="location", pool=pool)
    x = torch.rand(4, 3, 2, 8, 8)  # [T, N, I, H, W]
    a = conv.activity(x[0])
    assert a.shape == (3, 6, 8, 8)
    torch.testing.assert_close(a, torch.relu(F.conv2d(length_normalize_map(x[0], "location"), conv.weight, padding=1)))
    out_s = torch.stack([conv(xt) for xt in x])
    assert out_s.shape == ((4, 3, 6, 8, 8) if pool is None else (4, 3, 6, 4, 4))
    functional.set_step_mode(conv, "m")
    torch.testing.assert_close(conv(x), out_s)


def test_ff_conv2d_rejects_unknown_choices():
    with pytest.raises(ValueError, match="normalisation region"):
        FFConv2d(1, 2, 3, normalize_input="row")
    with pytest.raises(ValueError, match="pooling"):
        FFConv2d(1, 2, 3, pool="median")


def test_ff_conv2d_activity_gives_the_theorem_update():
    """The Hebbian delta from the module's activity is -dL/dW of the module's own weight."""
    torch.manual_seed(1)
    conv = FFConv2d(2, 4, 3, stride=2, padding=1, normalize_input="map", pool="max").double()
    x, y = torch.rand(5, 2, 9, 9, dtype=F64), torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=F64)
    prob = PROBS["symmetric"]
    act = conv.activity(x)
    loss = prob.loss(conv_goodness(act, split=True), y)
    (grad,) = torch.autograd.grad(loss, conv.weight)
    delta = ff_conv_hebbian_delta(prob, act.detach(), length_normalize_map(x), y, 3, 2, 1)
    torch.testing.assert_close(delta, -grad, rtol=1e-9, atol=1e-12)


def _spiking(step_mode="m", pool=None, kwta=None):
    torch.manual_seed(2)
    neuron = NeuronParams(v_threshold=0.3, kwta=kwta)
    layer = SpikingFFConv2d(2, 4, 3, neuron, TraceParams("leaky"), padding=1, pool=pool, step_mode=step_mode)
    with torch.no_grad():
        layer.weight.mul_(3.0)
    x = (torch.rand(6, 3, 2, 7, 7) < 0.4).float()  # [T, N, I, H, W] input spikes
    return layer, x


@pytest.mark.parametrize("kwta", [None, 5])
def test_spiking_conv_spikes_equal_a_per_step_neuron_loop(kwta):
    layer, x = _spiking(kwta=kwta)
    spikes = layer(x)
    assert spikes.shape == (6, 3, 4, 7, 7)
    assert spikes.any() and not spikes.all()
    # the reference: the same neuron stepped in single-step mode on the conv currents
    node = FFLIFNode(NeuronParams(v_threshold=0.3, kwta=kwta), TraceParams("leaky"), step_mode="s")
    with torch.no_grad():
        ref = torch.stack([node(F.conv2d(xt, layer.weight, padding=1).flatten(1)) for xt in x])
    torch.testing.assert_close(spikes, ref.reshape(spikes.shape), rtol=0, atol=0)
    torch.testing.assert_close(layer.activity, node.trace.reshape(3, 4, 7, 7), rtol=0, atol=0)


def test_spiking_conv_single_step_matches_multi_step_and_resets():
    layer_m, x = _spiking(pool="max")
    out_m = layer_m(x)
    assert out_m.shape == (6, 3, 4, 3, 3)
    layer_s, _ = _spiking(step_mode="s", pool="max")
    out_s = torch.stack([layer_s(xt) for xt in x])
    torch.testing.assert_close(out_s, out_m, rtol=0, atol=0)
    torch.testing.assert_close(layer_s.activity, layer_m.activity, rtol=0, atol=0)
    assert layer_m.activity.shape == (3, 4, 7, 7)
    functional.reset_net(layer_m)
    with pytest.raises(RuntimeError, match="has not run"):
        _ = layer_m.activity
    # after a reset the layer starts from rest again: the same input gives the same spikes
    torch.testing.assert_close(layer_m(x), out_m, rtol=0, atol=0)
