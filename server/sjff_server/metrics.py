"""Prometheus metrics (served over HTTP on ``--metrics-port``).

Names (all prefixed ``sjff_``): ``grpc_requests_total{method,code}``,
``grpc_request_seconds{method}``, ``inference_waiting_requests``, ``inference_images_total``,
``inference_batch_images`` / ``inference_batch_requests`` (histograms per model),
``learning_updates_total{outcome}``, ``learning_group_size``, ``learning_sync_seconds``,
``model_version`` (the learning version), ``snapshot_version``, ``model_ready``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

__all__ = ["Metrics"]

_LATENCY = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """All server metrics in one private registry (so tests can run several servers)."""

    def __init__(self, version: str = "") -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "sjff_grpc_requests", "gRPC calls by method and status code", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "sjff_grpc_request_seconds", "gRPC call latency (server side)", ["method"], buckets=_LATENCY, registry=r
        )
        self.waiting = Gauge(
            "sjff_inference_waiting_requests", "inference requests waiting for their batch's answer", registry=r
        )
        self.images = Counter("sjff_inference_images", "images inferred", ["model", "version"], registry=r)
        self.batch_images = Histogram(
            "sjff_inference_batch_images", "images per executed batch", ["model", "version"], buckets=_SIZES, registry=r
        )
        self.batch_requests = Histogram(
            "sjff_inference_batch_requests",
            "requests per executed batch",
            ["model", "version"],
            buckets=_SIZES,
            registry=r,
        )
        self.updates = Counter(
            "sjff_learning_updates", "learning updates by outcome", ["model", "version", "outcome"], registry=r
        )
        self.group = Histogram(
            "sjff_learning_group_size",
            "updates made durable by one fsync",
            ["model", "version"],
            buckets=_SIZES,
            registry=r,
        )
        self.sync = Histogram(
            "sjff_learning_sync_seconds",
            "update log write + fsync time",
            ["model", "version"],
            buckets=_LATENCY,
            registry=r,
        )
        self.model_version = Gauge(
            "sjff_model_version", "learning version being served", ["model", "version"], registry=r
        )
        self.snapshot_version = Gauge(
            "sjff_snapshot_version", "version of the newest snapshot", ["model", "version"], registry=r
        )
        self.ready = Gauge(
            "sjff_model_ready", "1 if the model version is loaded and ready", ["model", "version"], registry=r
        )
        self.inflight_bytes = Gauge(
            "sjff_inference_inflight_bytes",
            "bytes of queued and running inference requests of the model (limit: --max-inflight-mb)",
            ["model", "version"],
            registry=r,
        )
        self.learning_failed = Gauge(
            "sjff_learning_failed",
            "1 if learning of the model version stopped after a storage or internal error (see the server log)",
            ["model", "version"],
            registry=r,
        )
        self.state_damaged = Gauge(
            "sjff_state_damaged",
            "1 if the model version was not loaded because its learning state is damaged",
            ["model", "version"],
            registry=r,
        )
        Info("sjff_build", "server build information", registry=r).info({"version": version})
        self._req: dict[tuple[str, str], Any] = {}
        self._lat: dict[str, Any] = {}
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

    # -- hot path: children are looked up once ------------------------------------------------

    def request(self, method: str, code: str, seconds: float) -> None:
        key = (method, code)
        c = self._req.get(key)
        if c is None:
            c = self._req[key] = self.requests.labels(method, code)
        c.inc()
        h = self._lat.get(method)
        if h is None:
            h = self._lat[method] = self.latency.labels(method)
        h.observe(seconds)

    def batch_observer(self, model: str, version: str):
        """A callback ``(requests, images)`` for one model's batcher."""
        images = self.images.labels(model, version)
        per_images = self.batch_images.labels(model, version)
        per_requests = self.batch_requests.labels(model, version)

        def observe(requests: int, n: int) -> None:
            images.inc(n)
            per_images.observe(n)
            per_requests.observe(requests)

        return observe

    # -- learning -------------------------------------------------------------------------------

    def learn_group(self, model: str, version: str, accepted: int, sync_s: float, learning_version: int) -> None:
        self.updates.labels(model, version, "accepted").inc(accepted)
        self.group.labels(model, version).observe(accepted)
        self.sync.labels(model, version).observe(sync_s)
        self.model_version.labels(model, version).set(learning_version)

    def learn_refused(self, model: str, version: str, reason: str) -> None:
        """A refused update; ``reason``: the refusal's ``RequestError.reason``."""
        self.updates.labels(model, version, f"refused_{reason}").inc()

    def version(self, model: str, version: str, learning_version: int) -> None:
        self.model_version.labels(model, version).set(learning_version)

    def snapshot(self, model: str, version: str, learning_version: int) -> None:
        self.snapshot_version.labels(model, version).set(learning_version)

    def learning_stopped(self, model: str, version: str) -> None:
        self.learning_failed.labels(model, version).set(1)
