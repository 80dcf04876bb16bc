"""spikingjelly-ff: Forward-Forward and its Hebbian equivalent for SpikingJelly networks.

Layers, from the bottom (``lint-imports`` checks them, see ``.importlinter``)::

    functional   pure math, torch-free            kernels     neuron loops: numpy, torch, CuPy
    simulation   torch-free spiking simulation    nn          torch modules (neurons, layers, nets)
    learning     learners, fast trainer/scorer    runtime     torch-free inference + learning
    export       ONNX and spike artefacts         runs        config, data, train, evaluate
    cli          the ``sjff`` command

Importing the package is cheap and needs no torch: submodules load on first use, so the
torch-free ``spikingjelly_ff.runtime`` works on devices without torch. Module paths of the
flat layout before 0.2 (``spikingjelly_ff.models``, ``.config``, …) still import: they are
aliases of the modules that now hold the code.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_LAZY = {
    "FFLIFNode": "nn.neuron",
    "FFLinear": "nn.layers",
    "SpikingFFLayer": "nn.layers",
    "AnalogFFNet": "nn.models",
    "SpikingFFNet": "nn.models",
    "build_model": "runs.build",
    "LabelCode": "functional.labels",
    "Probability": "functional.probability",
    "HebbianLearner": "learning.learners",
    "LocalLossLearner": "learning.learners",
    "NeuronParams": "functional.params",
    "TraceParams": "functional.params",
    "load_config": "runs.config",
    "load_model": "runs.checkpoint",
    "save_model": "runs.checkpoint",
}

#: Old module path (the flat layout) -> the module that holds the code now.
MOVED = {
    "_array": "functional._array",
    "params": "functional.params",
    "goodness": "functional.goodness",
    "probability": "functional.probability",
    "hebbian": "functional.hebbian",
    "dynamics": "functional.dynamics",
    "schedule": "functional.schedule",
    "simulate": "simulation",
    "neuron": "nn.neuron",
    "layers": "nn.layers",
    "embedding": "nn.embedding",
    "models": "nn.models",
    "augment": "nn.augment",
    "analog_hebbian": "learning.analog_hebbian",
    "engine": "learning.engine",
    "reference": "learning.reference",
    "config": "runs.config",
    "data": "runs.data",
    "train": "runs.train",
    "evaluate": "runs.evaluate",
    "reproduce": "runs.reproduce",
    "checkpoint": "runs.checkpoint",
    "analysis": "runs.analysis",
    "readout": "runs.readout",
    "errors": "runs.errors",
}

__all__ = ["__version__", *_LAZY]


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``spikingjelly_ff.<old>`` as the module that now holds its code (same object)."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, old = fullname.partition(f"{__name__}.")
        if prefix or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{MOVED[spec.name.rsplit('.', 1)[1]]}")

    def exec_module(self, module) -> None:
        pass  # the target module ran when it was imported


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.insert(0, _Alias())  # before the path finders: an old path never finds a stale file


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
