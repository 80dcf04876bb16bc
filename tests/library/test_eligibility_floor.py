"""The eligibility floor (``hebbian.ELIGIBILITY_FLOOR``): every path that updates the trace
sets the entries below it to +0.0 alike, so a trace that stops receiving deltas decays to 0
without passing through subnormal floats (slow on x86 CPUs), and the paths stay equal."""

from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest
import torch
from conftest import per_step_path

from spikingjelly_ff import kernels
from spikingjelly_ff.functional.hebbian import ELIGIBILITY_FLOOR, eligibility_step
from spikingjelly_ff.functional.params import HebbianParams, NeuronParams, TraceParams
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.kernels import numba_online, numpy_loop
from spikingjelly_ff.simulation import Dynamics, input_major, online_layer, run_layer

TINY = np.finfo(np.float32).tiny  # the smallest normal float32
KEEP, TAU, ETA = 0.9, 0.1, 0.3
# the numba paths run where numba is installed, and where CI requires it (then a missing numba fails)
NUMBA = numba_online.AVAILABLE or os.environ.get("SJFF_REQUIRE_NUMBA") == "1"


def _subnormal(a) -> bool:
    a = np.asarray(a)
    return bool(((a != 0) & (np.abs(a) < TINY)).any())


def _trace_and_delta():
    """e ``[H, D]`` around the floor (each sign), far above it, subnormal already, 0; dW 0 in
    the columns that must only decay, small elsewhere."""
    g = np.random.default_rng(3)
    e = g.normal(0.0, 1e-3, (6, 8)).astype(np.float32)
    e[:, 0] = ELIGIBILITY_FLOOR * np.float32([1.05, -1.05, 1.2, -1.2, 0.5, 2.0])  # 0.9 x: 0, 0, kept ...
    e[:, 1] = np.float32(1e-39)  # subnormal: 0 after one step
    e[:, 2] = 0.0
    dw = g.normal(0.0, 1e-2, (6, 8)).astype(np.float32)
    dw[:, :3] = 0.0
    w = g.normal(0.0, 0.5, (6, 8)).astype(np.float32)
    return e, w, dw


def _expected_column0():
    decayed = np.float32(ELIGIBILITY_FLOOR) * np.float32([1.05, -1.05, 1.2, -1.2, 0.5, 2.0]) * np.float32(KEEP)
    return np.where(np.abs(decayed) < ELIGIBILITY_FLOOR, np.float32(0.0), decayed)


def _torch_apply(e, w, dw, compiled: bool, monkeypatch):
    """``apply_delta`` on the trainer's layouts (W, e and the delta input-major), where the
    compiled pass runs when ``compiled``, the tensor ops otherwise."""
    monkeypatch.setenv("SJFF_COMPILED", "1" if compiled else "0")
    calls = []
    real = numba_online.eligibility_apply
    monkeypatch.setattr(numba_online, "eligibility_apply", lambda *a: calls.append(1) or real(*a))
    et, wt, dwt = (input_major(torch.from_numpy(a.copy())) for a in (e, w, dw))
    kernels.apply_delta(wt, dwt, ETA, TAU, et)
    assert calls == ([1] if compiled else []), "the compiled pass ran where it should not, or not where it should"
    monkeypatch.setattr(numba_online, "eligibility_apply", real)
    return et.numpy(), wt.numpy()


def test_every_cpu_path_floors_alike(monkeypatch):
    e, w, dw = _trace_and_delta()
    e_np, w_np = e.copy(), w.copy()
    numpy_loop.eligibility_apply(e_np, w_np, dw, TAU, ETA)
    results = {"numpy": (e_np, w_np), "torch ops": _torch_apply(e, w, dw, False, monkeypatch)}
    if NUMBA:
        results["numba"] = _torch_apply(e, w, dw, True, monkeypatch)
    for name, (e_out, w_out) in results.items():
        np.testing.assert_array_equal(e_out[:, 0], _expected_column0(), err_msg=name)
        assert not e_out[:, 1].any() and not np.signbit(e_out[e_out == 0]).any(), name
        assert not _subnormal(e_out) and (e_out[:, 3:] != 0).all(), name
        np.testing.assert_array_equal(e_out, e_np, err_msg=name)
        np.testing.assert_array_equal(w_out, w_np, err_msg=name)
    # the pure function agrees (numpy and torch)
    for step in (eligibility_step(e, dw, TAU), eligibility_step(torch.from_numpy(e), torch.from_numpy(dw), TAU)):
        np.testing.assert_array_equal(np.asarray(step), e_np)


def test_no_entry_of_the_numba_path_is_missed(monkeypatch):
    """The compiled pass runs where the layout allows; its result is the tensor ops'."""
    if not NUMBA:
        pytest.skip("numba not installed (extra [fast])")
    e, w, dw = _trace_and_delta()
    views = [a.copy() for a in (e, w, dw)]
    assert numba_online.eligibility_apply(*views, TAU, ETA)
    want = _torch_apply(e, w, dw, False, monkeypatch)
    np.testing.assert_array_equal(views[0], want[0])
    np.testing.assert_array_equal(views[1], want[1])


def test_a_trace_that_gets_no_deltas_reaches_zero_without_subnormals(monkeypatch):
    e = np.float32(1e-3) * np.ones((3, 5), np.float32)
    w, dw = np.zeros_like(e), np.zeros_like(e)
    for compiled in (False, True):
        monkeypatch.setenv("SJFF_COMPILED", "1" if compiled else "0")
        et, wt = input_major(torch.from_numpy(e.copy())), input_major(torch.from_numpy(w.copy()))
        steps = 0
        while et.any():
            kernels.apply_delta(wt, torch.from_numpy(dw), ETA, TAU, et)
            assert not _subnormal(et.numpy())
            steps += 1
        # 1e-3 * 0.9^n < 2^-100 first at n = 593: each step rounds, so allow a step either way
        assert abs(steps - 593) <= 1, steps


def test_online_paths_floor_at_the_end_of_a_presentation():
    """Batch-1 learning folds the decay of a presentation into one write-back: the entries of
    inputs that stay silent and decay below the floor are 0 there, as in the per-step path."""
    d = Dynamics(NeuronParams(beta=0.85, v_threshold=0.001), TraceParams("count", scale=10.0), Probability("symmetric"))
    spec = HebbianParams(eta=0.3, eligibility_tau=TAU, learn_after=15)  # 7 learning steps: x 0.9^7
    rng = np.random.default_rng(5)
    x = (rng.random((23, 1, 30)) < 0.2).astype(np.float32)
    x[:, :, :2] = 0.0  # silent inputs
    results = []
    for how in ("compiled", "numpy", "reference"):
        w = input_major(np.random.default_rng(6).normal(0, 0.4, (10, 30)).astype(np.float32))
        e = input_major(np.random.default_rng(7).normal(0, 1e-2, (10, 30)).astype(np.float32))
        e[:, 0] = ELIGIBILITY_FLOOR * 2.0  # 2 * 0.9^7 = 0.96: below the floor at the end
        e[:, 1] = ELIGIBILITY_FLOOR * 2.5  # 1.2: kept
        v = np.zeros((1, 10), np.float32)
        if how == "reference":
            with per_step_path():
                run_layer(x, w, v, d, learn=(np.float32([1.0]), spec, 0.3, e))
        elif how == "compiled" and not NUMBA:
            continue
        else:
            online_layer(x, w, v, d, 1.0, spec, 0.3, e, compiled=how == "compiled")
        results.append((how, e, w))
    for how, e, w in results:
        assert not e[:, 0].any() and (e[:, 1] > ELIGIBILITY_FLOOR).all(), how
        assert not _subnormal(e), how
        np.testing.assert_allclose(e, results[-1][1], rtol=1e-4, atol=1e-7, err_msg=how)
        np.testing.assert_allclose(w, results[-1][2], rtol=1e-5, atol=1e-6, err_msg=how)


def test_the_cuda_eligibility_kernel_floors_alike(emulated, monkeypatch):
    e, w, dw = _trace_and_delta()
    want = _torch_apply(e, w, dw, False, monkeypatch)
    e_k, w_k = e.copy(), w.copy()
    ptr = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # noqa: E731
    floats = (ctypes.c_float(v) for v in (KEEP, TAU, ETA, ELIGIBILITY_FLOOR))
    emulated.emu_eligibility_apply(ptr(e_k), ptr(w_k), ptr(dw), ctypes.c_longlong(e.size), *floats)
    np.testing.assert_array_equal(e_k, want[0])
    np.testing.assert_array_equal(w_k, want[1])


def test_online_paths_floor_the_inputs_that_fired_too():
    """A layer that does not fire learns zero deltas, so the entries of the inputs that fired
    during learning (written back with their deltas) only decay, and go below the floor too."""
    d = Dynamics(NeuronParams(beta=0.85, v_threshold=0.001), TraceParams("count", scale=10.0), Probability("symmetric"))
    spec = HebbianParams(eta=0.3, eligibility_tau=TAU, learn_after=15)
    x = (np.random.default_rng(8).random((23, 1, 30)) < 0.5).astype(np.float32)
    for how in ("compiled", "numpy", "reference"):
        if how == "compiled" and not NUMBA:
            continue
        w = input_major(-np.ones((10, 30), np.float32))  # never fires
        e = input_major(np.full((10, 30), ELIGIBILITY_FLOOR * 2.0, np.float32))
        v = np.zeros((1, 10), np.float32)
        if how == "reference":
            with per_step_path():
                spikes, _ = run_layer(x, w, v, d, learn=(np.float32([1.0]), spec, 0.3, e))
        else:
            spikes, _ = online_layer(x, w, v, d, 1.0, spec, 0.3, e, compiled=how == "compiled")
        assert not spikes.any() and x[16:].any(axis=(0, 1)).sum() > 20
        assert not e.any() and not np.signbit(e).any(), how


def test_a_nan_stays_nan_in_every_path(monkeypatch):
    """The floor tests |e| < floor, false for NaN: a diverging run is not masked on any path."""
    e, w, dw = _trace_and_delta()
    dw[0, 5] = np.nan
    e_np, w_np = e.copy(), w.copy()
    numpy_loop.eligibility_apply(e_np, w_np, dw, TAU, ETA)
    assert np.isnan(e_np[0, 5]) and np.isnan(w_np[0, 5])
    for compiled in (False, True) if NUMBA else (False,):
        e_t, w_t = _torch_apply(e, w, dw, compiled, monkeypatch)
        np.testing.assert_array_equal(e_t, e_np)  # NaNs compare equal here
        np.testing.assert_array_equal(w_t, w_np)
