"""All-label testing through the one-launch presentation kernel (``sjff_present``): the
scorer's kernel path against its per-step path, on the CPU through the host emulation and,
on a GPU, through CuPy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import emulated_present

from spikingjelly_ff import kernels
from spikingjelly_ff.functional.params import NeuronParams, TraceParams
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.kernels import cupy_backend, cupy_present
from spikingjelly_ff.learning.engine import SpikingScorer
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.config import load_config
from spikingjelly_ff.simulation import (
    Dynamics,
    label_currents,
    label_spikes,
    score_labels,
    score_labels_present,
    spike_currents,
)

DYN = Dynamics(
    NeuronParams(form="beta", beta=0.85, v_threshold=0.001),
    TraceParams("count", scale=10.0),
    Probability("symmetric", eps=0.01),
)
# a negative threshold: membranes fire while they rest between labels
RESTLESS = dataclasses.replace(DYN, neuron=NeuronParams(form="beta", beta=0.85, v_threshold=-0.05))


def _grid(g: np.random.Generator, shape: tuple[int, ...], scale: int = 16) -> torch.Tensor:
    """Values on a 1/64 grid: their sums are exact in any order, so the kernel's currents equal
    the matmul's bit for bit and the two paths must spike alike."""
    return torch.from_numpy((np.round(g.normal(size=shape) * scale) / 64).astype(np.float32))


def _stack(seed: int, c: int, t: int, n: int, d: int, widths: tuple[int, ...]):
    g = np.random.default_rng(seed)
    spikes = torch.from_numpy((g.uniform(size=(c, t, n, d)) < 0.3).astype(np.float32))
    weights, fan_in = [], d
    for h in widths:
        weights.append(_grid(g, (h, fan_in)))
        fan_in = h
    states = [_grid(g, (n, h), 8) for h in widths]
    return spikes, weights, states


@pytest.mark.parametrize("dyn", [DYN, RESTLESS], ids=["paper", "fires-at-rest"])
@pytest.mark.parametrize("carry", [False, True])
@pytest.mark.parametrize("counts", [False, True])
def test_kernel_scoring_equals_per_step_scoring(emulated, dyn, carry, counts):
    """Every label through two layers: the same traces (or counts) and carried membranes as
    ``score_labels``; without carry the C * N rows run in launches of 7 (a partial last one)."""
    c, t, n = 4, 23, 5
    spikes, weights, states = _stack(3, c, t, n, 30, (9, 6))
    want, want_v = score_labels(spike_currents(spikes, weights[0]), c, weights, dyn,
                                [s.clone() for s in states], carry, 20, "torch", counts)  # fmt: skip
    present = emulated_present(emulated, blocks=3)
    rows = n if carry else 7
    got, got_v = score_labels_present(spikes.__getitem__, c, weights, dyn, [s.clone() for s in states], carry, 20,
                                      present, rows, counts)  # fmt: skip
    assert sum(float(o.sum()) for o in want) > 0  # the layers fire
    for a, b in zip(got, want):
        assert a.shape == (c, n, b.shape[-1])
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if carry:
        for a, b in zip(got_v, want_v):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    else:
        assert got_v == [None, None] and want_v == [None, None]


def test_carried_scoring_refuses_more_samples_than_a_launch(emulated):
    spikes, weights, states = _stack(4, 2, 5, 6, 10, (4,))
    with pytest.raises(ValueError, match="6 samples do not fit one launch of at most 5"):
        score_labels_present(spikes.__getitem__, 2, weights, DYN, states, True, 0, emulated_present(emulated, 3), 5)


@pytest.mark.parametrize("coding", ["bernoulli", "regular"])
@pytest.mark.parametrize("binary", [True, False])
def test_label_spikes_draw_what_label_currents_draw(coding, binary):
    """The kernel scorer's input spikes carry the per-step scorer's draws: with the same
    generator, their currents equal ``label_currents``' for every label."""
    g = np.random.default_rng(7)
    n, d, c, steps = 6, 40, 5, 23
    image, label = slice(0, 30), slice(30, 40)
    rates = torch.zeros(n, d)
    rates[:, image] = torch.from_numpy(g.uniform(size=(n, 30)).astype(np.float32)) * 0.4
    rates[:, image] *= torch.from_numpy(g.uniform(size=(n, 30)) < 0.6)  # dark pixels never fire
    if binary:
        label_rates = (torch.from_numpy(g.uniform(size=(c, 10)) < 0.5) * 0.3).float()
    else:
        label_rates = torch.from_numpy(g.uniform(size=(c, 10)).astype(np.float32)) * 0.5
    w = _grid(g, (8, d))
    want = label_currents(rates, label_rates, image, label, w, steps, torch.Generator().manual_seed(1), True, coding)
    first = label_spikes(rates, label_rates, image, label, d, steps, torch.Generator().manual_seed(1), coding)
    for k in range(c):
        x = first(k)
        assert x.shape == (steps, n, d)
        assert torch.equal(x[..., image], first(0)[..., image])  # one image draw serves every label
        torch.testing.assert_close(spike_currents(x.unsqueeze(0), w)(0), want(k), rtol=0, atol=0)


@pytest.mark.parametrize("limit,sms", [(227 * 1024, 132), (48 * 1024, 132), (48 * 1024, 20)])
@pytest.mark.parametrize("h", [200, 2000])
def test_inference_rows_fit_the_shared_memory(monkeypatch, limit, sms, h):
    """Samples per launch for a GPU with ``sms`` multiprocessors and ``limit`` bytes of shared
    memory per block: ``rows`` or the largest halving that fits, else ``least``; what it
    returns fits, and twice as many (a halving's parent) does not."""
    monkeypatch.setattr(cupy_present, "_multiprocessors", lambda device: sms)
    monkeypatch.setattr(cupy_present, "_shared_limit", lambda device: limit)
    monkeypatch.setattr(cupy_present, "INFERENCE_NEURONS_PER_BLOCK", 10**6)  # the room alone decides here
    p = DYN.neuron

    def fits(r: int) -> bool:
        return cupy_present.present_supported(p, "sum_squares", r, 884, h, False, 0, learns=False)

    r = cupy_present.inference_rows(p, 2500, 884, h, 0, least=250)
    if r:
        assert fits(r) and r in (2500, 1250, 625, 312, 250)
        assert r == 2500 or not fits(2 * r if r != 250 else 312)
    else:
        assert not any(fits(k) for k in (2500, 1250, 625, 312, 250))
    if sms == 132 and h == 200:
        # the paper's layer, all ten labels of 250 images in one launch: on an H200, and within
        # 48 KiB, where the room for learning (Hebbian coefficients, staged goodness) would
        # leave launches of one label's 250 images
        assert r == 2500
        learning = [cupy_present.present_supported(p, "sum_squares", k, 884, h, False, 0) for k in (312, 250)]
        assert learning == ([True, True] if limit > 48 * 1024 else [False, True])
    monkeypatch.setenv("SJFF_PRESENT", "0")
    assert cupy_present.inference_rows(p, 2500, 884, h, 0, least=250) == 0
    monkeypatch.delenv("SJFF_PRESENT")
    kwta = dataclasses.replace(p, kwta=5)
    assert cupy_present.inference_rows(kwta, 2500, 884, h, 0, least=250) == 0


@pytest.mark.parametrize(
    "h,sms,takes",
    [(200, 132, True), (264, 132, True), (265, 132, False), (2000, 132, False), (200, 100, True), (200, 99, False)],
)
def test_inference_leaves_layers_of_more_than_two_neurons_per_block_to_the_per_step_path(monkeypatch, h, sms, takes):
    """Where a block would hold more than two neurons (h > 2 * multiprocessors) inference
    takes the per-step path, which scores such layers faster (docs/gpu.md), even where the
    launch fits the shared memory."""
    monkeypatch.setattr(cupy_present, "_multiprocessors", lambda device: sms)
    monkeypatch.setattr(cupy_present, "_shared_limit", lambda device: 227 * 1024)
    p = DYN.neuron
    assert cupy_present.present_supported(p, "sum_squares", 250, 884, h, False, 0, learns=False)
    assert (cupy_present.inference_rows(p, 2500, 884, h, 0, least=250) > 0) == takes


def test_present_rows_refuses_what_is_not_a_cuda_float32_layer():
    w = torch.zeros(20, 884)
    assert kernels.present_rows("cupy", w, DYN.neuron, 100, 884, 10) == 0  # a CPU tensor
    assert kernels.present_rows("torch", w, DYN.neuron, 100, 884, 10) == 0
    assert kernels.present_rows("cupy", w.numpy(), DYN.neuron, 100, 884, 10) == 0


def _net(seed: int, carry: bool, widths: str = "[20, 12]"):
    """The paper's spiking net (``paper/hebbian-batched-symmetric``), two small layers."""
    sets = [f"model.layers={widths}", f"model.encoder.carry_membrane={str(carry).lower()}"]
    cfg = load_config("paper/hebbian-batched-symmetric", sets)
    net = build_model(cfg.model, 784, 10, seed, "torch")
    g = np.random.default_rng(seed)
    with torch.no_grad():
        for layer in net.layers:  # weights on the grid: both paths must give the same spikes
            layer.weight.copy_(_grid(g, tuple(layer.weight.shape), 4))
    return net


@pytest.mark.parametrize("carry", [False, True])
def test_scorer_takes_the_kernel_path_where_it_fits(emulated, monkeypatch, carry):
    """``SpikingScorer`` on a layer the kernel takes: the same scores and carried membranes as
    its per-step path, drawing the same spikes from the same seed."""
    x = torch.rand(30, 784) * (torch.rand(30, 784) < 0.3)
    per_step = SpikingScorer(_net(0, carry), seed=5)
    per_step.chunk = 10  # three chunks: with carry, the membranes pass from one to the next
    want = per_step.scores(x)
    net = _net(0, carry)
    net.backend = "cupy"  # what a GPU run selects; the launches below run in the emulation
    calls = []
    monkeypatch.setattr(kernels, "present_rows", lambda backend, w, p, rows, d, least: calls.append(rows) or rows)
    monkeypatch.setattr(kernels, "present", emulated_present(emulated, blocks=4))
    scorer = SpikingScorer(net, seed=5)
    scorer.chunk = 10
    got = scorer.scores(x)
    assert calls and calls[0] == (10 if carry else 100)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.std() > 0
    assert torch.equal(scorer.generator.get_state(), per_step.generator.get_state())  # the same draws, no more
    for a, b in zip(net.state(), per_step.net.state()):
        if carry:
            assert a is not None and float(a.abs().sum()) > 0
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        else:
            assert a is None and b is None


def test_scorer_keeps_the_per_step_path_where_no_launch_fits(monkeypatch):
    """Fewer rows per launch than one label's images (or none): the per-step path."""
    for rows in (0, 7):
        net = _net(1, False)
        net.backend = "cupy"
        monkeypatch.setattr(kernels, "present_rows", lambda backend, w, p, want, d, least, r=rows: r)
        monkeypatch.setattr(kernels, "present", lambda *a, **k: pytest.fail("the kernel path was taken"))
        # the per-step path's CuPy neuron kernel needs a GPU: its torch twin stands in
        monkeypatch.setattr(kernels, "_backend", lambda name: kernels._load("torch_loop"))
        assert SpikingScorer(net, seed=1).scores(torch.rand(8, 784)).shape == (8, 10)


gpu = pytest.mark.skipif(not (torch.cuda.is_available() and cupy_backend.available()), reason="needs CUDA and CuPy")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("carry", [False, True])
def test_kernel_scoring_equals_per_step_scoring_on_gpu(monkeypatch, carry):
    """On the GPU: the paper's 884 -> 200 layer scoring 500 images through ``sjff_present``
    (``SJFF_PRESENT=1``) against the per-step CuPy path (``SJFF_PRESENT=0``), same seed."""
    outs = []
    # compare the paths on any GPU, also one whose blocks would hold more than two neurons
    monkeypatch.setattr(cupy_present, "INFERENCE_NEURONS_PER_BLOCK", 10**6)
    for flag in ("0", "1"):
        monkeypatch.setenv("SJFF_PRESENT", flag)
        net = _net(0, carry, "[200]").cuda()
        net.backend = "cupy"
        x = torch.rand(500, 784, generator=torch.Generator().manual_seed(1)).cuda()
        scorer = SpikingScorer(net, seed=2, device="cuda")
        rows = scorer._present_rows(x[: scorer.chunk], [la.weight.data for la in net.layers], 10, carry)
        assert (rows > 0) == (flag == "1")
        outs.append(scorer.scores(x))
    a, b = outs
    # the kernel sums currents in another order than cuBLAS: a membrane on the threshold may
    # fire on one path only, which moves that image's scores; nearly all must agree
    close = ((a - b).abs() <= 1e-3 + 1e-3 * b.abs()).all(1)
    assert close.float().mean() > 0.99 and (a.argmax(1) == b.argmax(1)).float().mean() > 0.99
