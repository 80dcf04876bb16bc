"""Run configuration: typed sections, YAML files, ``--set key=value`` overrides.

A config fully describes a run (data, model, training, evaluation) and travels with the
trained weights as ``model/config.json``. Unknown keys and wrong types are errors. The model
and learning sections are the library's own parameter classes (``params.py``,
``probability.Probability``): they validate themselves and hold the one default of each fact.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spikingjelly_ff.functional.conv import goodness_groups
from spikingjelly_ff.functional.goodness import GOODNESS
from spikingjelly_ff.functional.params import (
    CODINGS,
    FIRE_RULES,
    FORMS,
    HEBBIAN_UPDATES,
    LABEL_KINDS,
    SCHEDULES,
    TRACE_KINDS,
    EmbeddingParams,
    EncoderParams,
    EvalParams,
    HebbianParams,
    NeuronParams,
    TraceParams,
)
from spikingjelly_ff.functional.probability import KINDS as PROBABILITY_KINDS
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.functional.views import check_views
from spikingjelly_ff.runs.data import DATASETS
from spikingjelly_ff.runs.strict_yaml import YAMLInputError, parse_yaml

__all__ = [
    "ConfigError",
    "ConvLayerConfig",
    "DataConfig",
    "EmbeddingConfig",
    "EncoderConfig",
    "EvalConfig",
    "HebbianConfig",
    "ModelConfig",
    "NeuronConfig",
    "OptimizerConfig",
    "ProbabilityConfig",
    "ReadoutConfig",
    "RunConfig",
    "TraceConfig",
    "TrainConfig",
    "apply_overrides",
    "check_image",
    "config_from_dict",
    "flatten",
    "load_config",
    "resolve_config",
]


class ConfigError(ValueError):
    """A config file or override is invalid."""


@dataclass
class DataConfig:
    dataset: str = "mnist"  # mnist | fashion-mnist | a directory of IDX files
    root: str | None = None  # where to look first (default: $SJFF_DATA_DIR, then the cache)
    download: bool = True  # fetch a known dataset when it is missing


# The model and learning sections are the parameter classes themselves.
EmbeddingConfig = EmbeddingParams
ProbabilityConfig = Probability
NeuronConfig = NeuronParams
TraceConfig = TraceParams
EncoderConfig = EncoderParams
HebbianConfig = HebbianParams


@dataclass
class ConvLayerConfig:
    """One conv FF layer (``nn.conv.FFConv2d`` or ``SpikingFFConv2d``): ``channels`` feature maps of
    ``kernel`` x ``kernel``, then optional ``pool`` (max | avg) over ``pool_size`` windows."""

    channels: int = 32
    kernel: int = 5
    stride: int = 1
    padding: int = 0
    pool: str | None = None
    pool_size: int = 2


@dataclass
class ModelConfig:
    kind: str = "analog"  # analog | spiking
    layers: list[int] = field(default_factory=lambda: [200])
    bias: bool = False
    normalize: bool = True  # analog: length-normalise the input of every layer after the first
    init: str = "default"  # default (torch Linear) | normal (N(0, init_std^2), the paper's spiking init)
    init_std: float = 1.0
    goodness: str = "sum_squares"
    probability: Probability = field(default_factory=Probability)
    embedding: EmbeddingParams = field(default_factory=EmbeddingParams)
    score: str = "probability"  # probability: sum of log-odds over layers | goodness: sum of G
    score_layers: list[int] | None = None  # which layers vote (default: all)
    # analog and spiking conv: classify by the scores summed over the image and its copies moved
    # 1..N pixels down, up, right and left (4N + 1 views; 0: the image alone)
    shift_views: int = 0
    neuron: NeuronParams = field(default_factory=NeuronParams)
    trace: TraceParams = field(default_factory=TraceParams)
    encoder: EncoderParams = field(default_factory=EncoderParams)
    # conv net (empty: the dense net of ``layers``): its layers, with ``layers: []``; an analog
    # one writes the label into the image (``embedding.kind: onehot``), a spiking one feeds the
    # label spikes to every unit through label weights (any embedding)
    conv: list[ConvLayerConfig] = field(default_factory=list)
    # conv goodness (and next-layer normalisation) region: map (one entry per sample) | location
    # (one per sample and location) | group:K (the channels in K groups of consecutive ones, one
    # entry per sample and group; every layer's channels a multiple of K, and even per group for
    # a split probability; group:1 is map)
    goodness_over: str = "map"


@dataclass
class OptimizerConfig:
    kind: str = "adam"  # adam | sgd
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine | linear (decay to 0 over the run)
    warmup: float = 0.0  # fraction of the run over which the rate ramps up linearly from 0


@dataclass
class ReadoutConfig:
    enabled: bool = False  # also train a linear softmax readout on the latent activity
    epochs: int = 3
    lr: float = 0.01
    layers: list[int] | None = None  # layers whose activity feeds the readout (default: all but the first)
    weight_decay: float = 0.0  # L2 on the readout's weights (standardised latents)
    schedule: str = "constant"  # constant | cosine | linear (decay to 0 over the readout's epochs)
    grid: int | None = None  # spiking conv: maps averaged on grid x grid windows (default: the smallest side)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 50
    learner: str = "local-loss"  # local-loss (autograd per layer) | hebbian (no autograd)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    hebbian: HebbianParams = field(default_factory=HebbianParams)
    # how a spiking conv net applies its Hebbian deltas: eta (through the eligibility trace, as
    # the paper) | optimizer: -dW into .grad, then train.optimizer steps (needs
    # hebbian.update=presentation; eta, eligibility_tau and the Hebbian schedule then go unused)
    hebbian_apply: str = "eta"
    # mixed: each sample positive or negative (paper) | paired: both | hard: paired, with the
    # wrong label drawn by the model's confusion (Hinton's hard negatives) | none: no negative
    # samples, the competitive probability's class labels as targets
    negatives: str = "mixed"
    limit: int | None = None  # use only the first N training samples
    shuffle: bool = True
    augment_shift: int = 0  # translate training images by up to N pixels (0: no augmentation)
    eval_every: int = 1  # test after every N epochs (0: only at the end)
    # write the resume state (runs/resume.py) every N batches within an epoch too, so that a
    # stopped run loses at most N batches (0: at the end of every epoch only)
    checkpoint_batches: int = 0
    # stream: one random stream for the run (the historical results) | per-sample: every draw
    # keyed by (seed, epoch, global sample index), so N processes train what one trains
    draws: str = "stream"
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)


@dataclass(frozen=True)
class EvalConfig(EvalParams):
    """The eval section: how a spiking model scores (``repeats``, ``share_image_spikes``, what
    its export carries) and which test data is scored in batches of ``batch_size``."""

    batch_size: int = 1000
    limit: int | None = None  # score the first N test samples only

    @property
    def params(self) -> EvalParams:
        """The scoring settings alone (what an exported model carries)."""
        return EvalParams(self.repeats, self.share_image_spikes)


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | auto
    backend: str = "auto"  # auto | torch | cupy
    threads: int | None = None  # torch intra-op threads, 1..1024 (null or 0: torch's choice)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def validate(self) -> RunConfig:
        _validate(self)
        return self


CHOICES = {
    "model.kind": ("analog", "spiking"),
    "model.init": ("default", "normal"),
    "model.goodness": tuple(GOODNESS),
    "model.probability.kind": PROBABILITY_KINDS,
    "model.embedding.kind": LABEL_KINDS,
    "model.encoder.coding": CODINGS,
    "model.score": ("probability", "goodness"),
    "model.neuron.form": FORMS,
    "model.neuron.fire": FIRE_RULES,
    "model.trace.kind": TRACE_KINDS,
    "train.learner": ("local-loss", "hebbian"),
    "train.optimizer.kind": ("adam", "sgd"),
    "train.optimizer.schedule": SCHEDULES,
    "train.hebbian.schedule": SCHEDULES,
    "train.hebbian.update": HEBBIAN_UPDATES,
    "train.hebbian_apply": ("eta", "optimizer"),
    "train.negatives": ("mixed", "paired", "hard", "none"),
    "train.draws": ("stream", "per-sample"),
    "train.readout.schedule": SCHEDULES,
    "device": ("cpu", "cuda", "auto"),
    "backend": ("auto", "torch", "cupy"),
}


def _validate(cfg: RunConfig) -> None:
    flat = flatten(cfg.to_dict())
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {flat[key]!r}")
    m, t = cfg.model, cfg.train
    try:  # map | location | group:K, parsed where the conv layers are (functional.conv)
        goodness_groups(m.goodness_over)
    except ValueError as exc:
        raise ConfigError(f"model.goodness_over: {exc}") from exc
    if m.conv:
        _validate_conv(cfg)
    elif not m.layers or any(h < 1 for h in m.layers):
        raise ConfigError("model.layers must be a non-empty list of positive widths")
    if m.probability.competitive and not m.conv:
        raise ConfigError("competitive probability scores channel groups: it needs a conv net (model.conv)")
    if m.probability.competitive != (t.negatives == "none"):
        raise ConfigError("competitive probability and train.negatives=none go together (class labels, no negatives)")
    if m.probability.split and any(h % 2 for h in m.layers):
        raise ConfigError(f"{m.probability.kind} probability splits layers in halves: widths must be even")
    if t.learner == "hebbian" and m.goodness == "l1":
        raise ConfigError("the Hebbian learner needs a quadratic goodness (sum_squares or mean_squares)")
    if m.kind == "spiking" and t.learner != "hebbian":
        raise ConfigError("spiking models train with train.learner=hebbian")
    if not 0 <= cfg.seed < 2**63:  # numpy's generators refuse negative seeds, torch's take 64 bits
        raise ConfigError(f"seed must lie in [0, 2**63), got {cfg.seed}")
    for key in ("train.epochs", "train.batch_size", "eval.batch_size", "model.encoder.steps"):
        if flat[key] < 1:
            raise ConfigError(f"{key} must be >= 1")
    if m.encoder.rest_steps < 0:
        raise ConfigError("model.encoder.rest_steps must be >= 0")
    if not 0.0 <= t.optimizer.warmup < 1.0:
        raise ConfigError(f"train.optimizer.warmup is a fraction of the run in [0, 1); got {t.optimizer.warmup}")
    if m.kind == "spiking" and not -1 <= t.hebbian.learn_after < m.encoder.steps - 1:
        raise ConfigError("train.hebbian.learn_after must lie in [-1, model.encoder.steps - 1)")
    if m.score_layers is not None and any(not 0 <= i < len(m.conv or m.layers) for i in m.score_layers):
        raise ConfigError("model.score_layers holds a layer index out of range")
    if m.score_layers is not None and len(set(m.score_layers)) != len(m.score_layers):
        raise ConfigError("model.score_layers names a layer twice (each voting layer counts once)")
    if m.shift_views < 0:
        raise ConfigError("model.shift_views must be >= 0")
    if m.score_layers == []:
        raise ConfigError("model.score_layers must name at least one layer (null: all), got []")
    if not (math.isfinite(m.init_std) and m.init_std > 0):
        raise ConfigError(f"model.init_std must be a finite number > 0, got {m.init_std}")
    _validate_optimizer(t.optimizer)
    if m.kind == "spiking" and m.shift_views and not m.conv:
        raise ConfigError("model.shift_views is available for analog models and spiking conv models only")
    if t.readout.enabled:
        _validate_readout(cfg)
    if t.draws == "per-sample" and t.negatives == "hard":
        raise ConfigError("train.negatives=hard draws from a look-ahead over the stream; use train.draws=stream")
    if t.limit is not None and t.limit < 1:
        raise ConfigError("train.limit must be >= 1")
    if cfg.eval.limit is not None and cfg.eval.limit < 1:
        raise ConfigError(f"eval.limit must be >= 1 (null: the whole test set), got {cfg.eval.limit}")
    if t.augment_shift < 0:
        raise ConfigError(f"train.augment_shift must be >= 0 (0: no augmentation), got {t.augment_shift}")
    if t.eval_every < 0:
        raise ConfigError(f"train.eval_every must be >= 0 (0: only at the end), got {t.eval_every}")
    if cfg.threads is not None and not 0 <= cfg.threads <= 1024:
        raise ConfigError(f"threads must lie in 1..1024 (null or 0: torch's choice), got {cfg.threads}")
    if cfg.data.dataset in DATASETS:  # a known dataset's image size is known before it is read
        check_image(cfg, DATASETS[cfg.data.dataset].shape)
    if t.checkpoint_batches < 0:
        raise ConfigError("train.checkpoint_batches must be >= 0 (0: the resume state at the end of every epoch only)")
    spiking_conv = m.kind == "spiking" and bool(m.conv)
    if t.hebbian.update == "presentation" and not spiking_conv:
        raise ConfigError("train.hebbian.update=presentation is implemented for spiking conv nets (model.conv)")
    if t.hebbian_apply == "optimizer" and (not spiking_conv or t.hebbian.update != "presentation"):
        raise ConfigError(
            "train.hebbian_apply=optimizer steps once per presentation of a spiking conv net: "
            "it needs model.conv and train.hebbian.update=presentation"
        )


def _validate_optimizer(o: OptimizerConfig) -> None:
    if not (math.isfinite(o.lr) and o.lr > 0):
        raise ConfigError(f"train.optimizer.lr must be a finite number > 0, got {o.lr}")
    if not (math.isfinite(o.weight_decay) and o.weight_decay >= 0):
        raise ConfigError(f"train.optimizer.weight_decay must be a finite number >= 0, got {o.weight_decay}")
    if not 0 <= o.momentum < 1:
        raise ConfigError(f"train.optimizer.momentum must lie in [0, 1), got {o.momentum}")


def check_image(cfg: RunConfig, shape: tuple[int, int]) -> None:
    """ConfigError unless the moves of ``model.shift_views`` and ``train.augment_shift`` stay
    below the smaller side of the images ``shape`` (H, W), as ``--views`` is checked: a larger
    move leaves nothing of the image."""
    shape = tuple(int(v) for v in shape)
    try:
        check_views(cfg.model.shift_views, shape)
    except ValueError as exc:
        raise ConfigError(f"model.{exc}") from exc
    if cfg.train.augment_shift >= min(shape):
        raise ConfigError(
            f"train.augment_shift {cfg.train.augment_shift} must be below the image's smaller side "
            f"({min(shape)} of {shape})"
        )


def _validate_readout(cfg: RunConfig) -> None:
    """What ``train.readout`` needs (a conv net's grid is checked against its maps when the net
    is built, before training)."""
    m, r = cfg.model, cfg.train.readout
    if m.conv and not (m.kind == "spiking" and m.probability.competitive):
        raise ConfigError(
            "train.readout on a conv net reads the image's activity without a label: it needs a spiking "
            "competitive net (model.kind=spiking, model.probability.kind=competitive)"
        )
    if m.kind == "spiking" and not m.conv:
        raise ConfigError("train.readout is available for analog dense nets and competitive spiking conv nets")
    if r.epochs < 1 or not 0 < r.lr < math.inf or not 0 <= r.weight_decay < math.inf:
        raise ConfigError("train.readout needs epochs >= 1, lr > 0 and weight_decay >= 0")
    if r.layers is not None and (not r.layers or any(not 0 <= i < len(m.conv or m.layers) for i in r.layers)):
        raise ConfigError("train.readout.layers must name existing layers (at least one)")
    if r.layers is not None and len(set(r.layers)) != len(r.layers):
        raise ConfigError("train.readout.layers names a layer twice")
    if r.grid is not None and (not m.conv or isinstance(r.grid, bool) or r.grid < 1):
        raise ConfigError("train.readout.grid is an integer >= 1 of a conv net's readout (null: the smallest map)")


def _validate_conv(cfg: RunConfig) -> None:
    """What a conv net (``model.conv`` set) needs; the image size is checked when it is built."""
    m, t = cfg.model, cfg.train
    if m.layers:
        raise ConfigError("model.conv builds a conv-only network: set model.layers: []")
    if m.kind == "analog" and t.learner != "local-loss":
        raise ConfigError("an analog model.conv net trains with train.learner=local-loss")
    if m.probability.competitive and not m.goodness_over.startswith("group:"):
        raise ConfigError("competitive probability needs one channel group per class: model.goodness_over=group:C")
    if m.kind == "analog" and m.embedding.kind != "onehot" and not m.probability.competitive:
        raise ConfigError("an analog model.conv net writes the label into the image: set model.embedding.kind=onehot")
    if m.kind == "spiking" and m.encoder.carry_membrane:
        raise ConfigError(
            "a spiking model.conv net starts every presentation from rest: set model.encoder.carry_membrane=false"
        )
    if m.kind == "spiking" and t.draws != "stream":
        raise ConfigError("a spiking model.conv net trains in one process: use train.draws=stream")
    if m.kind == "spiking" and not cfg.eval.share_image_spikes:
        raise ConfigError(
            "a spiking model.conv net scores every label on one draw of image spikes: "
            "eval.share_image_spikes must stay true"
        )
    for i, c in enumerate(m.conv):
        key = f"model.conv[{i}]"
        if min(c.channels, c.kernel, c.stride, c.pool_size) < 1 or c.padding < 0:
            raise ConfigError(f"{key}: channels, kernel, stride and pool_size must be >= 1, padding >= 0")
        if c.pool not in (None, "max", "avg"):
            raise ConfigError(f"{key}.pool must be one of max, avg or null; got {c.pool!r}")
        if m.probability.split and c.channels % 2:
            kind = m.probability.kind
            raise ConfigError(f"{kind} probability splits channels in halves: {key}.channels must be even")
        try:  # a channel-group region must split every layer's channels evenly
            goodness_groups(m.goodness_over, (c.channels,), m.probability.split)
        except ValueError as exc:
            raise ConfigError(f"{key}.channels: {exc}") from exc


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level, keys joined by dots (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _coerce(tp, value, key: str):
    """Check ``value`` against annotation ``tp`` (ints may stand for floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(args[0], v, key) for v in value]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML reads "1e-5" (no dot) as a string; accept any float literal.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for k, v in data.items():
        value = kwargs[k] = _coerce(hints[k], v, prefix + k)
        allowed = CHOICES.get(prefix + k)
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{prefix}{k} must be one of {', '.join(allowed)}; got {value!r}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:  # a parameter class checking its own ranges
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {exc}") from exc


def config_from_dict(data: dict) -> RunConfig:
    """Build and validate a ``RunConfig`` from plain data."""
    if not isinstance(data, dict):
        raise ConfigError("a config must be a mapping at the top level")
    return _build(RunConfig, data).validate()


def _set_path(data: dict, key: str, value) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key}: {p} is not a section")
    node[parts[-1]] = value


def _parse_yaml(text: str, where: str, invalid: str = "not valid YAML"):
    """``text`` as YAML (:func:`~spikingjelly_ff.runs.strict_yaml.parse_yaml`), or a ConfigError."""
    try:
        return parse_yaml(text, where, invalid)
    except YAMLInputError as exc:
        raise ConfigError(str(exc)) from exc


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` strings (values parsed as YAML) to a config mapping."""
    if not isinstance(data, dict):
        raise ConfigError("a config must be a mapping at the top level")
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        if not all(part.strip() for part in key.split(".")):
            raise ConfigError(f"--set expects key=value with a dotted key (train.epochs=3), got {item!r}")
        value = _parse_yaml(raw, f"--set {key}", f"cannot parse {raw!r}") if raw != "" else None
        _set_path(data, key.strip(), value)
    return data


#: The configs shipped with the package (package data), resolvable by name.
CONFIG_DIR = Path(__file__).parents[1] / "configs"


def shipped_configs() -> list[str]:
    """Names of the shipped configs (``paper/analog-sigmoid``, ...), sorted."""
    return sorted(str(c.relative_to(CONFIG_DIR).with_suffix("")) for c in CONFIG_DIR.rglob("*.yaml"))


def resolve_config(path: str | Path) -> Path:
    """A config file path, or the name of a shipped config (``paper/analog-sigmoid``)."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = CONFIG_DIR / (str(path) if str(path).endswith(".yaml") else f"{path}.yaml")
    if shipped.is_file():
        return shipped
    if p.is_dir() or (CONFIG_DIR / str(path)).is_dir():
        raise ConfigError(f"config {path} is a directory, not a file (or one of: {', '.join(shipped_configs())})")
    raise ConfigError(f"config {path} not found (a file path, or one of: {', '.join(shipped_configs())})")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML/JSON config file (or a shipped config's name, or defaults) and apply overrides."""
    data: dict = {}
    if path is not None:
        p = resolve_config(path)
        data = _parse_yaml(p.read_text(), str(p))
        if data is None:  # an empty file: the defaults
            data = {}
        elif not isinstance(data, dict):
            got = f"{type(data).__name__} {_short(data)}"
            raise ConfigError(f"{p}: a config must be a mapping at the top level, got {got}")
    return config_from_dict(apply_overrides(data, overrides or []))


def _short(value, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."
