"""``AnalogModel``: an exported analog FF network served by onnxruntime that can keep learning.

Inference runs the exported ONNX graph in onnxruntime. The weights are fed as graph inputs
(every weight initializer is also declared as an input), so an update swaps numpy arrays
instead of rebuilding the session. Learning is the exact Hebbian form of the FF gradient
(``hebbian.ff_hebbian_delta``) in numpy; ``save`` writes the updated weights back into the
ONNX file. Needs numpy, onnx and onnxruntime (no torch).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..hebbian import ff_hebbian_delta
from ..probability import Probability
from .weight_folding import split_weight_only

__all__ = ["AnalogModel", "load_onnx_meta"]


def load_onnx_meta(model) -> dict:
    props = {p.key: p.value for p in model.metadata_props}
    if "spikingjelly_ff" not in props:
        raise ValueError("this ONNX file was not exported by spikingjelly-ff (no spikingjelly_ff metadata)")
    meta = json.loads(props["spikingjelly_ff"])
    if meta.get("kind") != "analog":
        raise ValueError(f"expected an analog model, the file holds a {meta.get('kind')!r} model")
    return meta


class AnalogModel:
    """A loaded analog ONNX export. Images are ``[N, in_features]`` float32 in [0, 1]."""

    def __init__(self, model_proto, threads: int | None = None) -> None:
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper

        self.meta = load_onnx_meta(model_proto)
        inits = {t.name: t for t in model_proto.graph.initializer}
        self.weight_names = [layer["weight"] for layer in self.meta["layers"]]
        missing = [n for n in self.weight_names if n not in inits]
        if missing:
            raise ValueError(f"weights {missing} are missing from the graph")
        # [D, H] in the graph (MatMul x @ W^T); we keep W [H, D] like torch.
        stored = [numpy_helper.to_array(inits[n]) for n in self.weight_names]
        # float32 weights; the graph may take some as float64 (exact), fed in that dtype
        self.weight_dtypes = [a.dtype for a in stored]
        self.weights = [np.ascontiguousarray(a.T, dtype=np.float32) for a in stored]
        h = self.meta.get("hebbian") or {}
        self.eta = float(h.get("eta", 0.1))
        self.eligibility_tau = h.get("eligibility_tau", 0.1)
        self.eligibility = [np.zeros_like(w) for w in self.weights]
        self.probability = Probability(**self.meta["probability"])
        emb = self.meta["embedding"]
        scale = np.float32(emb.get("scale", 1.0))
        self.patterns = None if emb["patterns"] is None else np.asarray(emb["patterns"], dtype=np.float32) * scale
        # Declare the weights as inputs so each run can feed the current weights.
        served = onnx.ModelProto()
        served.CopyFrom(model_proto)
        existing = {i.name for i in served.graph.input}
        for name, w in zip(self.weight_names, self.weights):
            if name not in existing:
                elem = {t.name: t.data_type for t in model_proto.graph.initializer}[name]
                served.graph.input.append(onnx.helper.make_tensor_value_info(name, elem, list(w.T.shape)))
        self._proto = model_proto
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # the weights are inputs on purpose; skip ORT's warning about it
        if threads:
            opts.intra_op_num_threads = threads
        # what depends on the weights alone runs once per weight version, not on every call
        split = split_weight_only(served, self.weight_names)
        self._direct, self._derived = split.direct, split.derived
        cpu = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(split.per_call.SerializeToString(), opts, providers=cpu)
        self._derive = None
        if split.derive is not None:
            self._derive = ort.InferenceSession(split.derive.SerializeToString(), opts, providers=cpu)
            self._derive_inputs = [i.name for i in self._derive.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int | None = None) -> AnalogModel:
        import onnx

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError and friends for corrupt files
            raise ValueError(f"{path}: not a readable ONNX file ({exc})") from exc
        return cls(proto, threads)

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def in_features(self) -> int:
        return int(self.meta["in_features"])

    def copy(self) -> AnalogModel:
        clone = AnalogModel.__new__(AnalogModel)
        clone.__dict__.update(self.__dict__)
        clone.weights = [w.copy() for w in self.weights]
        clone.eligibility = [e.copy() for e in self.eligibility]
        return clone

    def _check_images(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"images must have shape [N, {self.in_features}], got {list(x.shape)}")
        if not np.all(np.isfinite(x)):
            raise ValueError("images contain NaN or Inf")
        return x

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """All graph outputs (scores, probability, goodness, label, ...) for images ``[N, D]``."""
        feeds = {"images": self._check_images(x), **self.weight_feeds()}
        return dict(zip(self.output_names, self.session.run(None, feeds)))

    @property
    def weights(self) -> list[np.ndarray]:
        """Weights ``[H, D]`` float32 per layer. Assign a new list (or call :meth:`learn`)
        to change them; arrays changed in place by other code must be re-assigned."""
        return self._weights

    @weights.setter
    def weights(self, value: list[np.ndarray]) -> None:
        self._weights = list(value)
        self._feeds = None

    def weight_feeds(self) -> dict[str, np.ndarray]:
        """Weight inputs of :attr:`session`, computed once per weight version: the weights the
        graph reads (``[D, H]``, contiguous, in each weight's stored dtype) and the tensors
        derived from the weights alone (see ``weight_folding``)."""
        if self._feeds is None:
            full = {
                n: np.ascontiguousarray(w.T, dtype=dt)
                for n, w, dt in zip(self.weight_names, self._weights, self.weight_dtypes)
            }
            feeds = {n: full[n] for n in self._direct}
            if self._derive is not None:
                values = self._derive.run(self._derived, {n: full[n] for n in self._derive_inputs})
                feeds.update(zip(self._derived, values))
            self._feeds = feeds
        return self._feeds

    def scores(self, x: np.ndarray, seed: int | None = None) -> np.ndarray:
        return self.run(x)["scores"]

    def predict(self, x: np.ndarray, seed: int | None = None) -> np.ndarray:
        return self.run(x)["label"]

    def embed(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (x.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) >= self.num_classes:
            raise ValueError(f"labels must be {x.shape[0]} integers in [0, {self.num_classes})")
        if self.patterns is not None:
            return np.concatenate((x, self.patterns[labels]), axis=1)
        out = x.copy()
        out[:, : self.num_classes] = 0.0
        out[np.arange(len(x)), labels] = float(self.meta["embedding"].get("scale", 1.0))
        return out

    def learn(
        self, x: np.ndarray, labels: np.ndarray, positive: np.ndarray, seed: int | None = None, eta: float | None = None
    ) -> np.ndarray:
        """One Hebbian update of every layer from images shown with ``labels``; ``positive``
        says whether each label is the true one. Returns the summed log-odds before learning."""
        from ..goodness import goodness

        x = self._check_images(x)
        y = np.asarray(positive, dtype=np.float32)
        eta = self.eta if eta is None else float(eta)
        inp = self.embed(x, labels)
        total = np.zeros(len(x), dtype=np.float32)
        for i, (layer, w, e) in enumerate(zip(self.meta["layers"], self.weights, self.eligibility)):
            pre = (
                inp / (np.linalg.norm(inp, axis=1, keepdims=True) + np.float32(1e-8))
                if layer["normalize_input"]
                else inp
            )
            post = np.maximum(pre @ w.T, 0.0)
            if i in self.meta["score_layers"]:
                total += self.probability.logit(goodness(post, self.meta["goodness"], split=self.probability.split))
            dw = ff_hebbian_delta(self.probability, post, pre, y, self.meta["goodness"])
            if self.eligibility_tau is None:
                w += dw * np.float32(eta)
            else:
                e *= np.float32(1.0 - self.eligibility_tau)
                e += dw * np.float32(self.eligibility_tau)
                w += e * np.float32(eta)
            inp = post
        self._feeds = None
        return total

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ONNX file with the current weights (atomically)."""
        import onnx
        from onnx import numpy_helper

        proto = onnx.ModelProto()
        proto.CopyFrom(self._proto)
        by_name = {t.name: i for i, t in enumerate(proto.graph.initializer)}
        for name, w, dt in zip(self.weight_names, self.weights, self.weight_dtypes):
            proto.graph.initializer[by_name[name]].CopyFrom(
                numpy_helper.from_array(np.ascontiguousarray(w.T, dtype=dt), name)
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        with open(tmp, "wb") as fh:
            fh.write(proto.SerializeToString())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path
