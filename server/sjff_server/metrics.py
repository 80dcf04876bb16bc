"""Prometheus metrics (served over HTTP on ``--metrics-port``).

Names (all prefixed ``sjff_``): ``grpc_requests_total{method,code}``,
``grpc_request_seconds{method}``, ``inference_waiting_requests``, ``inference_images_total``,
``inference_batch_images`` / ``inference_batch_requests`` / ``inference_batch_seconds``
(histograms per model: images and requests per executed batch, the model's run time on it),
``learning_updates_total{outcome}``, ``learning_group_size``, ``learning_sync_seconds``,
``model_version`` (the learning version), ``snapshot_version``, ``model_ready``; with
``--replication``: ``replication_lag_entries`` / ``replication_lag_seconds`` (behind the
stream's end), ``replication_applied_total`` (entries applied), ``replication_digest_checks_total
{result}`` (ok | mismatch) and ``replication_divergence`` (1 while this replica's weights of the
model disagree with the others').
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

__all__ = ["Metrics"]

_LATENCY = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: model run time per batch (seconds): an MNIST image takes tens of microseconds
_RUN = (5e-5, 1e-4, 2e-4, 5e-4, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


def _new_hist(bounds: tuple) -> list[float]:
    """A histogram counted in plain Python: observations per bucket of ``bounds`` (the last:
    above every bound), then their sum."""
    return [0] * (len(bounds) + 1) + [0.0]


def _observe(h: list[float], bounds: tuple, value: float) -> None:
    h[bisect_left(bounds, value)] += 1  # le: a value of exactly a bound counts in its bucket
    h[-1] += value


def _add_hist(family: HistogramMetricFamily, labels: list[str], h: list[float], bounds: tuple) -> None:
    h = list(h)  # a copy: the loop may observe while the scrape's thread reads
    edges = [*map(floatToGoString, bounds), "+Inf"]
    family.add_metric(labels, list(zip(edges, accumulate(h[:-1]))), sum_value=h[-1])


class CallStats:
    """gRPC calls by method and status code, and their latency histogram, counted in plain
    Python by the event loop and read by the scrape (``collect``). Every call updates these,
    and a prometheus_client Counter plus Histogram cost several calls and a lock each. Unlike
    those, no ``_created`` samples are exported."""

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], int] = {}
        #: method -> calls per latency bucket (the last: above every bound), then their seconds
        self.latency: dict[str, list[float]] = {}

    def add(self, method: str, code: str, seconds: float) -> None:
        key = (method, code)
        self.calls[key] = self.calls.get(key, 0) + 1
        h = self.latency.get(method)
        if h is None:
            h = self.latency[method] = _new_hist(_LATENCY)
        _observe(h, _LATENCY, seconds)

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, HistogramMetricFamily]:
        calls = CounterMetricFamily(
            "sjff_grpc_requests", "gRPC calls by method and status code", labels=["method", "code"]
        )
        hist = HistogramMetricFamily("sjff_grpc_request_seconds", "gRPC call latency (server side)", labels=["method"])
        return calls, hist

    def describe(self) -> Iterator[Any]:
        """The families without samples: the registry learns their names (name filters of
        the scrape, duplicate checks) without a collection."""
        yield from self._families()

    def collect(self) -> Iterator[Any]:
        calls, hist = self._families()
        # copies first: the loop may add a key while the scrape's thread reads
        for (method, code), n in self.calls.copy().items():
            calls.add_metric([method, code], n)
        yield calls
        for method, h in self.latency.copy().items():
            _add_hist(hist, [method], h, _LATENCY)
        yield hist


class BatchStats:
    """Per model version: images inferred, and per executed batch its requests, images and
    the model's run time, counted in plain Python by the event loop like :class:`CallStats`
    (the batcher reports every batch there, also one that ran on a worker) and read by the
    scrape. No ``_created`` samples."""

    #: histogram name, help, bounds; the order of :meth:`observer`'s histograms
    HISTOGRAMS = (
        ("sjff_inference_batch_images", "images per executed batch", _SIZES),
        ("sjff_inference_batch_requests", "requests per executed batch", _SIZES),
        ("sjff_inference_batch_seconds", "model run time per executed batch", _RUN),
    )

    def __init__(self) -> None:
        #: (model, version) -> [images inferred, then one histogram per HISTOGRAMS entry]
        self.models: dict[tuple[str, str], list] = {}

    def observer(self, model: str, version: str):
        """A callback ``(requests, images, seconds the model ran)`` for one model's batcher."""
        stats = self.models.setdefault((model, version), [0, *(_new_hist(b) for _, _, b in self.HISTOGRAMS)])
        per_images, per_requests, ran = stats[1:]
        (_, _, image_bounds), (_, _, request_bounds), (_, _, run_bounds) = self.HISTOGRAMS

        def observe(requests: int, n: int, seconds: float) -> None:
            stats[0] += n
            _observe(per_images, image_bounds, n)
            _observe(per_requests, request_bounds, requests)
            _observe(ran, run_bounds, seconds)

        return observe

    def _families(self) -> list:
        labels = ["model", "version"]
        images = CounterMetricFamily("sjff_inference_images", "images inferred", labels=labels)
        return [images, *(HistogramMetricFamily(name, doc, labels=labels) for name, doc, _ in self.HISTOGRAMS)]

    def describe(self) -> Iterator[Any]:
        yield from self._families()

    def collect(self) -> Iterator[Any]:
        images, *hists = self._families()
        models = list(self.models.items())
        for key, stats in models:
            images.add_metric(list(key), stats[0])
            for family, h, (_, _, bounds) in zip(hists, stats[1:], self.HISTOGRAMS):
                _add_hist(family, list(key), h, bounds)
        yield images
        yield from hists


class Metrics:
    """All server metrics in one private registry (so tests can run several servers)."""

    def __init__(self, version: str = "") -> None:
        r = self.registry = CollectorRegistry()
        self.calls = CallStats()
        r.register(self.calls)
        self.waiting = Gauge(
            "sjff_inference_waiting_requests", "inference requests waiting for their batch's answer", registry=r
        )

        def per_model(cls, name: str, doc: str, *labels: str, **kw):
            """A metric labelled by model and version (and ``labels``)."""
            return cls(f"sjff_{name}", doc, ["model", "version", *labels], registry=r, **kw)

        self.batches = BatchStats()
        r.register(self.batches)
        self.updates = per_model(Counter, "learning_updates", "learning updates by outcome", "outcome")
        self.group = per_model(Histogram, "learning_group_size", "updates made durable by one fsync", buckets=_SIZES)
        self.sync = per_model(Histogram, "learning_sync_seconds", "update log write + fsync time", buckets=_LATENCY)
        self.model_version = per_model(Gauge, "model_version", "learning version being served")
        self.snapshot_version = per_model(Gauge, "snapshot_version", "version of the newest snapshot")
        self.request_ids = per_model(
            Gauge,
            "learning_request_ids",
            "request ids of applied updates remembered (a retry of one is answered, not applied again)",
        )
        self.request_ids_forgotten = per_model(
            Gauge,
            "learning_request_ids_forgotten_early",
            "request ids forgotten before --idempotency-window-s because their answers passed --idempotency-max-mb",
        )
        self.ready = per_model(Gauge, "model_ready", "1 if the model version is loaded and ready")
        self.inflight_bytes = per_model(
            Gauge,
            "inference_inflight_bytes",
            "bytes held by queued and running inference requests of the model: images, messages, working "
            "memory (limit: --max-inflight-mb)",
        )
        self.learning_failed = per_model(
            Gauge,
            "learning_failed",
            "1 if learning of the model version stopped after a storage or internal error (see the server log)",
        )
        self.state_damaged = per_model(
            Gauge, "state_damaged", "1 if the model version was not loaded because its learning state is damaged"
        )
        self.replication_lag_entries = per_model(
            Gauge, "replication_lag_entries", "stream entries not yet applied by this replica"
        )
        self.replication_lag_seconds = per_model(
            Gauge, "replication_lag_seconds", "age of the oldest stream entry not yet applied by this replica"
        )
        self.replication_applied = per_model(Counter, "replication_applied", "stream entries applied by this replica")
        self.replication_digest_checks = per_model(
            Counter, "replication_digest_checks", "weight digests compared with the other replicas'", "result"
        )
        self.replication_divergence = per_model(
            Gauge, "replication_divergence", "1 while this replica's weights differ from the others' (NOT_SERVING)"
        )
        Info("sjff_build", "server build information", registry=r).info({"version": version})
        self._http = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:  # noqa: S104 - metrics are meant to be scraped
        """Start the HTTP endpoint; returns the bound port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._http = server
        return server.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    # -- hot path: calls and batches counted in plain Python -------------------------------------

    def request(self, method: str, code: str, seconds: float) -> None:
        self.calls.add(method, code, seconds)

    def batch_observer(self, model: str, version: str):
        """A callback ``(requests, images, seconds the model ran)`` for one model's batcher."""
        return self.batches.observer(model, version)

    # -- learning -------------------------------------------------------------------------------

    def learn_group(self, model: str, version: str, accepted: int, sync_s: float, learning_version: int) -> None:
        self.updates.labels(model, version, "accepted").inc(accepted)
        self.group.labels(model, version).observe(accepted)
        self.sync.labels(model, version).observe(sync_s)
        self.model_version.labels(model, version).set(learning_version)

    def request_window(self, model: str, version: str, remembered: int, forgotten_early: int) -> None:
        """The request ids a local learner remembers, and how many it forgot early (since start)."""
        self.request_ids.labels(model, version).set(remembered)
        self.request_ids_forgotten.labels(model, version).set(forgotten_early)

    def learn_repeated(self, model: str, version: str) -> None:
        """A Learn answered with the earlier application of its request id (applied once)."""
        self.updates.labels(model, version, "repeated").inc()

    def learn_refused(self, model: str, version: str, reason: str) -> None:
        """A refused update; ``reason``: the refusal's ``RequestError.reason``."""
        self.updates.labels(model, version, f"refused_{reason}").inc()

    def version(self, model: str, version: str, learning_version: int) -> None:
        self.model_version.labels(model, version).set(learning_version)

    def snapshot(self, model: str, version: str, learning_version: int) -> None:
        self.snapshot_version.labels(model, version).set(learning_version)

    def learning_stopped(self, model: str, version: str) -> None:
        self.learning_failed.labels(model, version).set(1)
