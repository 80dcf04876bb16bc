"""The neuron loop of a whole layer in one compiled call (numba): conv feature maps, test batches.

``torch_loop`` and ``numpy_loop`` step a layer with about ten whole-tensor ops per time step;
on the CPU each op is a pass over memory plus a dispatch, which for the small maps of batch-1
conv training is most of the neuron's time (12 steps of a 20 x 24 x 24 map: about 230 us in
torch ops, 35 us here). Here every unit's T steps run in one call through the compiled step
of ``numba_online`` (dynamics.py's float32 arithmetic, each op rounded on its own), so
spikes, membranes and traces equal the op loops' bit for bit
(``tests/library/test_numba_neuron.py``). Both loops hand float32 CPU arrays here when
numba is in use (:func:`supported`); without it they run as before.
"""

from __future__ import annotations

import functools

import numpy as np

from spikingjelly_ff.functional.params import NeuronParams, TraceParams
from spikingjelly_ff.kernels import numba_online

__all__ = ["neuron_forward", "supported"]


def supported(p: NeuronParams, *arrays) -> bool:
    """Whether :func:`neuron_forward` runs this layer: numba in use, no k-WTA (a step that
    ranks the whole layer), and float32 C-contiguous ``arrays`` (numpy)."""
    return numba_online.enabled() and p.kwta is None and all(_fits(a) for a in arrays)


def _fits(a: np.ndarray) -> bool:
    return a.dtype == np.float32 and a.flags.c_contiguous


def neuron_forward(
    current: np.ndarray, v: np.ndarray, trace: np.ndarray, p: NeuronParams, tp: TraceParams, trace_seq: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """T steps of charge/fire/reset/trace of every unit. ``current`` ``[T, N, H]``; ``v`` and
    ``trace`` ``[N, H]`` are updated in place (float32, C-contiguous: :func:`supported`).
    Returns float32 spikes ``[T, N, H]`` and, with ``trace_seq``, the trace after every step
    ``[T, N, H]`` (else ``None``)."""
    bad = [name for name, a in (("current", current), ("v", v), ("trace", trace)) if not _fits(a)]
    if bad:  # a reshaped copy of v or trace would take the updates and drop them
        raise ValueError(f"{', '.join(bad)}: the compiled neuron loop needs float32 C-contiguous arrays")
    steps = current.shape[0]
    cur = current.reshape(steps, -1)
    units = cur.shape[1]
    if v.size != units or trace.size != units:
        raise ValueError(f"currents of {units} units per step for a state of {v.size} membranes, {trace.size} traces")
    spikes = np.empty_like(cur)
    seq = np.empty_like(cur) if trace_seq else np.empty((0, units), np.float32)
    form, decay_input, fire_ge, trace_kind = numba_online.step_switches(p, tp)
    numba_online.neuron_loop(
        cur, v.reshape(-1), trace.reshape(-1), spikes, seq, form, decay_input, fire_ge, trace_kind, _constants(p, tp)
    )
    return spikes.reshape(current.shape), (seq.reshape(current.shape) if trace_seq else None)


@functools.lru_cache(maxsize=64)
def _constants(p: NeuronParams, tp: TraceParams) -> np.ndarray:
    return numba_online.neuron_constants(p, tp)  # frozen dataclasses: a few per run; read only
