"""Export a trained spiking FF model (dense ``SpikingFFNet`` or ``SpikingConvFFNet``) to the
spike-runtime artefact (NIR + our metadata), and import a dense artefact back into SpikingJelly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from spikingjelly_ff import __version__
from spikingjelly_ff.functional.params import EvalParams, HebbianParams
from spikingjelly_ff.nn.models import SpikingFFNet
from spikingjelly_ff.nn.spiking_conv import SpikingConvFFNet
from spikingjelly_ff.runtime.artifact import SpikeArtifact, read_artifact, write_artifact
from spikingjelly_ff.runtime.conv_artifact import ConvLayerMeta, ConvReadout, SpikeConv

__all__ = ["artifact_from_model", "export_spike", "resolve_spike_path", "to_spikingjelly"]


def _conv_layout(net: SpikingConvFFNet) -> SpikeConv:
    """The conv layers' settings and shapes as the artefact records them."""
    layers = []
    shape = (1, *net._hw())
    for spec, (c, oh, ow) in zip(net.specs, net.map_shapes()):
        la = ConvLayerMeta(c, spec.kernel, spec.stride, spec.padding, spec.pool, spec.pool_size, shape, (c, oh, ow))
        layers.append(la)
        shape = la.out_shape
    readout = None if net.readout is None else ConvReadout(tuple(net.readout_layers), net.readout_grid)
    return SpikeConv(net.over, layers, labelled=not net.competitive, shift_views=net.shift_views, readout=readout)


def _arrays(tensors) -> list[np.ndarray]:
    return [t.detach().cpu().numpy().astype(np.float32) for t in tensors]


def artifact_from_model(
    net: SpikingFFNet | SpikingConvFFNet,
    image_shape=None,
    eligibility=None,
    *,
    hebbian: HebbianParams | None = None,
    evaluation: EvalParams | None = None,
    name: str = "model",
) -> SpikeArtifact:
    """The numpy artefact of ``net`` (weights copied to the CPU), carrying the learning
    (``hebbian``) and evaluation settings a runtime uses (None: the defaults) and the
    ``name`` it travels with. A conv net's weights are its conv weights, then its label
    weights (``eligibility`` in the same order; empty for a competitive net, which sees no
    label), and its image shape is the net's own."""
    code = net.embedding.label_code
    conv = readout = None
    weights = _arrays(layer.weight for layer in net.layers)
    if isinstance(net, SpikingConvFFNet):
        conv = _conv_layout(net)
        weights += _arrays(layer.label_bias for layer in net.layers)
        if image_shape is not None and tuple(image_shape) != net._hw():
            raise ValueError(f"image_shape {tuple(image_shape)} differs from the conv net's own {net._hw()}")
        image_shape = net._hw()
        if net.readout is not None:
            readout = tuple(_arrays((net.readout.weight, net.readout.bias)))
    elif net.readout is not None:  # not reached: train.readout refuses dense spiking nets
        raise ValueError("a dense spiking net's readout cannot be exported")
    return SpikeArtifact(
        weights=weights,
        neuron=net.neuron_params,
        trace=net.trace_params,
        encoder=net.encoder,
        probability=net.probability,
        goodness=net.goodness_kind,
        score=net.score_kind,
        score_layers=list(net.score_layers),
        embedding=net.embedding.params,
        in_features=net.in_features,
        num_classes=net.num_classes,
        label_patterns=None if code.patterns is None else code.patterns.astype(np.uint8),
        image_shape=list(image_shape) if image_shape is not None else None,
        hebbian=hebbian or _default_hebbian(net.encoder.steps),
        eligibility=None if eligibility is None else _arrays(eligibility),
        evaluation=evaluation or EvalParams(),
        name=name,
        library_version=__version__,
        conv=conv,
        readout=readout,
    )


def resolve_spike_path(out: str | os.PathLike) -> Path:
    """``DIR`` -> ``DIR/model.nir``; a path with a suffix is used as the file name."""
    out = Path(out)
    if out.suffix in (".nir", ".h5", ".hdf5"):
        return out
    return out / "model.nir"


def _default_hebbian(steps: int) -> HebbianParams:
    """The default learning settings, with a learning window the presentation can hold (the
    default ``learn_after`` of 15 leaves nothing to learn from in a presentation of <= 16 steps)."""
    default = HebbianParams()
    return HebbianParams(learn_after=min(default.learn_after, steps - 2))


def export_spike(
    net: SpikingFFNet | SpikingConvFFNet,
    out: str | os.PathLike,
    image_shape=None,
    *,
    hebbian: HebbianParams | None = None,
    evaluation: EvalParams | None = None,
    name: str = "model",
) -> Path:
    """Write ``net`` as a spike-runtime artefact (see :func:`artifact_from_model`); returns
    the file written."""
    art = artifact_from_model(net, image_shape, hebbian=hebbian, evaluation=evaluation, name=name)
    return write_artifact(resolve_spike_path(out), art)


def to_spikingjelly(path: str | os.PathLike) -> torch.nn.Module:
    """Rebuild the network of an artefact with SpikingJelly's own NIR importer.

    Returns SpikingJelly's ``fx.GraphModule`` (``layer.Linear`` + ``LIFNode``) in multi-step
    mode: ``out, state = net(spikes, None)`` with spikes ``[T, N, D']``. SpikingJelly's
    LIFNode fires at V >= threshold and updates V - (V - v_reset) / tau + I; see
    docs/export.md for how that compares with each neuron form.
    """
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    p = Path(path)
    file = resolve_spike_path(p) if p.is_dir() else p
    art = read_artifact(file)
    if art.conv is not None:
        # SpikingJelly's importer knows neither NIR's Threshold (our max pooling) nor two inputs
        raise ValueError("to_spikingjelly rebuilds dense artefacts; a conv artefact runs in runtime.SpikeConvModel")
    if art.neuron.soft_reset:
        raise ValueError(
            "to_spikingjelly: the neuron resets softly (v_reset: null), which NIR 1.0's LIF cannot say "
            "(its v_reset is NaN in the file); the artefact runs in runtime.SpikeModel"
        )
    return import_from_nir(file, dt=1e-4, step_mode="m")
