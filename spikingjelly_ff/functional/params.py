"""Typed settings of an FF model (no torch needed): neuron, trace, spike encoder, label
embedding, Hebbian learning, scoring of a spiking model.

These frozen dataclasses are the run configuration's sections (``config.py`` reads YAML
into them), the arguments of the torch modules and learners, and the fields the exported
models store; each default is written here once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from spikingjelly_ff.functional.labels import LABEL_KINDS
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.functional.schedule import SCHEDULES

__all__ = [
    "CODINGS",
    "FIRE_RULES",
    "Dynamics",
    "FORMS",
    "HEBBIAN_UPDATES",
    "LABEL_KINDS",
    "SCHEDULES",
    "TRACE_KINDS",
    "EmbeddingParams",
    "EncoderParams",
    "EvalParams",
    "HebbianParams",
    "NeuronParams",
    "TraceParams",
]


def _check_int(owner, *names: str) -> None:
    """ValueError unless each field ``names`` of ``owner`` that is set (not None) is an integer
    (a count: 23.9 steps would fail only at first use)."""
    for name in names:
        value = getattr(owner, name)
        if value is not None and (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))):
            raise ValueError(f"{name} must be an integer, got {value!r}")


def _check_finite(owner, *names: str) -> None:
    """ValueError unless each field ``names`` of ``owner`` that is set (not None) is a finite number."""
    for name in names:
        value = getattr(owner, name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")


MAX_STEPS = 100_000  # time steps of one presentation (the paper's: 23 + 20)
FORMS = ("beta", "lif")
FIRE_RULES = (">", ">=")
TRACE_KINDS = ("count", "leaky", "hard", "none")
CODINGS = ("bernoulli", "regular")


@dataclass(frozen=True)
class NeuronParams:
    """Membrane model.

    ``form='beta'`` (the paper): V <- beta * V + I.
    ``form='lif'`` (SpikingJelly's LIFNode, same op order): V <- V - (V - v_reset) / tau + I
    when ``decay_input`` is false, else V <- V + (I - (V - v_reset)) / tau.
    A neuron fires when V > v_threshold (``fire='>'``) or V >= v_threshold (``'>='``),
    then V is set to ``v_reset`` (hard reset) or, with ``v_reset=None`` (SpikingJelly's soft
    reset), lowered by v_threshold, so that its rate follows the size of a positive current
    instead of only its sign; the lif form then decays towards 0. ``kwta`` (k winners) lets
    only the k largest membranes of a sample fire; ``None`` lets all fire.
    """

    form: str = "beta"
    beta: float = 0.85
    tau: float = 2.0
    decay_input: bool = False
    v_threshold: float = 0.001
    v_reset: float | None = 0.0
    fire: str = ">"
    kwta: int | None = None

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"neuron form must be one of {FORMS}, got {self.form!r}")
        if self.fire not in FIRE_RULES:
            raise ValueError(f"fire rule must be '>' or '>=', got {self.fire!r}")
        _check_finite(self, "beta", "tau", "v_threshold", "v_reset")
        if self.form == "beta" and not 0.0 <= self.beta < 1.0:
            raise ValueError("beta must lie in [0, 1)")
        if self.form == "lif" and not self.tau > 1.0:
            raise ValueError("tau must be > 1")
        _check_int(self, "kwta")
        if self.kwta is not None and self.kwta < 1:
            raise ValueError("kwta must be a positive number of winners or None")
        if self.v_reset is None and not self.v_threshold > 0:
            raise ValueError("a soft reset (v_reset None) lowers V by v_threshold, which must be > 0")

    @property
    def silent_at_rest(self) -> bool:
        """Whether a membrane can never fire with no input after a step with input: without
        k-WTA every neuron above threshold fired and reset at the last input step, and with no
        input V only decays (towards v_reset, or 0 for the beta form). A soft reset may leave V
        above the threshold, so it is never silent."""
        if self.v_reset is None:
            return False
        return self.kwta is None and self.v_reset <= self.v_threshold and (self.form == "lif" or self.v_threshold >= 0)

    @property
    def soft_reset(self) -> bool:
        """Whether a spike lowers V by v_threshold (``v_reset=None``) instead of setting it."""
        return self.v_reset is None

    @property
    def v_rest(self) -> float:
        """The potential the lif form decays towards: v_reset, or 0 with a soft reset."""
        return 0.0 if self.v_reset is None else self.v_reset

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
        _check_finite(self, "scale")

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


@dataclass(frozen=True)
class Dynamics:
    """Everything a layer's simulation needs besides its weights: the one settings object the
    simulation and every presentation kernel take."""

    neuron: NeuronParams
    trace: TraceParams
    probability: Probability
    goodness: str = "sum_squares"


@dataclass(frozen=True)
class EncoderParams:
    """Presentation protocol of a spiking network: each input spikes with probability
    ``gain * value`` per step (``coding='bernoulli'``, the paper) or at evenly spaced steps
    (``'regular'``) for ``steps`` steps, then ``rest_steps`` steps with no input. With
    ``carry_membrane`` the membranes only decay between samples (the paper); else they reset.
    """

    gain: float = 0.25
    steps: int = 23
    rest_steps: int = 20
    carry_membrane: bool = True
    coding: str = "bernoulli"

    def __post_init__(self) -> None:
        if self.coding not in CODINGS:
            raise ValueError(f"spike coding must be one of {CODINGS}, got {self.coding!r}")
        _check_int(self, "steps", "rest_steps")
        # the bound keeps a tampered artefact from holding a scorer in compiled code for hours
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must lie in 1..{MAX_STEPS}, got {self.steps}")
        if not 0 <= self.rest_steps <= MAX_STEPS:
            raise ValueError(f"rest_steps must lie in 0..{MAX_STEPS}, got {self.rest_steps}")
        if not (math.isfinite(self.gain) and self.gain >= 0):  # a rate factor: rates are clipped to [0, 1]
            raise ValueError(f"gain must be a finite number >= 0, got {self.gain}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EmbeddingParams:
    """How the candidate label enters the input (see ``labels.py``): ``pattern`` appends
    ``bits`` random bits (each on with probability ``density``, drawn from ``seed``; None:
    the run seed), ``onehot`` overwrites the first C inputs. An active position holds ``scale``.
    """

    kind: str = "pattern"
    bits: int = 100
    density: float = 0.3
    scale: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in LABEL_KINDS:
            raise ValueError(f"label embedding must be one of {LABEL_KINDS}, got {self.kind!r}")
        _check_finite(self, "density", "scale")

    def to_dict(self) -> dict:
        return asdict(self)


#: when a spiking layer's Hebbian delta is applied: after every learning step, or once per presentation
HEBBIAN_UPDATES = ("step", "presentation")


@dataclass(frozen=True)
class HebbianParams:
    """Hebbian learning: a step ``eta`` on the exact FF gradient, filtered by the eligibility
    trace e <- (1 - tau) e + tau dW (``eligibility_tau`` in (0, 1]; None applies dW directly); a spiking
    layer learns only at steps t > ``learn_after`` (-1: all); ``schedule`` decays eta over a run.
    ``update``: "step", the weights change after every such step (the paper's running update),
    or "presentation" (spiking conv layers): they stay fixed while a sample is shown and the
    summed delta of those steps is applied once after it.
    """

    eta: float = 0.1
    eligibility_tau: float | None = 0.1
    learn_after: int = 15
    schedule: str = "constant"
    update: str = "step"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.update not in HEBBIAN_UPDATES:
            raise ValueError(f"update must be one of {HEBBIAN_UPDATES}, got {self.update!r}")
        if self.learn_after < -1:
            raise ValueError(f"learn_after must be >= -1, got {self.learn_after}")
        if not (math.isfinite(self.eta) and self.eta >= 0):  # a step size (0: nothing learns)
            raise ValueError(f"eta must be a finite number >= 0, got {self.eta}")
        tau = self.eligibility_tau
        if tau is not None and not 0 < tau <= 1:  # e <- (1 - tau) e + tau dW; 1: dW itself
            raise ValueError(f"eligibility_tau must lie in (0, 1] or be None, got {tau}")

    def require_step(self, who: str) -> None:
        """Refuse a presentation update where only the step rule exists (``who`` names the
        learner in the message) instead of silently applying the step rule."""
        if self.update != "step":
            raise ValueError(f"{who} learns with update='step', not {self.update!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.update == "step":  # the default, left out: artefacts stay readable by earlier runtimes
            del d["update"]
        return d


@dataclass(frozen=True)
class EvalParams:
    """How a spiking model scores an image: the scores of ``repeats`` independent
    presentations are summed (less rate-code noise); with ``share_image_spikes`` one draw of
    image spikes serves every candidate label (else each label draws its own)."""

    repeats: int = 1
    share_image_spikes: bool = True

    def __post_init__(self) -> None:
        _check_int(self, "repeats")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")

    def to_dict(self) -> dict:
        return asdict(self)
