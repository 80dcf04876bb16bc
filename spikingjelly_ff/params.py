"""Parameters of the spiking FF neuron and its trace (no torch needed).

Shared by the torch library and the torch-free runtime, and written into exported models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["FIRE_RULES", "FORMS", "TRACE_KINDS", "NeuronParams", "TraceParams"]

FORMS = ("beta", "lif")
FIRE_RULES = (">", ">=")
TRACE_KINDS = ("count", "leaky", "hard", "none")


@dataclass(frozen=True)
class NeuronParams:
    """Membrane model.

    ``form='beta'`` (the paper): V <- beta * V + I.
    ``form='lif'`` (SpikingJelly's LIFNode, same op order): V <- V - (V - v_reset) / tau + I
    when ``decay_input`` is false, else V <- V + (I - (V - v_reset)) / tau.
    A neuron fires when V > v_threshold (``fire='>'``) or V >= v_threshold (``'>='``),
    then V is set to ``v_reset``. ``kwta`` (k winners) lets only the k largest
    membranes of a sample fire; ``None`` lets all fire.
    """

    form: str = "beta"
    beta: float = 0.85
    tau: float = 2.0
    decay_input: bool = False
    v_threshold: float = 0.001
    v_reset: float = 0.0
    fire: str = ">"
    kwta: int | None = None

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"neuron form must be one of {FORMS}, got {self.form!r}")
        if self.fire not in FIRE_RULES:
            raise ValueError(f"fire rule must be '>' or '>=', got {self.fire!r}")
        if self.form == "beta" and not 0.0 <= self.beta < 1.0:
            raise ValueError("beta must lie in [0, 1)")
        if self.form == "lif" and not self.tau > 1.0:
            raise ValueError("tau must be > 1")
        if self.kwta is not None and self.kwta < 1:
            raise ValueError("kwta must be a positive number of winners or None")

    @property
    def decay(self) -> float:
        """Per-step membrane decay factor with no input."""
        return self.beta if self.form == "beta" else 1.0 - 1.0 / self.tau

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TraceParams:
    """Post-synaptic trace used as the layer activity l.

    ``count``: trace += spike * increment, increment = float32(1) / float32(scale).
    ``leaky``: trace <- decay * trace + (1 - decay) * spike.
    ``hard``: trace <- decay * trace, and 1 where the neuron spiked. ``none``: l = spike.
    """

    kind: str = "leaky"
    decay: float = 0.85
    scale: float = 10.0

    def __post_init__(self) -> None:
        if self.kind not in TRACE_KINDS:
            raise ValueError(f"trace kind must be one of {TRACE_KINDS}, got {self.kind!r}")
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError("trace decay must lie in [0, 1]")
        if not self.scale > 0:
            raise ValueError("trace scale must be > 0")

    @property
    def increment(self) -> float:
        """Count-trace step, rounded exactly as every backend rounds it (float32 division)."""
        return float(np.float32(1.0) / np.float32(self.scale))

    @property
    def one_minus_decay(self) -> float:
        """(1 - decay) as float32, the leaky trace's input weight."""
        return float(np.float32(1.0 - self.decay))

    def to_dict(self) -> dict:
        return asdict(self)
