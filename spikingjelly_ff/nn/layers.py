"""FF layers built from SpikingJelly parts.

``FFLinear``: analog layer l = ReLU(W x_hat), with x_hat the input, optionally
length-normalised so that a layer cannot read the previous layer's goodness
(``functional.analog.analog_layer``, shared with the torch-free runtime).
``SpikingFFLayer``: ``layer.Linear`` synapse followed by an :class:`FFLIFNode`.

Both are ``StepModule``s: ``functional.set_step_mode`` switches them between ``'s'``
(``[N, D]``) and ``'m'`` (``[T, N, D]``).
"""

from __future__ import annotations

from spikingjelly.activation_based import base, layer
from torch import Tensor, nn

from spikingjelly_ff.functional.analog import analog_layer, length_normalize
from spikingjelly_ff.nn.neuron import FFLIFNode

__all__ = ["FFLinear", "SpikingFFLayer", "length_normalize"]


class FFLinear(nn.Module, base.StepModule):
    """Analog FF layer: ``[..., D] -> [..., H]``; stateless, so both step modes agree."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        normalize_input: bool = False,
        step_mode: str = "s",
    ) -> None:
        super().__init__()
        self.synapse = layer.Linear(in_features, out_features, bias=bias, step_mode=step_mode)
        self.act = nn.ReLU()
        self.normalize_input = normalize_input
        self.step_mode = step_mode

    @property
    def weight(self) -> nn.Parameter:
        return self.synapse.weight

    def forward(self, x: Tensor) -> Tensor:
        return analog_layer(x, normalize_input=self.normalize_input, synapse=self.synapse, act=self.act)


class SpikingFFLayer(nn.Module, base.StepModule):
    """Spiking FF layer: input spikes ``[.., D]`` -> output spikes ``[.., H]``; the
    neuron's ``trace`` memory holds the activity l used for goodness and learning."""

    def __init__(self, in_features: int, out_features: int, *args, step_mode: str = "s", **kwargs) -> None:
        """``args``, ``kwargs``: the neuron's, those of :class:`FFLIFNode` (``neuron``,
        ``trace``, ``backend``)."""
        super().__init__()
        self.synapse = layer.Linear(in_features, out_features, bias=False, step_mode=step_mode)
        # Input-major storage (weight.T contiguous): on-line learning updates the rows of the
        # inputs that spiked, and a spike-driven current sums those same rows.
        self.synapse.weight = nn.Parameter(self.synapse.weight.detach().t().contiguous().t())
        self.neuron = FFLIFNode(*args, step_mode=step_mode, **kwargs)
        self.step_mode = step_mode

    @property
    def weight(self) -> nn.Parameter:
        return self.synapse.weight

    @property
    def activity(self) -> Tensor:
        """The post-synaptic trace l, ``[N, H]``."""
        tr = self.neuron.trace
        if not isinstance(tr, Tensor):
            raise RuntimeError("the layer has not run since its last reset")
        return tr

    def forward(self, x: Tensor) -> Tensor:
        return self.neuron(self.synapse(x))
