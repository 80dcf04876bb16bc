"""Torch modules in SpikingJelly's conventions: the FF neuron, FF layers, label embeddings and
the analog and spiking FF networks. They take typed parameters, never the run config."""

from spikingjelly_ff.nn.conv import FFConv2d, SpikingFFConv2d
from spikingjelly_ff.nn.conv_models import AnalogConvFFNet
from spikingjelly_ff.nn.embedding import OneHotOverlay, PatternEmbedding
from spikingjelly_ff.nn.layers import FFLinear, SpikingFFLayer
from spikingjelly_ff.nn.models import AnalogFFNet, FFNet, SpikingFFNet
from spikingjelly_ff.nn.neuron import FFLIFNode

__all__ = [
    "AnalogConvFFNet",
    "AnalogFFNet",
    "FFConv2d",
    "FFLIFNode",
    "FFLinear",
    "FFNet",
    "OneHotOverlay",
    "PatternEmbedding",
    "SpikingFFConv2d",
    "SpikingFFLayer",
    "SpikingFFNet",
]
