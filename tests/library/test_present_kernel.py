"""The one-launch presentation kernel (``kernels/ff_present.cu``): its logic, run on the CPU
through the host emulation with several blocks (so the grid barrier and the goodness exchange
are exercised), against the per-step torch path; on a GPU, through CuPy against torch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import per_step_path, run_emulated

from spikingjelly_ff import kernels
from spikingjelly_ff.functional.hebbian import ELIGIBILITY_FLOOR
from spikingjelly_ff.functional.params import HebbianParams, NeuronParams, TraceParams
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.kernels import cupy_backend, cupy_present
from spikingjelly_ff.simulation.layer import Dynamics, input_major, run_layer

PAPER = Dynamics(
    NeuronParams(form="beta", beta=0.85, v_threshold=0.001),
    TraceParams("count", scale=10.0),
    Probability("symmetric", eps=0.01),
)
CASES = {
    "paper": (PAPER, HebbianParams(eta=0.5, eligibility_tau=0.1, learn_after=15)),
    "sigmoid-mean-lif-no-eligibility": (
        Dynamics(
            NeuronParams(form="lif", tau=2.5, v_threshold=0.3, decay_input=True, v_reset=-0.1),
            TraceParams("leaky", 0.6),
            Probability("sigmoid", alpha=2.0, theta=0.5),
            "mean_squares",
        ),
        HebbianParams(eta=0.3, eligibility_tau=None, learn_after=5),
    ),
    "polar-clip-hard-trace": (
        Dynamics(
            NeuronParams(form="beta", beta=0.7, v_threshold=0.2, fire=">="),
            TraceParams("hard", 0.8),
            Probability("polar", alpha=1.5, theta=0.2, clip=0.02),
        ),
        HebbianParams(eta=0.2, eligibility_tau=0.3, learn_after=10),
    ),
    # soft reset (V - v_threshold after a spike): V may stay above threshold and fire at rest
    "soft-reset": (
        dataclasses.replace(PAPER, neuron=NeuronParams(form="beta", beta=0.85, v_threshold=0.1, v_reset=None)),
        HebbianParams(eta=0.5, eligibility_tau=0.1, learn_after=15),
    ),
    # a negative threshold: the membrane can fire during the rest steps
    "fires-at-rest": (
        dataclasses.replace(PAPER, neuron=NeuronParams(form="beta", beta=0.85, v_threshold=-0.05)),
        HebbianParams(eta=0.5, eligibility_tau=0.1, learn_after=15),
    ),
}


def _problem(seed: int, t: int, n: int, d: int, h: int):
    """Input spikes, weights on a 1/64 grid (their sums are exact in any order, so the first
    steps' currents equal the torch path's bit for bit), membranes and targets."""
    g = np.random.default_rng(seed)
    x = (g.uniform(size=(t, n, d)) < 0.3).astype(np.float32)
    w = (np.round(g.normal(size=(h, d)) * 16) / 64).astype(np.float32)
    v = (np.round(g.normal(size=(n, h)) * 8) / 64).astype(np.float32)
    y = (g.uniform(size=n) < 0.5).astype(np.float32)
    return x, w, v, y


def _emulate(
    emulated, x, w, v, y, dyn: Dynamics, spec: HebbianParams | None, blocks: int, rest_steps: int, threads: int = 1,
    e0=None,
):  # fmt: skip
    """Run ``sjff_present`` in the host emulation with the arguments ``cupy_present`` builds
    for a GPU with ``blocks`` multiprocessors (``threads`` per block), on input-major weights
    as the trainer keeps them (the eligibility starts at ``e0``, or 0)."""
    wt = input_major(torch.from_numpy(w.copy()))
    et = input_major(torch.zeros_like(wt) if e0 is None else torch.from_numpy(e0.copy()))
    vt = torch.from_numpy(v.copy())
    learn = None
    if spec is not None:
        e = et if spec.eligibility_tau is not None else None
        learn = (torch.from_numpy(y), e, dyn.probability, dyn.goodness, spec.learn_after + 1, spec.eligibility_tau,
                 spec.eta)  # fmt: skip
    launch = cupy_present.present_launch(torch.from_numpy(x), wt, vt, dyn.neuron, dyn.trace, learn, rest_steps, blocks)
    assert launch.blocks > 1
    run_emulated(emulated, launch, threads)
    assert launch.v is vt
    return launch.spikes.numpy(), launch.trace.numpy(), vt.numpy(), wt.numpy(), et.numpy()


def _torch_path(x, w, v, y, dyn: Dynamics, spec: HebbianParams | None, rest_steps: int, e0=None):
    wt = input_major(torch.from_numpy(w.copy()))
    et = input_major(torch.zeros_like(wt) if e0 is None else torch.from_numpy(e0.copy()))
    vt = torch.from_numpy(v.copy())
    learn = None if spec is None else (torch.from_numpy(y), spec, spec.eta, et)
    with per_step_path():  # the reference shares no compiled code with the kernel
        spikes, trace = run_layer(torch.from_numpy(x), wt, vt, dyn, "torch", learn, rest_steps=rest_steps)
    return spikes.numpy(), trace.numpy(), vt.numpy(), wt.numpy(), et.numpy()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("blocks,threads", [(3, 1), (20, 1), (3, 4), (20, 3)])
def test_presentation_kernel_logic_equals_torch_path(emulated, case, blocks, threads, monkeypatch):
    dyn, spec = CASES[case]
    # 40 samples: two words of sample bits; few staged sums, so that 20 blocks take 3 chunks
    monkeypatch.setattr(cupy_present, "PRESENT_STAGED", 2 * 40 * 8)
    assert cupy_present.present_chunk(40, cupy_present.present_blocks(40, 20)[1]) == 8
    x, w, v, y = _problem(11, 23, 40, 70, 40)  # 70 inputs: two full bit words and a partial one
    got = _emulate(emulated, x, w, v, y, dyn, spec, blocks, rest_steps=20, threads=threads)
    want = _torch_path(x, w, v, y, dyn, spec, rest_steps=20)
    spikes, trace, v_out, w_out, e_out = got
    assert spikes.sum() > 0 and not np.array_equal(w_out, w)  # the case is not trivial
    np.testing.assert_array_equal(spikes, want[0])
    np.testing.assert_allclose(trace, want[1], rtol=0, atol=0)
    np.testing.assert_allclose(v_out, want[2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w_out, want[3], rtol=1e-5, atol=1e-5)
    if spec.eligibility_tau is not None:
        np.testing.assert_allclose(e_out, want[4], rtol=1e-5, atol=1e-6)


def test_presentation_kernel_floors_the_eligibility_as_the_torch_path(emulated):
    """Entries of an input that does not fire only decay (a zero delta, in both paths): one
    that falls below ELIGIBILITY_FLOOR becomes +0.0 at the same step in the kernel and in the
    torch path, one that stays above it decays bit for bit alike."""
    dyn, spec = CASES["paper"]  # tau 0.1: each learning step keeps 0.9
    x, w, v, y = _problem(8, 23, 6, 40, 12)
    x[:, :, :2] = 0.0  # inputs 0 and 1 never fire
    e0 = np.zeros((12, 40), np.float32)
    e0[:6, 0], e0[6:, 0] = ELIGIBILITY_FLOOR * 1.5, -ELIGIBILITY_FLOOR * 1.5  # 0 after 4 steps
    e0[:, 1] = 1e-20  # stays above the floor
    got = _emulate(emulated, x, w, v, y, dyn, spec, 3, rest_steps=20, e0=e0)[4]
    want = _torch_path(x, w, v, y, dyn, spec, rest_steps=20, e0=e0)[4]
    assert not got[:, 0].any() and not np.signbit(got[:, 0]).any()
    np.testing.assert_array_equal(got[:, :2], want[:, :2])
    assert (got[:, 1] > 0).all() and (got[:, 1] < 1e-20).all()


def test_presentation_kernel_without_learning(emulated):
    """Inference: weights untouched, spikes and membranes as the torch path's."""
    x, w, v, y = _problem(3, 23, 5, 40, 9)
    spikes, trace, v_out, w_out, _ = _emulate(emulated, x, w, v, y, PAPER, None, 4, rest_steps=20)
    want = _torch_path(x, w, v, y, PAPER, None, rest_steps=20)
    np.testing.assert_array_equal(w_out, w)
    np.testing.assert_array_equal(spikes, want[0])  # weights on the 1/64 grid: exact currents
    np.testing.assert_array_equal(trace, want[1])
    np.testing.assert_array_equal(v_out, want[2])
    # room for the weights, membranes and traces alone (the emulation checks that the kernel
    # stays in it); a learning launch also gets the Hebbian coefficients and goodness sums
    launch = cupy_present.present_launch(
        torch.from_numpy(x), input_major(torch.from_numpy(w.copy())), torch.from_numpy(v), PAPER.neuron, PAPER.trace,
        None, 20, 4,
    )  # fmt: skip
    t, n, d, h, hb = (int(a) for a in launch.args[11:16])
    assert launch.shared_bytes == 4 * (hb * d + 2 * n * hb)
    assert launch.shared_bytes < 4 * cupy_present.present_shared_floats(n, d, hb, False, 1)


def test_presentation_learns_the_same_over_many_presentations(emulated):
    """Carried membranes and weights over ten batches stay with the torch path."""
    dyn, spec = CASES["paper"]
    x, w, v, y = _problem(5, 23, 8, 50, 10)
    g = np.random.default_rng(6)
    w_k, v_k, w_t, v_t = w, v, w, v
    for _ in range(10):
        x = (g.uniform(size=x.shape) < 0.3).astype(np.float32)
        y = (g.uniform(size=y.shape) < 0.5).astype(np.float32)
        s_k, _, v_k, w_k, _ = _emulate(emulated, x, w_k, v_k, y, dyn, spec, 3, rest_steps=20)
        s_t, _, v_t, w_t, _ = _torch_path(x, w_t, v_t, y, dyn, spec, rest_steps=20)
        w_k, w_t = np.ascontiguousarray(w_k), np.ascontiguousarray(w_t)
        assert (s_k != s_t).mean() < 1e-3  # a spike may flip where a membrane sits on the threshold
    np.testing.assert_allclose(w_k, w_t, rtol=1e-4, atol=1e-4)


def test_present_supported_refuses_what_it_cannot_run():
    p = NeuronParams(form="beta", beta=0.85, v_threshold=0.001)
    x, w, v, e = torch.zeros(5, 2, 4), torch.zeros(3, 4), torch.zeros(2, 3), torch.zeros(3, 4)
    assert not kernels.present_fits("torch", x, w, v, e, p, "sum_squares", False)
    assert not kernels.present_fits("cupy", x, w, v, e, p, "sum_squares", False)  # CPU tensors
    assert not cupy_present.tensors_fit(x, w, v, e)
    with pytest.raises(TypeError, match="float32 tensors on one CUDA device"):
        cupy_present.present(x, w, v, p, TraceParams("count", scale=10.0))
    # odd width under a split probability: the per-step path raises its own error
    assert not cupy_present.present_supported(p, "sum_squares", 2, 4, 3, True, 0, split=True)
    blocks = cupy_present.present_blocks(200, 132)
    assert blocks == (2, 100)
    # the paper layer fits one block's shared memory; a 10k-input one with 4 rows per block does not
    chunk = cupy_present.present_chunk(50, 100)
    assert 4 * cupy_present.present_shared_floats(50, 884, 2, True, chunk) <= cupy_present.PRESENT_SHARED_LIMIT
    assert 4 * cupy_present.present_shared_floats(50, 10000, 4, True, chunk) > cupy_present.PRESENT_SHARED_LIMIT


gpu = pytest.mark.skipif(not (torch.cuda.is_available() and cupy_backend.available()), reason="needs CUDA and CuPy")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_presentation_kernel_equals_torch_on_gpu(case):
    """On the GPU: one launch against the per-step torch path on the same device."""
    dyn, spec = CASES[case]
    x, w, v, y = _problem(11, 23, 50, 884, 200)
    xs, ys = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    outs = []
    for backend in ("torch", "cupy"):
        wt = input_major(torch.from_numpy(w.copy()).cuda())
        et = input_major(torch.zeros_like(wt))
        vt = torch.from_numpy(v.copy()).cuda()
        fits = kernels.present_fits(backend, xs, wt, vt, et, dyn.neuron, dyn.goodness, dyn.probability.split)
        assert fits == (backend == "cupy")
        s, tr = run_layer(xs, wt, vt, dyn, backend, (ys, spec, spec.eta, et), rest_steps=20)
        outs.append((s, tr, vt, wt, et))
    torch.cuda.synchronize()
    (s_a, tr_a, v_a, w_a, e_a), (s_b, tr_b, v_b, w_b, e_b) = outs
    # the sums run in another order than cuBLAS: a membrane that sits on the threshold may
    # fire on one path only (none did on the H200 of docs/gpu.md), so allow a rare flip
    assert (s_a != s_b).float().mean() < 1e-3 and s_a.sum() > 0
    if torch.equal(s_a, s_b):
        assert torch.equal(tr_a, tr_b)
        torch.testing.assert_close(v_a, v_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w_a, w_b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(e_a, e_b, rtol=1e-4, atol=1e-5)
