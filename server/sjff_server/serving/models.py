"""Loaded models: one :class:`ServedModel` per repository version, found via :class:`ModelRegistry`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from spikingjelly_ff.functional.params import MAX_STEPS
from spikingjelly_ff.runtime.protocol import RuntimeModel
from spikingjelly_ff.runtime.work_memory import WorkMemory

from ..errors import ModelNotFound, Unavailable
from ..inference.batching import Batcher, BatchResult
from ..inference.engine import Engine, InferOptions, InferPlan, Published, make_engine
from ..interrupt import WorkerPool
from ..learning.learner import Learner
from ..learning.options import LearnOptions
from ..storage.snapshots import state_digest
from ..storage.state import StateUnreadable
from .repository import ModelSpec

__all__ = ["ModelRegistry", "ServedModel", "load_served_model"]

log = logging.getLogger("sjff_server.models")


class ServedModel:
    """A model version being served: engine, batcher, and (optionally) its learner."""

    def __init__(
        self, spec: ModelSpec, model: RuntimeModel, engine: Engine, learner: Learner | None, batcher_kw: dict
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.version = spec.version
        self.kind = engine.kind
        self.engine = engine
        self.learner = learner
        self._static = None if learner is not None else engine.publish(0, model)
        self._digest: str | None = None
        self.in_features = engine.in_features
        self.num_classes = engine.num_classes
        self.inferences = 0
        default = min(4 * engine.default_steps, MAX_STEPS) if engine.default_steps else None
        self.max_steps = spec.config.max_steps or default
        self._model = model  # its shapes (every version's) decide a batch's working memory
        self._work: dict[tuple[int | None, bool], WorkMemory] = {}
        # the fixed part of the model's working memory (its shapes', whatever the steps) is
        # taken once by each running batch
        fixed = model.working_memory(None, False).fixed
        self.batcher = Batcher(self._run_batch, work_bytes=self.work_bytes, fixed_bytes=fixed, **batcher_kw)
        self.default_outputs = [n for n in engine.outputs if n != "latent"]
        self.default_plan = InferPlan(InferOptions(), tuple(self.default_outputs))

    @property
    def published(self) -> Published:
        """The weights inference uses now (swapped whole by the learner)."""
        return self.learner.published if self.learner is not None else self._static

    def weights_digest(self) -> tuple[int, str]:
        """``(learning version, sha256 of the weights and eligibility traces)`` served now."""
        if self.learner is not None:
            return self.learner.weights_digest()
        if self._digest is None:
            self._digest = state_digest(self._static.model.weights, self._static.model.eligibility)
        return 0, self._digest

    def work_bytes(self, rows: int, opts: InferOptions) -> int:
        """Working memory of scoring ``rows`` images with ``opts`` (``RuntimeModel.working_memory``
        less its fixed part, which the batcher counts once per running batch), counted against
        ``--max-inflight-mb`` with the request's images."""
        key = (opts.steps, opts.latent)
        work = self._work.get(key)
        if work is None:
            work = self._work[key] = self._model.working_memory(opts.steps, opts.latent)
        return work.rows_bytes(rows)

    def budget_note(self) -> str | None:
        """What to warn of where ``--max-inflight-mb`` cannot hold a one-image request of this
        model (its float32 image, its working memory and a batch's fixed part): every ModelInfer
        would be refused."""
        limit = self.batcher.max_bytes
        need = 4 * self.in_features + self.work_bytes(1, InferOptions()) + self.batcher.fixed_bytes
        if limit is None or need <= limit:
            return None
        mib = 1 << 20
        return (
            f"the inference memory limit ({limit / mib:g} MiB) is below what one image needs ({need / mib:.1f} MiB): "
            "every inference of this model will be refused; raise --max-inflight-mb"
        )

    def _run_batch(self, x: np.ndarray, opts: InferOptions) -> BatchResult:
        pub = self.published  # read once: the whole batch runs on one version
        self.inferences += len(x)
        return self.engine.run(pub, x, opts), pub.version

    def image_shape(self) -> tuple[int, ...]:
        shape = self.engine.image_shape()
        if shape:
            return tuple(shape)
        side = int(round(self.in_features**0.5))
        return (side, side) if side * side == self.in_features else (self.in_features,)


class ModelRegistry:
    """Name -> version -> :class:`ServedModel`."""

    def __init__(self) -> None:
        self._models: dict[str, dict[str, ServedModel]] = {}
        self._latest: dict[str, ServedModel] = {}
        self._by_key: dict[tuple[str, str], ServedModel] = {}
        #: (name, version) -> why it is not served (damaged learning state): Unavailable, not ModelNotFound
        self.unavailable: dict[tuple[str, str], str] = {}

    def mark_unavailable(self, name: str, version: str, why: str) -> None:
        self.unavailable[(name, version)] = why

    def add(self, served: ServedModel) -> None:
        versions = self._models.setdefault(served.name, {})
        versions[served.version] = served
        self._latest[served.name] = versions[max(versions, key=int)]
        self._by_key[(served.name, served.version)] = served
        self._by_key[(served.name, "")] = self._latest[served.name]

    def get(self, name: str, version: str = "") -> ServedModel:
        """The model; :class:`ModelNotFound` naming what exists, or :class:`Unavailable` if
        its learning state keeps it from being served."""
        served = self._by_key.get((name, version))
        if served is not None:
            return served
        down = self.unavailable.get((name, version))
        if down is None and not version and name not in self._models:
            down = next((why for (n, _), why in self.unavailable.items() if n == name), None)
        if down is not None:
            raise Unavailable(f"model {name}/{version or 'latest'} is not served: {down}")
        if name not in self._models:
            shown = ", ".join(sorted(self._models)[:20]) or "none"
            raise ModelNotFound(f"unknown model {name[:200]!r} (models: {shown})")
        known = ", ".join(self.versions(name))
        raise ModelNotFound(f"model {name!r} has no version {version[:50]!r} (versions: {known})")

    def versions(self, name: str) -> list[str]:
        return sorted(self._models.get(name, {}), key=int)

    def all(self) -> list[ServedModel]:
        return [m for versions in self._models.values() for _, m in sorted(versions.items(), key=lambda kv: int(kv[0]))]

    def __len__(self) -> int:
        return len(self._by_key) - len(self._models)


def load_served_model(
    spec: ModelSpec,
    *,
    state_dir: Path | None,
    ort_threads: int,
    learn_options: LearnOptions,
    pool: WorkerPool,
    metrics: Any = None,
    busy_delay_s: float = 0.0,
    max_inline_macs: int | None = 16_000_000,
    max_inflight_bytes: int | None = None,
) -> tuple[ServedModel, list[str]]:
    """Load a model version, recover its learning state; returns it and notes for the log.
    Synchronous (may replay a log): call it from a thread at startup."""
    from spikingjelly_ff.runtime import load_exported

    threads = spec.config.threads if spec.config.threads is not None else ort_threads
    model = load_exported(spec.path, threads=threads) if spec.kind == "analog" else load_exported(spec.path)
    engine = make_engine(model)
    notes: list[str] = []
    if spec.kind == "spiking" and spec.config.learning:
        from spikingjelly_ff.kernels import numba_online

        # compile the batch-1 learning kernel now, not inside the first Learn's deadline
        notes.append(f"compiled batch-1 learning kernel: {'on' if numba_online.warm_up() else 'off (numpy path)'}")
    if spec.kind == "analog":
        from spikingjelly_ff.kernels import numba_analog

        # compile the scoring kernel now, not inside the first inference's deadline
        covered = model.graph.compiled is not None and numba_analog.warm_up()
        notes.append(f"compiled scoring of small batches: {'on' if covered else 'off (onnxruntime only)'}")
    learner = None
    if spec.config.learning and state_dir is not None:
        where = Path(state_dir) / spec.name / spec.version
        try:
            learner = Learner(spec.name, spec.version, engine, model, spec.path, where, learn_options, metrics)
            notes += learner.recover()
        except OSError as exc:  # the state, not the model file (read above): this model only
            raise StateUnreadable(
                f"the learning state in {where} cannot be read or written ({exc}); check its permissions and that "
                "its files and folders are what the server wrote"
            ) from exc
    max_batch = spec.config.max_batch_size if spec.config.max_batch_size else engine.default_max_batch
    batcher_kw = {
        "max_batch": max_batch,
        "max_delay_s": spec.config.max_queue_delay_us / 1e6,
        "busy_delay_s": busy_delay_s if spec.config.max_queue_delay_us == 0 else 0.0,
        "pool": pool,  # spiking batches, and analog batches too costly for the event loop
        "inline_rows": engine.inline_rows(max_inline_macs),
        "max_bytes": max_inflight_bytes,
        "name": spec.name,
        "on_batch": metrics.batch_observer(spec.name, spec.version) if metrics is not None else None,
    }
    return ServedModel(spec, model, engine, learner, batcher_kw), notes
