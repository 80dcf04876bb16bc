"""``AnalogModel``: an exported analog FF network served by onnxruntime that can keep learning.

Inference runs the exported ONNX graph in onnxruntime. The weights are fed as graph inputs
(every weight initializer is also declared as an input), so an update swaps numpy arrays
instead of rebuilding the session. Learning is the exact Hebbian form of the FF gradient
(``hebbian.ff_hebbian_delta``) in numpy; ``save`` writes the updated weights back into the
ONNX file. Needs numpy, onnx and onnxruntime (no torch).

A conv export (``OnnxMeta.conv`` set) is served the same way; its weights are the kernels
``[C, I, KH, KW]`` then the label weights ``[L, C, OH, OW]``, stored in torch's layout, and
it learns with the conv rule of ``runtime.analog_conv``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from spikingjelly_ff.functional.analog import analog_layer, length_normalize
from spikingjelly_ff.functional.hebbian import ff_hebbian_delta
from spikingjelly_ff.functional.labels import LabelCode
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.functional.scores import summed_score
from spikingjelly_ff.kernels import apply_delta
from spikingjelly_ff.runtime.analog_compiled import CompiledScoring
from spikingjelly_ff.runtime.files import write_atomic
from spikingjelly_ff.runtime.lit_inputs import gather_lit_inputs
from spikingjelly_ff.runtime.onnx_checksum import stamp_digest, verify_digest
from spikingjelly_ff.runtime.onnx_meta import OnnxMeta, load_onnx_meta
from spikingjelly_ff.runtime.protocol import check_eta, check_images, check_targets, competitive_targets
from spikingjelly_ff.runtime.weight_folding import split_weight_only
from spikingjelly_ff.runtime.work_memory import WorkMemory, analog_work

__all__ = ["LIT_MAX_ROWS", "AnalogGraph", "AnalogModel", "OnnxMeta", "load_onnx_meta"]

#: batches of at most this many images skip their unlit inputs in the first layer
#: (``runtime.lit_inputs``): faster up to here, slower beyond (``benchmarks/lit_inputs.py``)
LIT_MAX_ROWS = 4
#: activations one onnxruntime call may hold (``work_memory.analog_work``): a larger batch runs
#: in parts, so that what it holds, and onnxruntime's arena (which keeps what it once grew
#: to), stay bounded whatever the batch
RUN_BYTES = 32 << 20


@dataclass(frozen=True, eq=False)
class AnalogGraph:
    """What every copy of a loaded analog model shares: the ONNX model, the onnxruntime
    sessions built from it and its settings. ``initial_weights`` (``[H, D]``, or a conv
    export's arrays in torch's layout) are the stored ones."""

    proto: object  # onnx.ModelProto as loaded
    meta: OnnxMeta
    weight_names: tuple[str, ...]
    weight_dtypes: tuple  # the graph may take some weights as float64 (exact), fed in that dtype
    initial_weights: tuple[np.ndarray, ...]
    session: object  # onnxruntime.InferenceSession of the per-call graph
    small: object  # the same graph for batches of at most LIT_MAX_ROWS images (lit_inputs)
    derive: object | None  # session computing the tensors that depend on the weights alone
    derive_inputs: tuple[str, ...]
    direct: tuple[str, ...]
    derived: tuple[str, ...]
    output_names: tuple[str, ...]
    compiled: CompiledScoring | None = None  # the kernel that scores small batches, where it covers the export
    work: WorkMemory | None = None  # what a call holds besides its images; work.rows_cap: rows per onnxruntime call
    #: SHA-256 of the file's bytes the graph was read from (None: built from a proto in memory)
    source_sha256: str | None = None

    @classmethod
    def build(cls, model_proto, threads: int | None = None) -> AnalogGraph:
        """The graph, sessions and settings of a loaded ``onnx.ModelProto``; ValueError for a
        model that is not a usable export (whatever part of onnx or onnxruntime found it out)."""
        try:
            return cls._build(model_proto, threads)
        except (ValueError, MemoryError):  # (no memory is no fault of the file)
            raise
        except Exception as exc:  # a damaged field: onnx's KeyError or TypeError, onnxruntime's Fail
            raise ValueError(f"not a usable spikingjelly-ff ONNX export ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def _build(cls, model_proto, threads: int | None) -> AnalogGraph:
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper

        verify_digest(model_proto)
        meta = load_onnx_meta(model_proto)
        _check_graph(model_proto, meta)
        inits = {t.name: t for t in model_proto.graph.initializer}
        names = list(meta.weight_names())
        missing = [n for n in names if n not in inits]
        if missing:
            raise ValueError(f"weights {missing} are missing from the graph")
        # [D, H] in the graph (MatMul x @ W^T); we keep W [H, D] like torch (conv: as stored).
        stored = [numpy_helper.to_array(inits[n]) for n in names]
        weights = tuple(np.ascontiguousarray(_layout(meta, a), dtype=np.float32) for a in stored)
        meta.check_weights([w.shape for w in weights])
        bad = [n for n, w in zip(names, weights) if not np.all(np.isfinite(w))]
        if bad:
            raise ValueError(f"weights {bad} hold non-finite values")
        # Declare the weights as inputs so each run can feed the current weights.
        served = onnx.ModelProto()
        served.CopyFrom(model_proto)
        existing = {i.name for i in served.graph.input}
        for name, a in zip(names, stored):
            if name not in existing:
                elem = inits[name].data_type
                served.graph.input.append(onnx.helper.make_tensor_value_info(name, elem, list(a.shape)))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # the weights are inputs on purpose; skip ORT's warning about it
        if threads:
            opts.intra_op_num_threads = threads
        # what depends on the weights alone runs once per weight version, not on every call
        split = split_weight_only(served, names)
        cpu = ["CPUExecutionProvider"]
        session = ort.InferenceSession(split.per_call.SerializeToString(), opts, providers=cpu)
        lit = gather_lit_inputs(split.per_call, [*split.direct, *split.derived])
        small = session
        if lit is not split.per_call:  # a rewritten copy: without the stored weights, which are always fed
            kept = [t for t in lit.graph.initializer if t.name not in split.direct]
            del lit.graph.initializer[:]
            lit.graph.initializer.extend(kept)
            small = ort.InferenceSession(lit.SerializeToString(), opts, providers=cpu)
        derive = None
        if split.derive is not None:
            derive = ort.InferenceSession(split.derive.SerializeToString(), opts, providers=cpu)
        output_names = tuple(o.name for o in session.get_outputs())
        return cls(
            proto=model_proto,
            meta=meta,
            weight_names=tuple(names),
            weight_dtypes=tuple(a.dtype for a in stored),
            initial_weights=weights,
            session=session,
            small=small,
            derive=derive,
            derive_inputs=tuple(i.name for i in derive.get_inputs()) if derive is not None else (),
            direct=tuple(split.direct),
            derived=tuple(split.derived),
            output_names=output_names,
            compiled=CompiledScoring.for_export(meta, output_names, stored[0].dtype if stored else None),
            work=graph_work(meta, weights, session),
        )

    def session_for(self, rows: int):
        """The session for a batch of ``rows`` images: a small batch's first-layer product
        reads only the weight rows of its lit inputs, which is what a lone call's cold caches
        pay for most; a larger batch lights most inputs and runs the plain product faster
        (``benchmarks/lit_inputs.py``)."""
        return self.small if rows <= LIT_MAX_ROWS else self.session

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``output_names`` (None: all) of the per-call graph for ``feeds`` (the images
        ``[N, D]`` and the weight feeds), on :meth:`session_for` the batch. It calls
        onnxruntime's binding itself where the session has one (``_sess``): the wrapper's checks
        of the feed names, which are always the same here, cost a lone call 15-20 µs on a cold
        core."""
        images = feeds["images"]
        names = list(self.output_names) if output_names is None else output_names
        rows = self.work.rows_cap if self.work is not None else None
        if rows is None or len(images) <= rows:
            session = self.session_for(len(images))
            return getattr(session, "_sess", session).run(names, feeds, None)
        # in parts, all on the plain session (a row's answer does not depend on its part's
        # size); every output is per image (graph_work splits no other graph), so they join
        run = getattr(self.session, "_sess", self.session).run
        parts = [run(names, {**feeds, "images": images[i : i + rows]}, None) for i in range(0, len(images), rows)]
        return [np.concatenate([part[j] for part in parts]) for j in range(len(names))]


def graph_work(meta: OnnxMeta, weights, session) -> WorkMemory:
    """:class:`WorkMemory` of an export with settings ``meta``, weights ``weights`` (dense
    ``[H, D]``; conv: the kernels first) run by ``session``. A batch runs in parts only where
    every output is per image (its first dimension the images' batch dimension): a graph with
    another output (a file not written by our export) runs whole."""
    outputs = session.get_outputs()
    batch = next(i.shape[0] for i in session.get_inputs() if i.name == "images")
    per_image = isinstance(batch, str) and all(o.shape and o.shape[0] == batch for o in outputs)
    views = 4 * meta.shift_views + 1
    if meta.conv is not None:
        layers = meta.conv.layers
        passes = 1 if meta.probability.competitive else meta.num_classes
        embedded = int(np.prod(layers[0].in_shape))
        units = [int(np.prod(la.map_shape)) for la in layers]
        patches = max(la.in_shape[0] * la.kernel**2 * la.map_shape[1] * la.map_shape[2] for la in layers)
    else:
        passes, embedded, patches = meta.num_classes, int(weights[0].shape[1]), 0
        units = [int(w.shape[0]) for w in weights]
    kept = sum(int(np.prod([d for d in o.shape[1:] if isinstance(d, int)] or [1])) for o in outputs)
    work = analog_work(views, passes, embedded, units, kept, RUN_BYTES, patches)
    return work if per_image else replace(work, rows_cap=None)


#: the graph outputs a runtime reads, with the shape each must declare (C: the classes)
OUTPUTS = {"scores": ("N", "C"), "label": ("N",)}


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def _check_graph(model_proto, meta: OnnxMeta) -> None:
    """ValueError unless the graph fits its metadata: it takes ``images`` ``[N, in_features]``,
    declares the outputs a runtime reads (:data:`OUTPUTS`) for ``num_classes`` classes, and
    ONNX's shape inference finds its own shapes consistent. A graph and settings that
    disagree would score with one and learn with the other."""
    import onnx

    graph = model_proto.graph
    inputs = {i.name: i for i in graph.input}
    if "images" not in inputs or _dims(inputs["images"])[1:] != [meta.in_features]:
        got = _dims(inputs["images"]) if "images" in inputs else "none"
        raise ValueError(f"the graph must take images [N, {meta.in_features}] as its metadata says, got {got}")
    outputs = {o.name: _dims(o) for o in graph.output}
    for name, shape in OUTPUTS.items():
        want = [meta.num_classes if d == "C" else None for d in shape]
        if name not in outputs or len(outputs[name]) != len(want) or outputs[name][1:] != want[1:]:
            raise ValueError(f"the graph must output {name} {list(shape)} for {meta.num_classes} classes, "
                             f"got {outputs.get(name, 'none')}")  # fmt: skip
    try:
        onnx.shape_inference.infer_shapes(model_proto, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises InferenceError and friends
        raise ValueError(f"the graph's shapes are inconsistent ({exc})") from exc


def _layout(meta: OnnxMeta, a: np.ndarray) -> np.ndarray:
    """A weight between the graph's layout and the runtime's (either way): dense weights are
    stored transposed (``[D, H]``, for ``x @ W``), a conv export's as the runtime keeps them."""
    return a if meta.conv is not None else a.T


class AnalogModel:
    """A loaded analog ONNX export. Images are ``[N, in_features]`` float32 in [0, 1].

    ``weights`` and ``eligibility`` are this model's own arrays; the graph, the sessions and
    the settings are shared (immutable) with its copies."""

    kind = "analog"

    def __init__(
        self,
        graph: AnalogGraph,
        weights: list[np.ndarray] | None = None,
        eligibility: list[np.ndarray] | None = None,
    ) -> None:
        self.graph = graph
        self.weights = [w.copy() for w in graph.initial_weights] if weights is None else weights
        self.eligibility = [np.zeros_like(w) for w in self._weights] if eligibility is None else eligibility

    @classmethod
    def from_proto(cls, model_proto, threads: int | None = None) -> AnalogModel:
        return cls(AnalogGraph.build(model_proto, threads))

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int | None = None) -> AnalogModel:
        import onnx

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        data = path.read_bytes()  # one reading: what is parsed is what source_sha256 names
        try:
            proto = onnx.load_model_from_string(data)
        except Exception as exc:  # onnx raises DecodeError and friends for corrupt files
            raise ValueError(f"{path}: not a readable ONNX file ({exc})") from exc
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            # an export is one file; weights elsewhere would escape its checksum and digest
            raise ValueError(f"{path}: keeps tensors in external data files; save the model as one file")
        graph = AnalogGraph.build(proto, threads)
        return cls(replace(graph, source_sha256=hashlib.sha256(data).hexdigest()))

    @property
    def source_sha256(self) -> str | None:
        """SHA-256 of the file's bytes this model was read from (None: not read from a file)."""
        return self.graph.source_sha256

    # -- settings (shared) ----------------------------------------------------------------------

    @property
    def settings(self) -> OnnxMeta:
        """The export's settings, typed."""
        return self.graph.meta

    @property
    def meta(self) -> dict:
        """The export's settings as their JSON object (for callers that read them by key)."""
        return self.graph.meta.to_dict()

    @property
    def session(self):
        return self.graph.session

    @property
    def weight_names(self) -> list[str]:
        return list(self.graph.weight_names)

    @property
    def output_names(self) -> list[str]:
        return list(self.graph.output_names)

    @property
    def probability(self) -> Probability:
        return self.graph.meta.probability

    @property
    def label_code(self) -> LabelCode:
        return self.graph.meta.label_code

    @property
    def eta(self) -> float:
        """Default learning rate of :meth:`learn` (the export's Hebbian settings)."""
        return float(self.graph.meta.hebbian.eta)

    @property
    def eligibility_tau(self) -> float | None:
        return self.graph.meta.hebbian.eligibility_tau

    @property
    def num_classes(self) -> int:
        return self.settings.num_classes

    @property
    def in_features(self) -> int:
        return self.settings.in_features

    def copy(self) -> AnalogModel:
        """An independent model with copied weights and eligibility sharing this one's sessions."""
        return AnalogModel(self.graph, [w.copy() for w in self.weights], [e.copy() for e in self.eligibility])

    def _check_images(self, x: np.ndarray) -> np.ndarray:
        # no range check: the ONNX graph scores any finite input, as the exported net does
        return check_images(x, self.in_features, unit_range=False)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """All graph outputs (scores, probability, goodness, label, ...) for images ``[N, D]``."""
        return self.forward(self._check_images(x))

    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`run` for images already checked (``[N, D]`` float32, C-contiguous): the
        compiled kernel where it covers the export and the batch (``runtime.analog_compiled``),
        else the graph in onnxruntime."""
        compiled = self.graph.compiled
        if compiled is not None and compiled.takes(x):
            return compiled.score(x, self.compiled_terms())
        feeds = {"images": x, **self.weight_feeds()}
        return dict(zip(self.graph.output_names, self.graph.run(None, feeds)))

    def prepare(self) -> None:
        """Compute now what the current weights need on every call (the graph's weight feeds,
        the kernel's terms), as a server does when it publishes a version."""
        self.weight_feeds()
        if self.graph.compiled is not None:
            self.compiled_terms()

    @property
    def weights(self) -> list[np.ndarray]:
        """Weights ``[H, D]`` float32 per layer (a conv export: the kernels, then the label
        weights). Assign a new list (or call :meth:`learn`) to change them; arrays changed in
        place by other code must be re-assigned."""
        return self._weights

    @weights.setter
    def weights(self, value: list[np.ndarray]) -> None:
        self._weights = list(value)
        self._changed()

    def _changed(self) -> None:
        """The weights changed: what was derived from them is recomputed on the next call."""
        self._feeds = None
        self._terms = None

    def compiled_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """The compiled kernel's weight terms (:meth:`CompiledScoring.terms`), once per version."""
        if self._terms is None:
            self._terms = self.graph.compiled.terms(self._weights[0])
        return self._terms

    def weight_feeds(self) -> dict[str, np.ndarray]:
        """Weight inputs of :attr:`session`, computed once per weight version: the weights the
        graph reads (``[D, H]``, contiguous, in each weight's stored dtype) and the tensors
        derived from the weights alone (see ``weight_folding``)."""
        if self._feeds is None:
            g = self.graph
            layers = zip(g.weight_names, self._weights, g.weight_dtypes)
            full = {n: np.ascontiguousarray(_layout(g.meta, w), dtype=dt) for n, w, dt in layers}
            feeds = {n: full[n] for n in g.direct}
            if g.derive is not None:
                values = g.derive.run(list(g.derived), {n: full[n] for n in g.derive_inputs})
                feeds.update(zip(g.derived, values))
            self._feeds = feeds
        return self._feeds

    def working_memory(self, steps: int | None = None, latent: bool = False) -> WorkMemory:
        """Bytes a call holds besides its images (an estimate of onnxruntime's activations);
        ``steps`` and ``latent`` are a spiking model's and change nothing here."""
        return self.graph.work

    def scores(self, x: np.ndarray, seed: int | None = None) -> np.ndarray:
        return self.run(x)["scores"]

    def predict(self, x: np.ndarray, seed: int | None = None) -> np.ndarray:
        return self.run(x)["label"]

    def embed(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Embedded inputs ``[N, D']`` for images ``[N, D]`` and labels ``[N]``."""
        return self.label_code.embed(x, labels)

    def learn(
        self, x: np.ndarray, labels: np.ndarray, positive: np.ndarray, seed: int | None = None, eta: float | None = None
    ) -> np.ndarray:
        """One Hebbian update of every layer from images shown with ``labels``; ``positive``
        says whether each label is the true one. Returns the summed log-odds before learning
        (a competitive conv net, which learns from true labels only, ``positive`` all 1: the
        margin of each label's summed log-probability over the best other class; > 0 means
        right in both cases)."""
        x = self._check_images(x)
        y = check_targets(positive, x.shape[0])
        eta = check_eta(eta, self.eta)
        tau = self.eligibility_tau
        meta = self.settings
        if meta.conv is not None:
            from spikingjelly_ff.runtime.analog_conv import conv_learn

            if self.probability.competitive:  # plain images, the true classes as targets
                inp, y = x, competitive_targets(self.label_code, labels, y)
            else:
                inp = self.embed(x, labels)
            log_odds = conv_learn(meta, self.weights, self.eligibility, inp, y, eta, tau)
            self._changed()
            return log_odds
        goodness_kind = meta.goodness
        inp = self.embed(x, labels)
        acts = []
        for layer, w, e in zip(meta.layers, self.weights, self.eligibility):
            pre = length_normalize(inp) if layer.normalize_input else inp
            post = analog_layer(pre, w)
            acts.append(post)
            apply_delta(w, ff_hebbian_delta(self.probability, post, pre, y, goodness_kind), eta, tau, e)
            inp = post
        self._changed()
        voting = [i for i in range(len(acts)) if i in meta.score_layers]  # each layer once, in order
        return summed_score(acts, voting, self.probability, goodness_kind)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ONNX file with the current weights (atomically); refused where a weight is
        not finite (the file would not load)."""
        import onnx
        from onnx import numpy_helper

        if not all(np.all(np.isfinite(w)) for w in self.weights):
            raise ValueError("the weights hold non-finite values: not saved")

        proto = onnx.ModelProto()
        proto.CopyFrom(self.graph.proto)
        by_name = {t.name: i for i, t in enumerate(proto.graph.initializer)}
        for name, w, dt in zip(self.graph.weight_names, self.weights, self.graph.weight_dtypes):
            proto.graph.initializer[by_name[name]].CopyFrom(
                numpy_helper.from_array(np.ascontiguousarray(_layout(self.graph.meta, w), dtype=dt), name)
            )
        stamp_digest(proto)
        return write_atomic(path, lambda tmp: tmp.write_bytes(proto.SerializeToString()))
