"""The spike-runtime artefact: one HDF5 file = a NIR graph + what NIR cannot hold.

Layout (readable by ``nir.read``, which looks at ``/version`` and ``/node`` only)::

    /version                        NIR version string
    /node                           NIRGraph: Input -> (Linear -> LIF) x L -> Output
    /spikingjelly_ff                attrs: format, format_version
        meta                        JSON: neuron, trace, encoder, probability, goodness,
                                    score, embedding, sizes, hebbian defaults, versions
        label_patterns              [C, bits] uint8 (pattern embedding only)
        eligibility/<i>             [H, D] float32 (optional: state of on-line learning)
        readout/weight, /bias       [C, F], [C] float32 (conv nets with a readout, meta
                                    conv.readout: it reads trace maps, which NIR has no node for)

A spiking conv net (format version 2, meta ``conv``; 3 without label input, 4 when scored over
shifted views) has image and label inputs and Conv2d -> LIF -> pooling nodes per layer instead
(see ``conv_artifact``); its weights are the conv weights, then the label weights, of every layer.

NIR's LIF is continuous-time; a discrete layer maps with dt = 1e-4 s as SpikingJelly's
NIR exchange does: tau = tau_steps * dt, r = tau_steps (input not decayed) or 1.
Everything here needs numpy and h5py only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from spikingjelly_ff.functional.labels import LabelCode
from spikingjelly_ff.functional.params import (
    EmbeddingParams,
    EncoderParams,
    EvalParams,
    HebbianParams,
    NeuronParams,
    TraceParams,
)
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.functional.scores import check_scoring
from spikingjelly_ff.runtime.conv_artifact import SpikeConv, read_conv_weights, write_conv_nodes
from spikingjelly_ff.runtime.files import write_atomic
from spikingjelly_ff.runtime.userblock import (
    HDF5_SIGNATURE,
    MAGIC,
    USERBLOCK,
    check_userblock,
    probe_unchecked,
    stamp_userblock,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "ArtifactError", "SpikeArtifact", "read_artifact", "write_artifact"]

FORMAT = "spikingjelly-ff/spike"
FORMAT_VERSION = 1
#: conv artefacts: a runtime that predates them refuses them by their version
CONV_FORMAT_VERSION = 2
#: conv artefacts without label input (competitive nets), likewise
UNLABELLED_CONV_FORMAT_VERSION = 3
#: conv artefacts scored over shifted views: a runtime that predates views would score the image
#: alone and give other answers, so it refuses them
VIEWS_CONV_FORMAT_VERSION = 4
#: conv artefacts classified by a linear readout: likewise, an older runtime would use the goodness
READOUT_CONV_FORMAT_VERSION = 5
READ_VERSIONS = (
    FORMAT_VERSION, CONV_FORMAT_VERSION, UNLABELLED_CONV_FORMAT_VERSION, VIEWS_CONV_FORMAT_VERSION,
    READOUT_CONV_FORMAT_VERSION,
)  # fmt: skip
NIR_VERSION = "1.0.8"
DT = 1e-4
REQUIRED_META = (
    "neuron",
    "trace",
    "encoder",
    "probability",
    "goodness",
    "score",
    "score_layers",
    "embedding",
    "in_features",
    "num_classes",
    "layers",
)


class ArtifactError(ValueError):
    """The file is not a valid spikingjelly-ff spike artefact."""


@dataclass
class SpikeArtifact:
    """A spiking FF network as numpy arrays and typed settings (the meta JSON holds each
    settings object as a mapping of its fields)."""

    weights: list[np.ndarray]
    neuron: NeuronParams
    trace: TraceParams
    encoder: EncoderParams
    probability: Probability
    goodness: str
    score: str
    score_layers: list[int]
    embedding: EmbeddingParams
    in_features: int
    num_classes: int
    label_patterns: np.ndarray | None = None
    image_shape: list[int] | None = None
    hebbian: HebbianParams = field(default_factory=HebbianParams)
    eligibility: list[np.ndarray] | None = None
    evaluation: EvalParams = field(default_factory=EvalParams)
    model_version: int = 1
    name: str = "model"
    library_version: str = ""
    #: the conv layers of a spiking conv net (None: dense layers)
    conv: SpikeConv | None = None
    #: (weight [C, F], bias [C]) of the readout that ``conv.readout`` describes; fixed while
    #: the runtime learns on-line (the Hebbian rule changes ``weights`` only)
    readout: tuple[np.ndarray, np.ndarray] | None = None
    #: SHA-256 of the file's bytes this was read from (None: built in memory, or weights
    #: changed since); the server ties a model's learning state to it
    source_sha256: str | None = field(default=None, compare=False, repr=False)

    @property
    def format_version(self) -> int:
        if self.conv is None:
            return FORMAT_VERSION
        if self.conv.readout is not None:
            return READOUT_CONV_FORMAT_VERSION
        if self.conv.shift_views:
            return VIEWS_CONV_FORMAT_VERSION
        return CONV_FORMAT_VERSION if self.conv.labelled else UNLABELLED_CONV_FORMAT_VERSION

    @property
    def num_layers(self) -> int:
        return len(self.weights) if self.conv is None else len(self.conv.layers)

    def layer_names(self) -> list[str]:
        """The NIR nodes that hold :attr:`weights`, in order."""
        return [f"linear_{i}" for i in range(len(self.weights))] if self.conv is None else self.conv.node_names()

    def label_code(self) -> LabelCode:
        """The label embedding (raises :class:`ArtifactError` when the patterns do not fit it)."""
        emb = self.embedding
        p = self.label_patterns
        if emb.kind == "pattern" and (p is None or p.shape != (self.num_classes, emb.bits)):
            raise ArtifactError(
                f"label patterns must have shape ({self.num_classes}, {emb.bits}), got {None if p is None else p.shape}"
            )
        try:
            return LabelCode(emb.kind, self.num_classes, p if emb.kind == "pattern" else None, emb.scale)
        except ValueError as exc:
            raise ArtifactError(f"invalid label embedding: {exc}") from exc

    def input_width(self) -> int:
        return self.label_code().input_width(self.in_features)

    def label_width(self) -> int:
        """Label positions L of a conv net's label input: the code's width, or 0 for a
        channel-wise competitive net, which sees no label."""
        return 0 if self.probability.competitive else self.label_code().width

    def meta(self) -> dict:
        meta = {
            "format": FORMAT,
            "format_version": self.format_version,
            "library_version": self.library_version,
            "name": self.name,
            "model_version": self.model_version,
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "dt": DT,
            "layers": self.layer_names(),
            "neuron": self.neuron.to_dict(),
            "trace": self.trace.to_dict(),
            "encoder": self.encoder.to_dict(),
            "probability": self.probability.to_dict(),
            "goodness": self.goodness,
            "score": self.score,
            "score_layers": list(self.score_layers),
            "embedding": _embedding_meta(self.embedding),
            "in_features": self.in_features,
            "num_classes": self.num_classes,
            "image_shape": self.image_shape,
            "hebbian": self.hebbian.to_dict(),
            "evaluation": self.evaluation.to_dict(),
        }
        if self.conv is not None:
            meta["conv"] = self.conv.to_dict()
        return meta

    def validate(self) -> SpikeArtifact:
        if not self.weights:
            raise ArtifactError("the network has no layers")
        if self.probability.competitive and self.conv is None:
            raise ArtifactError("a competitive probability needs conv layers (one channel group per class)")
        if self.hebbian.update != "step" and self.conv is None:
            raise ArtifactError(f"a dense network learns with hebbian.update=step, not {self.hebbian.update!r}")
        width = self.input_width()  # checks the label patterns too
        if self.conv is not None:
            self._validate_conv()
        elif self.readout is not None:
            raise ArtifactError("a readout is available for conv nets only")
        for i, w in enumerate(self.weights if self.conv is None else []):
            if w.ndim != 2:
                raise ArtifactError(f"layer {i}: weight must be 2-D, got shape {w.shape}")
            if w.shape[1] != width:
                raise ArtifactError(f"layer {i}: weight expects {w.shape[1]} inputs but receives {width}")
            if not np.all(np.isfinite(w)):
                raise ArtifactError(f"layer {i}: weight holds non-finite values")
            width = w.shape[0]
        if self.eligibility is not None and [e.shape for e in self.eligibility] != [w.shape for w in self.weights]:
            raise ArtifactError("eligibility traces do not match the weights")
        if self.eligibility is not None and not all(np.all(np.isfinite(e)) for e in self.eligibility):
            raise ArtifactError("eligibility traces hold non-finite values")  # the first update would spread them
        try:
            self.score_layers = list(check_scoring(self.score, self.goodness, self.score_layers, self.num_layers))
        except ValueError as exc:
            raise ArtifactError(str(exc)) from exc
        return self

    def check_learning(self, steps: int | None = None) -> None:
        """ValueError when on-line learning would change nothing: the learning window
        (steps t > ``learn_after``) is empty for a presentation of ``steps`` (default: the
        encoder's) steps."""
        steps = self.encoder.steps if steps is None else steps
        after = self.hebbian.learn_after
        if after >= steps - 1:
            raise ValueError(
                f"this model cannot learn: its learning window starts after step {after} but a presentation "
                f"has {steps} steps (export it with hebbian.learn_after < {steps - 1})"
            )

    def _validate_conv(self) -> None:
        if self.image_shape is not None and int(np.prod(self.image_shape)) != self.in_features:
            raise ArtifactError(f"image shape {self.image_shape} does not hold {self.in_features} inputs")
        competitive = self.probability.competitive
        if competitive and self.conv.over != f"group:{self.num_classes}":
            raise ArtifactError(
                f"a competitive probability needs one channel group per class (over 'group:{self.num_classes}'), "
                f"got {self.conv.over!r}"
            )
        if competitive == self.conv.labelled:  # a competitive net, and only one, sees no label
            raise ArtifactError(
                "a competitive conv net has no label input" if competitive
                else "a conv net without label input needs the competitive probability"
            )  # fmt: skip
        why = self.conv.check(self.weights, self.image_shape, self.label_width(), self.probability.split)
        if why is not None:
            raise ArtifactError(why)
        for i, w in enumerate(self.weights):
            if not np.all(np.isfinite(w)):
                raise ArtifactError(f"weight array {i} holds non-finite values")
        spec = self.conv.readout
        if (spec is None) != (self.readout is None):
            raise ArtifactError("the readout's settings (meta conv.readout) and its arrays come together")
        if spec is not None:
            w, b = self.readout
            want = (self.num_classes, spec.width(self.conv.layers))
            if np.shape(w) != want or np.shape(b) != (self.num_classes,):
                raise ArtifactError(f"readout weight {np.shape(w)} and bias {np.shape(b)}: expected {want} and "
                                    f"({self.num_classes},)")  # fmt: skip
            if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
                raise ArtifactError("the readout holds non-finite values")


def _embedding_meta(e: EmbeddingParams) -> dict:
    # The seed is a training setting: the patterns it drew are stored themselves.
    return {"kind": e.kind, "bits": e.bits, "density": e.density, "scale": e.scale}


def _lif_params(p: NeuronParams, h: int | tuple[int, ...]) -> dict[str, np.ndarray]:
    """NIR LIF parameters of ``h`` neurons (or a map of that shape)."""
    if p.form == "beta":
        tau_steps, r, leak = 1.0 / (1.0 - p.beta), 1.0 / (1.0 - p.beta), 0.0
    else:
        tau_steps, r, leak = p.tau, (1.0 if p.decay_input else p.tau), p.v_rest

    def full(v: float) -> np.ndarray:
        return np.full(h, v, dtype=np.float32)

    return {
        "tau": full(tau_steps * DT),
        "r": full(r),
        "v_leak": full(leak),
        "v_threshold": full(p.v_threshold),
        # NIR 1.0's LIF knows only a hard reset: a soft one is marked NaN (the meta is exact)
        "v_reset": full(np.nan if p.soft_reset else p.v_reset),
    }


def _write_dense_nodes(nodes, strings, art: SpikeArtifact) -> list[tuple[str, str]]:
    """Input -> (Linear -> LIF) x L -> Output into the h5py group ``nodes``; returns the edges."""
    names = ["input"]
    g = nodes.create_group("input")
    g.create_dataset("type", data="Input", dtype=strings)
    g.create_dataset("shape", data=np.array([art.input_width()], dtype=np.int64))
    for i, w in enumerate(art.weights):
        g = nodes.create_group(f"linear_{i}")
        g.create_dataset("type", data="Linear", dtype=strings)
        g.create_dataset("weight", data=np.asarray(w, dtype=np.float32))
        g = nodes.create_group(f"lif_{i}")
        g.create_dataset("type", data="LIF", dtype=strings)
        for k, v in _lif_params(art.neuron, w.shape[0]).items():
            g.create_dataset(k, data=v)
        names += [f"linear_{i}", f"lif_{i}"]
    g = nodes.create_group("output")
    g.create_dataset("type", data="Output", dtype=strings)
    g.create_dataset("shape", data=np.array([art.weights[-1].shape[0]], dtype=np.int64))
    names.append("output")
    return list(zip(names, names[1:]))


def write_artifact(path: str | os.PathLike, art: SpikeArtifact) -> Path:
    """Write ``art`` to ``path`` atomically (temp file, fsync, rename)."""
    art.validate()
    return write_atomic(path, partial(_write_h5, art=art))


def _write_h5(tmp: Path, art: SpikeArtifact) -> None:
    import h5py

    strings = h5py.string_dtype()
    with h5py.File(tmp, "w", userblock_size=USERBLOCK) as f:
        f.create_dataset("version", data=NIR_VERSION, dtype=strings)
        node = f.create_group("node")
        node.create_dataset("type", data="NIRGraph", dtype=strings)
        nodes = node.create_group("nodes")
        if art.conv is not None:
            width = art.label_width()
            edges = write_conv_nodes(nodes, strings, art.conv, art.weights, width, partial(_lif_params, art.neuron))
        else:
            edges = _write_dense_nodes(nodes, strings, art)
        node.create_dataset("edges", data=np.array(edges, dtype=object), dtype=strings)
        ours = f.create_group("spikingjelly_ff")
        ours.attrs["format"] = FORMAT
        ours.attrs["format_version"] = art.format_version
        meta_text = json.dumps(art.meta(), sort_keys=True)
        ours.create_dataset("meta", data=meta_text, dtype=strings)
        ours.attrs["sha256"] = _digest(meta_text, art.weights, art.eligibility, art.label_patterns, art.readout)
        if art.label_patterns is not None:
            ours.create_dataset("label_patterns", data=np.asarray(art.label_patterns, dtype=np.uint8))
        if art.eligibility is not None:
            el = ours.create_group("eligibility")
            for i, e in enumerate(art.eligibility):
                el.create_dataset(str(i), data=np.asarray(e, dtype=np.float32))
        if art.readout is not None:
            ro = ours.create_group("readout")
            for name, a in zip(("weight", "bias"), art.readout):
                ro.create_dataset(name, data=np.asarray(a, dtype=np.float32))
        f.flush()
    stamp_userblock(tmp)  # the sum of every byte HDF5 will parse, checked before it parses them


def _text(ds) -> str:
    v = ds[()]
    return v.decode("utf8") if isinstance(v, bytes) else str(v)


def _digest(meta_text: str, weights, eligibility, patterns, readout) -> str:
    """SHA-256 of an artefact's content as this runtime holds it (the metadata's text, then
    every array as C-ordered bytes of its dtype): HDF5 keeps no checksum of its datasets, so a
    flipped byte in a weight would load."""
    h = hashlib.sha256(meta_text.encode())
    floats = [*weights, *(eligibility or []), *(readout or ())]
    arrays = [np.asarray(a, dtype=np.float32) for a in floats]
    arrays += [] if patterns is None else [np.asarray(patterns, dtype=np.uint8)]
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def read_artifact(path: str | os.PathLike) -> SpikeArtifact:
    """Read and validate an artefact; any defect raises :class:`ArtifactError`."""
    try:
        return _read_artifact(path)
    except ArtifactError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, UnicodeDecodeError, OSError, RuntimeError) as exc:
        # a damaged group, dataset or attribute the checks below did not name
        raise ArtifactError(f"{path}: damaged artefact ({type(exc).__name__}: {exc})") from exc


def read_artifact_unprobed(name: str | os.PathLike, data: bytes) -> SpikeArtifact:
    """:func:`read_artifact` of a file's bytes ``data`` (``name``: for messages), without the
    child-process probe of a file that carries no sum (``userblock.probe_unchecked`` runs
    this in its child)."""
    return _read_artifact(name, probe=False, data=data)


def _read_artifact(path: str | os.PathLike, probe: bool = True, data: bytes | None = None) -> SpikeArtifact:
    import h5py

    path = Path(path)
    if data is None:
        if path.is_dir():
            path = path / "model.nir"
        if not path.is_file():
            raise ArtifactError(f"{path}: no such file")
        # one reading of the bytes: the sum, the probe and HDF5 all see these, so a file
        # replaced or rewritten meanwhile cannot pass a check made on other bytes
        try:
            with open(path, "rb") as fh:
                data = fh.read(USERBLOCK)
                # a file that starts as no artefact does is refused before the rest is read
                # (someone's large data file, say); the check below says how
                if data.startswith((MAGIC, HDF5_SIGNATURE)):
                    data += fh.read()
        except OSError as exc:
            raise ArtifactError(f"{path}: cannot read the file: {exc}") from exc
    try:
        if not check_userblock(data, path) and probe:
            probe_unchecked(data, path)
    except ValueError as exc:
        raise ArtifactError(str(exc)) from exc
    try:
        f = h5py.File(io.BytesIO(data), "r")
    except OSError as exc:
        raise ArtifactError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {exc}") from exc
    with f:
        try:
            ours = f["spikingjelly_ff"]
            nodes = f["node"]["nodes"]
        except KeyError as exc:
            raise ArtifactError(f"{path}: not a spikingjelly-ff spike artefact (missing group {exc})") from exc
        if ours.attrs.get("format") != FORMAT:
            raise ArtifactError(f"{path}: unknown format {ours.attrs.get('format')!r}")
        version = int(ours.attrs.get("format_version", -1))
        if version not in READ_VERSIONS:
            raise ArtifactError(
                f"{path}: format version {version} is not supported "
                f"(this runtime reads {', '.join(map(str, READ_VERSIONS))})"
            )
        stored_digest = ours.attrs.get("sha256")  # absent in files written before it
        try:
            meta_text = _text(ours["meta"])
            meta = json.loads(meta_text)
        except (KeyError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path}: metadata missing or not JSON ({exc})") from exc
        missing = [k for k in REQUIRED_META if k not in meta]
        if missing:
            raise ArtifactError(f"{path}: metadata lacks {', '.join(missing)}")
        try:
            conv = SpikeConv.from_dict(meta["conv"]) if "conv" in meta else None
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{path}: invalid conv settings: {exc!r}") from exc
        try:
            if conv is not None:
                weights = read_conv_weights(nodes, conv)  # ValueError: label nodes that must not be there
            else:
                weights = [np.asarray(nodes[name]["weight"][()], dtype=np.float32) for name in meta["layers"]]
        except KeyError as exc:
            raise ArtifactError(f"{path}: NIR graph lacks layer {exc}") from exc
        except ValueError as exc:
            raise ArtifactError(f"{path}: {exc}") from exc
        except OSError as exc:
            raise ArtifactError(f"{path}: cannot read weights (truncated?): {exc}") from exc
        patterns = ours["label_patterns"][()] if "label_patterns" in ours else None
        eligibility = None
        if "eligibility" in ours:
            el = ours["eligibility"]
            eligibility = [np.asarray(el[str(i)][()], dtype=np.float32) for i in range(len(weights))]
        readout = None
        if "readout" in ours:
            try:
                readout = tuple(np.asarray(ours["readout"][k][()], dtype=np.float32) for k in ("weight", "bias"))
            except KeyError as exc:
                raise ArtifactError(f"{path}: the readout lacks {exc}") from exc
            except OSError as exc:
                raise ArtifactError(f"{path}: cannot read the readout (truncated?): {exc}") from exc
    try:
        art = SpikeArtifact(
            weights=weights,
            neuron=NeuronParams(**meta["neuron"]),
            trace=TraceParams(**meta["trace"]),
            encoder=EncoderParams(**meta["encoder"]),
            probability=Probability(**meta["probability"]),
            goodness=meta["goodness"],
            score=meta["score"],
            score_layers=list(meta["score_layers"]),
            embedding=EmbeddingParams(**meta["embedding"]),
            in_features=int(meta["in_features"]),
            num_classes=int(meta["num_classes"]),
            label_patterns=patterns,
            image_shape=meta.get("image_shape"),
            hebbian=HebbianParams(**(meta.get("hebbian") or {})),
            eligibility=eligibility,
            evaluation=EvalParams(**(meta.get("evaluation") or {})),
            model_version=int(meta.get("model_version", 1)),
            name=str(meta.get("name", "model")),
            library_version=str(meta.get("library_version", "")),
            conv=conv,
            readout=readout,
            source_sha256=hashlib.sha256(data).hexdigest(),
        )
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: invalid settings: {exc}") from exc
    if art.format_version != version:  # e.g. a conv file edited to claim another kind
        raise ArtifactError(f"{path}: format version {version} does not match its content ({art.format_version})")
    art.validate()
    if stored_digest is not None:
        stored_digest = stored_digest.decode() if isinstance(stored_digest, bytes) else str(stored_digest)
        if _digest(meta_text, weights, eligibility, patterns, readout) != stored_digest:
            raise ArtifactError(f"{path}: the content does not match its checksum (damaged or edited)")
    return art
