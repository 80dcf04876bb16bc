"""The compiled neuron loop (``kernels.numba_neuron``) against the op loops it replaces on
the CPU (``torch_loop``, ``numpy_loop`` with ``SJFF_COMPILED=0``): the same spikes, membranes,
traces and per-step traces bit for bit, for every neuron form, fire rule and trace kind; and
both loops hand their float32 layers to it when numba is in use."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from spikingjelly_ff.functional.params import NeuronParams, TraceParams
from spikingjelly_ff.kernels import numba_neuron, numba_online, numpy_loop, torch_loop

# CI sets SJFF_REQUIRE_NUMBA=1 and test_numba_online fails there without numba
REQUIRE_NUMBA = os.environ.get("SJFF_REQUIRE_NUMBA") == "1"
pytestmark = pytest.mark.skipif(
    not numba_online.AVAILABLE and not REQUIRE_NUMBA, reason="numba not installed (extra [fast])"
)

NEURONS = {
    "beta": NeuronParams(beta=0.85, v_threshold=0.001),
    "beta-ge-reset": NeuronParams(beta=0.6, v_threshold=0.4, v_reset=-0.2, fire=">="),
    "lif": NeuronParams(form="lif", tau=3.0, v_threshold=0.5, v_reset=-0.1, fire=">="),
    "lif-decay-input": NeuronParams(form="lif", tau=2.0, decay_input=True, v_threshold=0.3),
    # soft reset (v_reset None): V - v_threshold after a spike
    "beta-soft": NeuronParams(beta=0.85, v_threshold=0.3, v_reset=None),
    "lif-soft": NeuronParams(form="lif", tau=2.5, decay_input=True, v_threshold=0.4, v_reset=None, fire=">="),
}
TRACES = {
    "count": TraceParams(kind="count", scale=3.0),
    "leaky": TraceParams(kind="leaky", decay=0.85),
    "hard": TraceParams(kind="hard", decay=0.7),
    "none": TraceParams(kind="none"),
}


def state(seed: int, p: NeuronParams, t: int = 12, n: int = 3, h: int = 257):
    """Currents ``[T, N, H]`` around the threshold (so that units fire, some on the threshold
    itself) and starting membranes and traces ``[N, H]``, float32."""
    rng = np.random.default_rng(seed)
    cur = rng.normal(0.5 * p.v_threshold, p.v_threshold, (t, n, h)).astype(np.float32)
    cur[0, 0, :4] = np.float32(p.v_threshold)  # from rest: v lands exactly on the threshold
    v = rng.normal(0.0, 0.2 * max(p.v_threshold, 0.01), (n, h)).astype(np.float32)
    tr = rng.random((n, h)).astype(np.float32)
    return cur, v, tr


def op_loops(cur, v, tr, p, tp, monkeypatch):
    """(spikes, per-step traces, v, trace) of the torch and numpy op loops, numba switched off."""
    monkeypatch.setenv("SJFF_COMPILED", "0")
    assert not numba_online.enabled()
    out = []
    vt, trt = torch.from_numpy(v.copy()), torch.from_numpy(tr.copy())
    s, q = torch_loop.neuron_forward(torch.from_numpy(cur), vt, trt, p, tp, trace_seq=True)
    out.append((s.numpy(), q.numpy(), vt.numpy(), trt.numpy()))
    vn, trn = v.copy(), tr.copy()
    s, q = numpy_loop.neuron_forward(cur, vn, trn, p, tp, trace_seq=True)
    out.append((s, q, vn, trn))
    monkeypatch.delenv("SJFF_COMPILED")
    return out


@pytest.mark.parametrize("trace", sorted(TRACES))
@pytest.mark.parametrize("neuron", sorted(NEURONS))
def test_compiled_loop_equals_the_op_loops_bit_for_bit(neuron, trace, monkeypatch):
    p, tp = NEURONS[neuron], TRACES[trace]
    cur, v, tr = state(3, p)
    vc, trc = v.copy(), tr.copy()
    spikes, seq = numba_neuron.neuron_forward(cur, vc, trc, p, tp, trace_seq=True)
    assert spikes.shape == seq.shape == cur.shape and spikes.dtype == np.float32
    fired = spikes.mean()
    assert 0.02 < fired < 0.98, f"the sample should make units fire and stay silent ({fired:.3f})"
    for loop, (s, q, vo, tro) in zip(("torch", "numpy"), op_loops(cur, v, tr, p, tp, monkeypatch)):
        for name, a, b in (("spikes", spikes, s), ("traces", seq, q), ("v", vc, vo), ("trace", trc, tro)):
            assert a.tobytes() == b.tobytes(), f"{name} differ from the {loop} loop's"


def test_without_trace_sequence_and_refused_states():
    p, tp = NEURONS["beta"], TRACES["leaky"]
    cur, v, tr = state(4, p)
    spikes, seq = numba_neuron.neuron_forward(cur, v, tr, p, tp)
    assert seq is None and spikes.shape == cur.shape
    with pytest.raises(ValueError, match="currents of 771 units per step for a state of 257 membranes"):
        numba_neuron.neuron_forward(cur, v[:1], tr[:1], p, tp)
    # a strided state would be updated through a copy and the updates lost: refused, unchanged
    wide = np.zeros((3, 2 * 257), np.float32)
    with pytest.raises(ValueError, match="v: the compiled neuron loop needs float32 C-contiguous arrays"):
        numba_neuron.neuron_forward(cur, wide[:, ::2], tr, p, tp)
    with pytest.raises(ValueError, match="current, trace: "):
        numba_neuron.neuron_forward(cur.astype(np.float64), v, tr.T.copy().T, p, tp)
    assert not wide.any()


def test_the_loops_hand_float32_layers_to_the_compiled_loop(monkeypatch):
    calls = []
    real = numba_neuron.neuron_forward

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(numba_neuron, "neuron_forward", counted)
    p, tp = NEURONS["lif"], TRACES["hard"]
    cur, v, tr = state(5, p)
    expected = op_loops(cur, v, tr, p, tp, monkeypatch)[0]
    vt, trt = torch.from_numpy(v.copy()), torch.from_numpy(tr.copy())
    s, q = torch_loop.neuron_forward(torch.from_numpy(cur), vt, trt, p, tp, trace_seq=True)
    assert calls == [cur.shape]
    assert s.numpy().tobytes() == expected[0].tobytes() and vt.numpy().tobytes() == expected[2].tobytes()
    numpy_loop.neuron_forward(cur, v.copy(), tr.copy(), p, tp)
    assert calls == [cur.shape, cur.shape]
    # what it does not take stays on the op loops: float64, k-WTA, a current that needs a gradient
    numpy_loop.neuron_forward(cur.astype(np.float64), v.astype(np.float64), tr.astype(np.float64), p, tp)
    kwta = NeuronParams(beta=0.85, v_threshold=0.001, kwta=5)
    torch_loop.neuron_forward(torch.from_numpy(cur), torch.from_numpy(v.copy()), torch.from_numpy(tr.copy()), kwta, tp)
    graph = torch.from_numpy(cur).requires_grad_()
    torch_loop.neuron_forward(graph, torch.from_numpy(v.copy()), torch.from_numpy(tr.copy()), p, tp)
    assert calls == [cur.shape, cur.shape]
