"""The straightforward per-step loop: SpikingJelly modules in single-step mode plus one
:class:`HebbianLearner` per layer, stepped once per time step.

It is the readable specification of spiking FF training and inference; the engine
(``engine.py``) must give the same spikes and weights, and the benchmarks report the
engine's speed against this loop.
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import functional
from torch import Tensor

from spikingjelly_ff.functional.params import HebbianParams
from spikingjelly_ff.learning.learners import HebbianLearner
from spikingjelly_ff.nn.models import SpikingFFNet

__all__ = ["ReferenceLoop"]


class ReferenceLoop:
    """Per-step training and scoring of a :class:`SpikingFFNet` (use as a context manager)."""

    def __init__(self, net: SpikingFFNet, hcfg: HebbianParams | None = None) -> None:
        self.net = net
        hcfg = hcfg or HebbianParams()
        hcfg.require_step("the per-step reference loop")
        functional.set_step_mode(net, "s")
        self.learners = [
            HebbianLearner(
                "s",
                layer.synapse,
                layer.neuron,
                net.probability,
                net.goodness_kind,
                net.trace_params,
                eta=hcfg.eta,
                eligibility_tau=hcfg.eligibility_tau,
                learn_after=hcfg.learn_after,
                backend="torch",
            )
            for layer in net.layers
        ]

    def close(self) -> None:
        for learner in self.learners:
            learner.close()
        functional.set_step_mode(self.net, "m")

    def __enter__(self) -> ReferenceLoop:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, x_t: Tensor) -> None:
        for layer in self.net.layers:
            x_t = layer(x_t)

    @torch.no_grad()
    def train_presentation(self, spikes: Tensor, y: Tensor, eta: float | None = None) -> Tensor:
        """Present ``[T, N, D']`` spikes, applying every learner after every step."""
        net = self.net
        net.begin_presentation(spikes.shape[1])
        for learner in self.learners:
            learner.reset()
            if eta is not None:
                learner.eta = eta
        y = y.to(spikes.dtype)
        for t in range(spikes.shape[0]):
            self._run(spikes[t])
            for learner in self.learners:
                learner.apply(y)
        acts = [layer.activity.clone() for layer in net.layers]
        net.end_presentation()
        return net.pn_logit(acts) > 0

    @torch.no_grad()
    def layer_traces(self, spikes: Tensor) -> list[Tensor]:
        """Present each label's spikes ``[C, T, N, D']`` in turn; traces ``[C, N, H]`` per layer."""
        net = self.net
        for learner in self.learners:
            learner.in_spike_monitor.disable()
            learner.out_spike_monitor.disable()
        out: list[list[Tensor]] = [[] for _ in net.layers]
        for c in range(spikes.shape[0]):
            net.begin_presentation(spikes.shape[2])
            for t in range(spikes.shape[1]):
                self._run(spikes[c, t])
            for i, layer in enumerate(net.layers):
                out[i].append(layer.activity.clone())
            net.end_presentation()
        for learner in self.learners:
            learner.in_spike_monitor.enable()
            learner.out_spike_monitor.enable()
        return [torch.stack(o) for o in out]

    def scores(self, spikes: Tensor) -> Tensor:
        """Summed layer scores ``[N, C]`` for each label's spikes ``[C, T, N, D']``."""
        traces = self.layer_traces(spikes)
        c, n, _ = traces[0].shape
        flat = [tr.reshape(c * n, -1) for tr in traces]
        return self.net.score_activities(flat).reshape(c, n).transpose(0, 1)
