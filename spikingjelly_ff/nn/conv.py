"""Convolutional FF layers built from SpikingJelly parts.

``FFConv2d``: analog layer l = ReLU(W * x_hat), x_hat the input, optionally length-normalised
over each sample's map, each location's channels or each channel group
(``functional.conv.length_normalize_map``), then optional max/avg pooling for the next layer.
``SpikingFFConv2d``: ``layer.Conv2d`` synapse followed by an :class:`FFLIFNode` that runs on the
flattened feature map, so one trace per unit of the map and the same CuPy kernel as the dense
layer; optional pooling of the output spikes.

Both are ``StepModule``s: ``functional.set_step_mode`` switches them between ``'s'``
(``[N, C, H, W]``) and ``'m'`` (``[T, N, C, H, W]``). Goodness and learning read the
activity before pooling (``activity``); ``forward`` returns what the next layer receives.
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import base, layer
from torch import Tensor, nn

from spikingjelly_ff.functional.conv import goodness_groups, length_normalize_map
from spikingjelly_ff.nn.neuron import FFLIFNode

__all__ = ["POOLS", "FFConv2d", "SpikingFFConv2d"]

POOLS = ("max", "avg")

Size = int | tuple[int, int]


def _pool(kind: str | None, size: Size, step_mode: str) -> nn.Module:
    """The pooling after a conv layer: SpikingJelly's ``MaxPool2d``/``AvgPool2d`` (stride =
    window), or ``nn.Identity`` for ``None``."""
    if kind is None:
        return nn.Identity()
    if kind == "max":
        return layer.MaxPool2d(size, step_mode=step_mode)
    if kind == "avg":
        return layer.AvgPool2d(size, step_mode=step_mode)
    raise ValueError(f"unknown pooling {kind!r}; choose one of {[None, *POOLS]}")


class FFConv2d(nn.Module, base.StepModule):
    """Analog conv FF layer: ``[.., I, H, W] -> [.., C, OH, OW]`` (pooled by ``forward`` when
    ``pool`` is set); stateless, so both step modes agree.

    :param normalize_input: ``None``, ``"map"``, ``"location"`` or ``"group:K"``: length-normalise
        the input over that region (use the previous layer's goodness region), as ``FFLinear`` does
        for layers after the first
    :param pool: ``None``, ``"max"`` or ``"avg"``, over ``pool_size`` windows
    :param label_maps: ``(L, OH, OW)``: learn label weights ``[L, C, OH, OW]``, one per unit
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Size,
        stride: Size = 1,
        padding: Size = 0,
        bias: bool = False,
        normalize_input: str | None = None,
        pool: str | None = None,
        pool_size: Size = 2,
        step_mode: str = "s",
        label_maps: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        if normalize_input is not None:
            try:
                goodness_groups(normalize_input, (in_channels,))
            except ValueError as exc:
                raise ValueError(f"bad normalisation region: {exc}") from exc
        self.synapse = layer.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias, step_mode=step_mode
        )
        self.act = nn.ReLU()
        # Label weights B [L, C, OH, OW], zero at start: every unit gets its own pre-activation
        # term code @ B, as a dense layer's one-hot input gives each hidden unit its own label
        # weights. A label term shared by all locations of a channel (constant label maps
        # through the kernel) only lets a channel count its local features, which barely tells
        # a right label from a wrong one; a term per location lets the label select *where*
        # each feature should be (a 7 has its bar at the top), as a dense layer's template does.
        self.label_bias: nn.Parameter | None = None
        if label_maps is not None:
            k, oh, ow = label_maps
            self.label_bias = nn.Parameter(torch.zeros(k, out_channels, oh, ow))
        self.pool = _pool(pool, pool_size, step_mode)
        self.normalize_input = normalize_input
        self.step_mode = step_mode

    @property
    def weight(self) -> nn.Parameter:
        """``[C, I, KH, KW]``."""
        return self.synapse.weight

    def activity(self, x: Tensor, code: Tensor | None = None) -> Tensor:
        """The layer activity l = ReLU(W * x_hat + code @ B) before pooling, what goodness
        reads; ``code`` ``[.., L]`` (the label code) is needed with ``label_maps``. Calls
        ``synapse`` and ``act`` as modules, so hooks on them see every call."""
        if self.normalize_input is not None:
            x = length_normalize_map(x, self.normalize_input)
        z = self.synapse(x)
        if self.label_bias is not None:
            if code is None:
                raise ValueError("this layer has label weights: pass the label code")
            z = z + torch.tensordot(code, self.label_bias, 1)
        return self.act(z)

    def forward(self, x: Tensor, code: Tensor | None = None) -> Tensor:
        return self.pool(self.activity(x, code))


class SpikingFFConv2d(nn.Module, base.StepModule):
    """Spiking conv FF layer: input spikes ``[.., I, H, W]`` -> output spikes ``[.., C, OH, OW]``
    (pooled when ``pool`` is set). The neuron sees the map flattened to ``C * OH * OW`` units,
    so its ``trace`` memory is ``[N, C * OH * OW]`` and a ``kwta`` neuron keeps the k winners
    of the whole map; ``activity`` gives the trace as a map."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Size,
        *args,
        stride: Size = 1,
        padding: Size = 0,
        pool: str | None = None,
        pool_size: Size = 2,
        step_mode: str = "s",
        label_maps: tuple[int, int, int] | None = None,
        **kwargs,
    ) -> None:
        """``args``, ``kwargs``: the neuron's, those of :class:`FFLIFNode` (``neuron``,
        ``trace``, ``backend``). ``label_maps`` ``(L, OH, OW)``: label weights B
        ``[L, C, OH, OW]`` (zero at start), one per unit and label position, through which
        label spikes ``[.., L]`` add ``code @ B`` to the current (``forward(x, code)``)."""
        super().__init__()
        self.synapse = layer.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False, step_mode=step_mode
        )
        self.label_bias: nn.Parameter | None = None
        if label_maps is not None:
            k, oh, ow = label_maps
            self.label_bias = nn.Parameter(torch.zeros(k, out_channels, oh, ow))
        self.neuron = FFLIFNode(*args, step_mode=step_mode, **kwargs)
        self.pool = _pool(pool, pool_size, step_mode)
        self.step_mode = step_mode
        self._map_shape: tuple[int, int, int] | None = None

    @property
    def weight(self) -> nn.Parameter:
        """``[C, I, KH, KW]``."""
        return self.synapse.weight

    @property
    def activity(self) -> Tensor:
        """The post-synaptic trace map l, ``[N, C, OH, OW]``."""
        tr = self.neuron.trace
        if not isinstance(tr, Tensor) or self._map_shape is None:
            raise RuntimeError("the layer has not run since its last reset")
        return tr.reshape(tr.shape[0], *self._map_shape)

    def forward(self, x: Tensor, code: Tensor | None = None) -> Tensor:
        """Input spikes ``[.., I, H, W]`` (and label spikes ``code`` ``[.., L]`` with label
        weights) -> output spikes ``[.., C, OH, OW]``, pooled when ``pool`` is set."""
        z = self.synapse(x)
        if self.label_bias is not None:
            if code is None:
                raise ValueError("this layer has label weights: pass the label spikes")
            z = z + torch.tensordot(code, self.label_bias, 1)
        self._map_shape = tuple(z.shape[-3:])
        # a view for the contiguous conv output: the neuron and its kernels see [.., units]
        spikes = self.neuron(z.flatten(-3))
        return self.pool(spikes.reshape(z.shape))
