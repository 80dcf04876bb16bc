"""Hebbian (autograd-free) training of an analog FF network.

Each layer updates with dW = eta * M * c * l x^T, the exact FF gradient for ReLU layers
with a quadratic goodness (the theorem in ``hebbian.py``), optionally filtered through
the eligibility trace like the spiking rule.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spikingjelly_ff.functional.hebbian import DeltaReduce, ff_hebbian_delta
from spikingjelly_ff.functional.params import HebbianParams
from spikingjelly_ff.kernels import apply_delta
from spikingjelly_ff.nn.layers import length_normalize
from spikingjelly_ff.nn.models import AnalogFFNet

__all__ = ["AnalogHebbian"]


class AnalogHebbian:
    """Layer-local Hebbian updates for every layer of an :class:`AnalogFFNet`."""

    def __init__(self, net: AnalogFFNet, hcfg: HebbianParams, reduce: DeltaReduce | None = None) -> None:
        """``reduce``: data parallel, combines every layer's delta across ranks (``ff_hebbian_delta``)."""
        if any(layer.synapse.bias is not None for layer in net.layers):
            raise ValueError("Hebbian training needs bias-free layers (model.bias=false)")
        hcfg.require_step("an analog net (one delta per batch)")
        self.net = net
        self.cfg = hcfg
        self.eligibility = [torch.zeros_like(layer.weight) for layer in net.layers]
        self.reduce = reduce

    @torch.no_grad()
    def step(self, x: Tensor, y: Tensor, factor: float = 1.0) -> list[Tensor]:
        """Update every layer on embedded inputs ``[N, D']``; return activities before the update."""
        acts = []
        inp = x
        eta = self.cfg.eta * factor
        for layer, e in zip(self.net.layers, self.eligibility):
            pre = length_normalize(inp) if layer.normalize_input else inp
            post = torch.relu(pre @ layer.weight.T)
            dw = ff_hebbian_delta(self.net.probability, post, pre, y, self.net.goodness_kind, self.reduce)
            apply_delta(layer.weight.data, dw, eta, self.cfg.eligibility_tau, e)
            acts.append(post)
            inp = post
        return acts
