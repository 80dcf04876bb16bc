"""The gRPC call and batch metrics (counted in plain Python, metrics.CallStats and
metrics.BatchStats) expose exactly what prometheus_client's Counter and Histogram would for the
same calls and batches, apart from ``_created``, and answer a scrape filtered by name."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from sjff_server.metrics import _LATENCY, BatchStats, Metrics

CALLS = [
    ("ModelInfer", "OK", 0.0001),
    ("ModelInfer", "OK", 0.0002),  # exactly a bound: in its bucket
    ("ModelInfer", "OK", 0.0031),
    ("ModelInfer", "INVALID_ARGUMENT", 0.00005),
    ("Learn", "OK", 0.02),
    ("Learn", "UNKNOWN", 30.0),  # above every bound
]


def _lines(text: bytes, prefix: str) -> list[str]:
    return sorted(line for line in text.decode().splitlines() if line.startswith(prefix) and "_created" not in line)


def test_call_metrics_match_prometheus_client():
    metrics = Metrics("")
    ref = CollectorRegistry()
    counter = Counter("sjff_grpc_requests", "gRPC calls by method and status code", ["method", "code"], registry=ref)
    hist = Histogram(
        "sjff_grpc_request_seconds", "gRPC call latency (server side)", ["method"], buckets=_LATENCY, registry=ref
    )
    for method, code, seconds in CALLS:
        metrics.request(method, code, seconds)
        counter.labels(method, code).inc()
        hist.labels(method).observe(seconds)
    for prefix in ("sjff_grpc_requests", "sjff_grpc_request_seconds"):
        got = _lines(generate_latest(metrics.registry), prefix)
        assert got and got == _lines(generate_latest(ref), prefix)


def test_a_scrape_filtered_by_name_includes_the_call_metrics():
    metrics = Metrics("")
    metrics.request("ModelInfer", "OK", 0.001)
    names = ["sjff_grpc_requests_total", "sjff_grpc_request_seconds_count"]
    text = generate_latest(metrics.registry.restricted_registry(names)).decode()
    assert 'sjff_grpc_requests_total{code="OK",method="ModelInfer"} 1.0' in text
    assert 'sjff_grpc_request_seconds_count{method="ModelInfer"} 1.0' in text


# (model, version, requests, images, seconds the model ran)
BATCHES = [
    ("mnist", "1", 1, 1, 0.00007),
    ("mnist", "1", 6, 6, 0.0001),  # exactly a bound: in its bucket
    ("mnist", "1", 24, 40, 0.0031),
    ("mnist", "2", 1, 2000, 7.5),  # above every bound
]


def test_batch_metrics_match_prometheus_client():
    metrics = Metrics("")
    ref = CollectorRegistry()
    labels = ["model", "version"]
    images = Counter("sjff_inference_images", "images inferred", labels, registry=ref)
    hists = [Histogram(name, doc, labels, buckets=b, registry=ref) for name, doc, b in BatchStats.HISTOGRAMS]
    observers = {}
    for model, version, requests, n, seconds in BATCHES:
        if (model, version) not in observers:
            observers[model, version] = metrics.batch_observer(model, version)
        observers[model, version](requests, n, seconds)
        images.labels(model, version).inc(n)
        for h, value in zip(hists, (n, requests, seconds)):
            h.labels(model, version).observe(value)
    for prefix in ("sjff_inference_images", *(name for name, _, _ in BatchStats.HISTOGRAMS)):
        got = _lines(generate_latest(metrics.registry), prefix)
        assert got and got == _lines(generate_latest(ref), prefix)
