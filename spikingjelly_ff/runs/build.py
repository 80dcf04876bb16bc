"""Build an FF network from a run configuration (the run layer: modules take parameters)."""

from __future__ import annotations

import torch

from spikingjelly_ff.nn.conv_models import AnalogConvFFNet
from spikingjelly_ff.nn.embedding import build_embedding
from spikingjelly_ff.nn.models import AnalogFFNet, FFNet, SpikingFFNet
from spikingjelly_ff.nn.spiking_conv import SpikingConvFFNet
from spikingjelly_ff.runs.config import ModelConfig

__all__ = ["build_model", "resolve_device"]


def build_model(
    m: ModelConfig,
    in_features: int,
    num_classes: int,
    seed: int,
    backend: str = "torch",
    image_shape: tuple[int, int] | None = None,
) -> FFNet:
    """Build an analog or spiking, dense or conv FF network from config; weights drawn from
    ``seed``. ``image_shape`` ``(H, W)`` (default: square) sizes a conv net's maps and label
    weights."""
    e = m.embedding
    emb = build_embedding(e.kind, num_classes, e.bits, e.density, seed if e.seed is None else e.seed, e.scale)
    torch.manual_seed(seed)
    shared = (in_features, m.layers, emb, m.probability, m.goodness, m.score, m.score_layers, num_classes)
    conv = (in_features, m.conv, *shared[2:])
    if m.conv and m.kind == "spiking":
        params = {"neuron": m.neuron, "trace": m.trace, "encoder": m.encoder}
        net: FFNet = SpikingConvFFNet(
            *conv, **params, over=m.goodness_over, shift_views=m.shift_views, image_shape=image_shape, backend=backend
        )
    elif m.conv:
        net = AnalogConvFFNet(
            *conv, over=m.goodness_over, bias=m.bias, shift_views=m.shift_views, image_shape=image_shape
        )
    elif m.kind == "analog":
        net = AnalogFFNet(*shared, bias=m.bias, normalize=m.normalize, shift_views=m.shift_views)
    else:
        net = SpikingFFNet(*shared, neuron=m.neuron, trace=m.trace, encoder=m.encoder, backend=backend)
    if m.init == "normal":
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in net.layers:
                w = layer.weight
                w.copy_(torch.randn(w.shape, generator=g) * m.init_std)
    return net


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA where torch sees it, else the CPU; a CUDA device torch does not see is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but torch sees no CUDA device")
    return device
