"""Torch-free runtime for exported spiking FF models (numpy + h5py).

    from spikingjelly_ff.runtime import SpikeModel
    model = SpikeModel.load("model.nir")
    model.predict(images)                      # images: [N, 784] float32 in [0, 1]
    model.learn(images, labels, positive)      # one on-line Hebbian update
    model.save("model.nir")

``load_exported`` opens any export: a spike artefact (``.nir``) as a ``SpikeModel`` (or, for a
spiking conv net, a ``SpikeConvModel``) or an analog ONNX file as an ``AnalogModel`` (needs onnx
and onnxruntime). All offer ``scores``, ``predict``, ``learn``, ``copy`` and ``save``.

Nothing here imports torch; an edge device needs numpy and h5py only.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from spikingjelly_ff.runtime.artifact import ArtifactError, SpikeArtifact, read_artifact, write_artifact
from spikingjelly_ff.runtime.conv_model import SpikeConvModel
from spikingjelly_ff.runtime.model import SpikeModel

__all__ = [
    "AnalogModel",
    "ArtifactError",
    "SpikeArtifact",
    "SpikeConvModel",
    "SpikeModel",
    "load_exported",
    "read_artifact",
    "write_artifact",
]


def load_exported(path: str | os.PathLike, threads: int | None = None):
    """An exported model: ``SpikeModel`` (``SpikeConvModel`` for a conv net) for ``.nir``/``.h5``
    files (or a directory holding ``model.nir``), ``AnalogModel`` for ``.onnx`` files. (A trained
    torch network from a run directory is ``spikingjelly_ff.load_model``.)"""
    p = Path(path)
    if p.is_dir():
        for name in ("model.nir", "model.onnx"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise ArtifactError(f"{path}: holds neither model.nir nor model.onnx")
    if p.suffix == ".onnx":
        from spikingjelly_ff.runtime.analog import AnalogModel

        return AnalogModel.load(p, threads)
    art = read_artifact(p)
    return SpikeConvModel(art) if art.conv is not None else SpikeModel(art)


def __getattr__(name: str):
    if name == "AnalogModel":
        from spikingjelly_ff.runtime.analog import AnalogModel

        return AnalogModel
    if name == "load_model":  # the name before 0.2, which spikingjelly_ff.load_model also used
        warnings.warn(
            "spikingjelly_ff.runtime.load_model is deprecated: use spikingjelly_ff.runtime.load_exported",
            DeprecationWarning,
            stacklevel=2,
        )
        return load_exported
    raise AttributeError(name)
