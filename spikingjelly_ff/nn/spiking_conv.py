"""Spiking convolutional FF network (``SpikingConvFFNet``), learned by the Hebbian conv rule.

An image ``[N, H * W]`` spikes as a map ``[T, N, 1, H, W]`` (rate ``gain * pixel`` per step);
the candidate label spikes as its code ``[T, N, L]`` (the paper's 100-bit pattern or a
one-hot, rate ``gain * code``) and reaches *every* unit of *every* layer through that layer's
label weights B ``[L, C, OH, OW]`` (one per unit and label position, as a dense layer's label
inputs have their own weights), so no label pixel has to be written into the image. Each layer
is a :class:`SpikingFFConv2d`: conv synapse plus label current, our multi-step neuron on the
flattened map, a post-synaptic trace per unit, optional pooling of the spikes for the next
layer. Goodness, scores and the summed log-odds come from :class:`ConvScores` on the trace
maps, over the whole map, per location or per channel group. Membranes start every presentation from rest.

The presentation and learning loop (fast, no module hooks) is ``learning.conv_engine``; the
module graph (``forward``) serves :class:`~spikingjelly_ff.learning.learners.HebbianLearner`
and checks the engine.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spikingjelly_ff.functional.conv import goodness_groups
from spikingjelly_ff.functional.labels import spike_rates
from spikingjelly_ff.functional.params import EncoderParams, NeuronParams, TraceParams
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.functional.readout import map_latent, readout_grid
from spikingjelly_ff.functional.views import check_views
from spikingjelly_ff.nn.conv import SpikingFFConv2d
from spikingjelly_ff.nn.conv_models import ConvScores, ConvSpec
from spikingjelly_ff.nn.embedding import LabelEmbedding
from spikingjelly_ff.nn.models import FFNet, SpikingFFNet

__all__ = ["SpikingConvFFNet"]


class SpikingConvFFNet(ConvScores, FFNet):
    """Stack of :class:`SpikingFFConv2d` layers with label weights; ``kind`` "spiking".

    ``widths`` are the channels; activities are trace maps ``[N, C_l, OH_l, OW_l]``."""

    kind = "spiking"

    def __init__(
        self,
        in_features: int,
        conv: list[ConvSpec],
        embedding: LabelEmbedding,
        probability: Probability,
        goodness_kind: str = "sum_squares",
        score: str = "probability",
        score_layers: list[int] | None = None,
        num_classes: int = 10,
        *,
        neuron: NeuronParams,
        trace: TraceParams,
        encoder: EncoderParams,
        over: str = "map",
        shift_views: int = 0,
        image_shape: tuple[int, int] | None = None,
        backend: str = "torch",
    ) -> None:
        """``shift_views``: the scorer sums the scores of the image and of its copies moved
        1..``shift_views`` pixels down, up, right and left (``functional.views``)."""
        goodness_groups(over, [c.channels for c in conv], probability.split)  # a clear error here
        if not conv:
            raise ValueError("a conv FF net needs at least one conv layer")
        if encoder.carry_membrane:
            raise ValueError("a spiking conv net starts every presentation from rest: set encoder.carry_membrane=false")
        FFNet.__init__(
            self, in_features, [c.channels for c in conv], embedding, probability, goodness_kind, score,
            score_layers, num_classes,
        )  # fmt: skip
        self.over = over
        self._check_competitive(num_classes)
        self.image_shape = image_shape
        check_views(shift_views, self._hw())
        self.shift_views = shift_views
        self.specs = list(conv)
        self.neuron_params = neuron
        self.trace_params = trace
        self.encoder = encoder
        self.backend = backend
        self.readout_grid: int | None = None  # set with the readout (attach_readout)
        width = 0 if probability.competitive else embedding.label_code.width  # competitive: no label input
        chans = [1, *self.widths]
        self.layers = nn.ModuleList(
            SpikingFFConv2d(
                chans[i], spec.channels, spec.kernel, neuron, trace, backend=backend, stride=spec.stride,
                padding=spec.padding, pool=spec.pool, pool_size=spec.pool_size, step_mode="m",
                label_maps=(width, *shape[1:]),
            )
            for i, (spec, shape) in enumerate(zip(conv, self.map_shapes()))
        )  # fmt: skip

    @property
    def label_width(self) -> int:
        """Label positions L of the code (0 for a competitive net, which sees no label)."""
        return self.layers[0].label_bias.shape[0]

    # the same neuron, trace and backend settings as the dense spiking net: one definition
    dynamics = SpikingFFNet.dynamics
    set_backend = SpikingFFNet.set_backend

    def image_rates(self, x: Tensor) -> Tensor:
        """Spike probabilities of images ``[N, H * W]`` as maps ``[N, 1, H, W]``."""
        return spike_rates(x, self.encoder.gain).reshape(x.shape[0], 1, *self._hw())

    def label_rates(self, labels: Tensor) -> Tensor:
        """Spike probabilities of the label code of ``labels`` ``[N]``, ``[N, L]``."""
        if self.competitive:
            raise TypeError("a competitive net sees no label: its label spikes are no_label_spikes()")
        return spike_rates(self.embedding.code(labels), self.encoder.gain)

    def no_label_spikes(self, images: Tensor) -> Tensor:
        """The label input of a competitive net for image spikes ``[T, N, ...]``: ``[T, N, 0]``
        (no label, no draws)."""
        return images.new_zeros(images.shape[0], images.shape[1], 0)

    # -- the linear readout (train.readout): a competitive net's trace maps, averaged on a grid --

    def latent(self, activities: list[Tensor], layers: list[int] | None = None) -> Tensor:
        """The readout's input ``[N, sum_l C_l * g * g]``: each of ``layers``' (default the
        readout's) trace maps averaged over a g x g grid of windows, g the readout's grid."""
        layers = self.readout_layers if layers is None else layers
        return map_latent(activities, layers, readout_grid(self.map_shapes(), layers, self.readout_grid))

    def attach_readout(self, layers: list[int], grid: int | None = None) -> nn.Linear:
        """A fresh readout on ``layers``' trace maps averaged over a ``grid`` x ``grid`` tiling
        (default: the smallest chosen map's side). A competitive net only: the readout reads
        the activity of the image alone, and only a competitive net has no label input."""
        if not self.competitive:
            raise ValueError("a spiking conv readout reads the activity of the image alone: it needs a competitive net")
        shapes = self.map_shapes()
        g = readout_grid(shapes, list(layers), grid)
        self.readout = nn.Linear(sum(shapes[i][0] for i in layers) * g * g, self.num_classes)
        self.readout_layers, self.readout_grid = list(layers), g
        return self.readout

    def forward(self, spikes: Tensor, code: Tensor) -> Tensor:
        """Output spikes of the last layer (pooled) for image spikes ``[T, N, 1, H, W]`` and
        label spikes ``[T, N, L]``; every layer's trace is left in its neuron."""
        for layer in self.layers:
            spikes = layer(spikes, code)
        return spikes

    @torch.no_grad()
    def present(self, spikes: Tensor, code: Tensor) -> list[Tensor]:
        """One presentation from rest; each layer's trace map ``[N, C, OH, OW]``."""
        for layer in self.layers:
            layer.neuron.v = 0.0
            layer.neuron.clear_trace()
        self(spikes, code)
        return [layer.activity.clone() for layer in self.layers]
