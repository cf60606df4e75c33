"""The server's Prometheus metrics, in `prometheus_client`'s multiprocess mode: the API processes, the inference
workers and LitServe's logger process each write their values to `PROMETHEUS_MULTIPROC_DIR`, and `/metrics`
reads them all. Import this module only after that variable is set (`build_server` sets it).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)


REQUESTS = Counter("rime_requests", "Embedding requests answered, by HTTP status.", ["status"])
LATENCY = Histogram(
    "rime_request_latency_seconds",
    "Seconds from receiving an embedding request to answering it.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
IN_FLIGHT = Gauge(
    "rime_requests_in_flight", "Embedding requests accepted and not yet answered.", multiprocess_mode="livesum"
)
ITEMS = Counter("rime_items", "Items embedded, by mode.", ["mode"])
BATCH_REQUESTS = Histogram(
    "rime_batch_requests", "Requests in each batch the inference worker ran.", buckets=(1, 2, 4, 8, 16, 32, 64)
)
GENERATED_TOKENS = Counter("rime_generated_tokens", "Rewrite tokens generated in gen mode.")
REFUSED = Counter("rime_refused_requests", "Requests refused before model work, by HTTP status.", ["status"])


def record(key: str, value) -> None:
    """Apply one `LitAPI.log(key, value)` entry of the inference worker."""
    if key == "rime_items":
        mode, count = value
        ITEMS.labels(mode=mode).inc(count)
    elif key == "rime_batch_requests":
        BATCH_REQUESTS.observe(value)
    elif key == "rime_generated_tokens":
        GENERATED_TOKENS.inc(value)
    elif key == "rime_refused_requests":
        REFUSED.labels(status=str(value)).inc()


def exposition() -> tuple[bytes, str]:
    """Every process's metrics in Prometheus' text format, and its content type."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
