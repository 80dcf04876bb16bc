"""spikingjelly-ff: Forward-Forward and its Hebbian equivalent for SpikingJelly networks.

Importing the package is cheap and needs no torch: submodules load on first use, so the
torch-free ``spikingjelly_ff.runtime`` works on devices without torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "FFLIFNode": "neuron",
    "FFLinear": "layers",
    "SpikingFFLayer": "layers",
    "AnalogFFNet": "models",
    "SpikingFFNet": "models",
    "build_model": "build",
    "LabelCode": "labels",
    "Probability": "probability",
    "HebbianLearner": "learning",
    "LocalLossLearner": "learning",
    "NeuronParams": "dynamics",
    "TraceParams": "dynamics",
    "load_config": "config",
    "load_model": "checkpoint",
    "save_model": "checkpoint",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
