"""Fast simulation of spiking FF layers, written once for torch tensors and numpy arrays.

The torch engine (``learning.engine``) and the torch-free runtime (``runtime``) both run on
these functions, so training, export and the edge device share one implementation. Results
equal the per-step module loop (``reference.py``): identical spikes, weights equal up to
float rounding. What makes it fast:

* the currents of all steps that share one weight matrix come from one GEMM;
* the neuron recurrence runs as a few in-place ops per step (a CuPy kernel on GPU);
* scoring all C labels computes the label-independent part of layer 1's current once;
* batch-1 learning (``online_layer``) never touches the whole weight matrix inside a
  sample: the per-step updates are kept as a low-rank correction and applied once at the
  end of the sample.

Shapes: spikes ``[T, N, D]``; weights ``[H, D]``; membrane/trace ``[N, H]``. The conv layers
(``conv``: image spikes ``[T, N, I, H, W]``, label weights per unit) are built on the same
neuron loop and Hebbian rule.
"""

from __future__ import annotations

from spikingjelly_ff.simulation.conv import (
    ConvLayout,
    conv_current,
    conv_score,
    label_current,
    present_conv,
    run_conv_layer,
    score_conv_labels,
)
from spikingjelly_ff.simulation.encoding import (
    SampleDraws,
    SpikeIndex,
    bernoulli_draws,
    bernoulli_spikes,
    draws_at,
    encode_spikes,
    regular_spikes,
)
from spikingjelly_ff.simulation.layer import (
    Dynamics,
    batch_compiles,
    input_major,
    learns_online,
    neuron_forward,
    rest,
    run_layer,
)
from spikingjelly_ff.simulation.online import online_layer, scalar_logit
from spikingjelly_ff.simulation.scoring import (
    label_currents,
    label_spikes,
    score_labels,
    score_labels_present,
    spike_currents,
)

__all__ = [
    "ConvLayout",
    "Dynamics",
    "SampleDraws",
    "SpikeIndex",
    "batch_compiles",
    "bernoulli_draws",
    "bernoulli_spikes",
    "conv_current",
    "conv_score",
    "draws_at",
    "encode_spikes",
    "input_major",
    "label_current",
    "label_currents",
    "label_spikes",
    "learns_online",
    "neuron_forward",
    "online_layer",
    "present_conv",
    "regular_spikes",
    "rest",
    "run_conv_layer",
    "run_layer",
    "scalar_logit",
    "score_conv_labels",
    "score_labels",
    "score_labels_present",
    "spike_currents",
]
