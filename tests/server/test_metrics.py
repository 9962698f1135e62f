"""The request series are kept as plain numbers (metrics.py); their exposition must be exactly
what prometheus-client's own Counter and Histogram would write for the same requests."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from ephemeral_broker.metrics import DURATION_BUCKETS, PREFIX, BrokerMetrics

# (operation, result, error code, seconds): bucket bounds exactly, between them, past the last.
REQUESTS = [
    ("keys.get", "hit", None, 0.0001),
    ("keys.get", "hit", None, 0.00011),
    ("keys.get", "miss", "not_found", 0.0),
    ("keys.set", "created", None, 0.25),
    ("keys.set", "validation_error", "validation_error", 2.5000001),
    ("unrouted", "route_not_found", "route_not_found", 301.0),
    ("keys.get", "hit", None, 60.0),
]


def reference_exposition(requests: list[tuple[str, str, str | None, float]]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    operations = Counter(
        f"{PREFIX}_operations",
        "Requests by operation and result.",
        ["operation", "result"],
        registry=registry,
    )
    errors = Counter(
        f"{PREFIX}_errors", "Error responses by stable code.", ["code"], registry=registry
    )
    duration = Histogram(
        f"{PREFIX}_request_duration_seconds",
        "Request duration by operation.",
        ["operation"],
        buckets=DURATION_BUCKETS,
        registry=registry,
    )
    for operation, result, code, seconds in requests:
        operations.labels(operation, result).inc()
        duration.labels(operation).observe(seconds)
        if code is not None:
            errors.labels(code).inc()
    return generate_latest(registry).decode()


def test_request_series_expose_what_counter_and_histogram_would() -> None:
    metrics = BrokerMetrics("test")
    for request in REQUESTS:
        metrics.observe(*request)
    ours = generate_latest(metrics.registry).decode()
    reference = reference_exposition(REQUESTS)
    assert reference.strip() and reference in ours


def test_series_are_declared_before_any_request() -> None:
    ours = generate_latest(BrokerMetrics("test").registry).decode()
    reference = reference_exposition([])
    assert reference.count("# TYPE") == 3 and reference in ours
