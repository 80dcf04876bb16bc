"""ONNX export, built node by node with ``onnx.helper`` (opset 18), one module per graph:

* ``analog``: analog models, ``images [N, D]`` -> ``scores [N, C]``, ``probability``,
  ``goodness``, ``label`` and optionally ``latent``, all labels (and shifted views) in one pass;
* ``conv``: analog conv models (``AnalogConvFFNet``), the same outputs but ``latent``;
  ``analog_to_onnx`` hands them to ``conv_to_onnx``;
* ``spiking``: one presentation of given input spikes ``[T, N, D']``, the T steps in an ONNX
  ``Scan``, returning every layer's spikes, final trace and membrane and the log-odds;
* ``graph``: what both share (node builder, goodness and log-odds nodes, metadata, save).

Writing the graph by hand keeps the arithmetic identical to ``dynamics.py`` (Mul, then Add;
no fused ops), which is what lets onnxruntime reproduce the torch spikes exactly.
"""

from spikingjelly_ff.export.onnx.analog import analog_to_onnx
from spikingjelly_ff.export.onnx.conv import conv_to_onnx
from spikingjelly_ff.export.onnx.spiking import spiking_to_onnx

__all__ = ["analog_to_onnx", "conv_to_onnx", "spiking_to_onnx"]
