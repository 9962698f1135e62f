"""Prometheus metrics on a registry of the app's own (never the global default registry).

Request metrics are recorded as requests finish. Everything that describes state (items,
capacity, in-flight requests, draining, store counters) is read from a snapshot taken when
`/metrics` is scraped, so a scrape is always current without any other call first.
Label values come from fixed sets (route names, error codes): a key or pool name never
becomes a label, and prometheus-client escapes whatever it writes (seed defect #22).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ephemeral_broker.store import StoreStats
from ephemeral_broker.store.base import MEMORY_STATUS, StoreStatus

# The `*_created` timestamp series double the exposition and nobody graphs them.
disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX: Final = "ephemeral_broker"
# Sub-millisecond buckets for the hot path; the long tail is for waiting reads and lease waits.
DURATION_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ScrapeSnapshot:
    store: StoreStats
    in_flight: int
    draining: bool
    status: StoreStatus = MEMORY_STATUS


class _StateCollector(Collector):
    """Yields the gauges and store counters from the snapshot of the current scrape."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.snapshot: ScrapeSnapshot | None = None

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        if snap is None:
            return
        store = snap.store
        yield _gauge("items", "Live keys.", store.items)
        yield _gauge("leases", "Live leases, all pools together.", store.leases)
        yield _gauge("capacity_max", "max_items setting; 0 means unlimited.", store.max_items)
        utilization = store.items / store.max_items if store.max_items else 0.0
        yield _gauge("capacity_utilization", "items / max_items (0 when unlimited).", utilization)
        yield _gauge("requests_in_flight", "Requests being served.", snap.in_flight)
        yield _gauge("draining", "1 once shutdown has begun.", 1 if snap.draining else 0)
        build = GaugeMetricFamily(
            f"{PREFIX}_build_info", "Broker version; always 1.", labels=["version"]
        )
        build.add_metric([self.version], 1)
        yield build
        status = snap.status
        info = GaugeMetricFamily(
            f"{PREFIX}_store_info",
            "Which store holds the state (memory or redis) and its namespace; always 1.",
            labels=["store", "namespace"],
        )
        info.add_metric([status.kind, status.namespace or ""], 1)
        yield info
        yield _gauge(
            "store_available", "1 while the store answers (always 1 for memory).", status.available
        )
        yield CounterMetricFamily(
            f"{PREFIX}_store_resets",
            "Times the shared store (Redis) was found to have lost the namespace.",
            value=status.resets,
        )
        expired = CounterMetricFamily(
            f"{PREFIX}_expired", "Entries reclaimed after their TTL.", labels=["type"]
        )
        expired.add_metric(["items"], store.expired_items_total)
        expired.add_metric(["leases"], store.expired_leases_total)
        yield expired
        compression = CounterMetricFamily(
            f"{PREFIX}_compression_bytes",
            "Bytes of values before and after compression (compressed values only).",
            labels=["stage"],
        )
        compression.add_metric(["before"], store.compression_bytes_before_total)
        compression.add_metric(["after"], store.compression_bytes_after_total)
        yield compression
        stored = CounterMetricFamily(
            f"{PREFIX}_values_stored",
            "Values written, by whether kept compressed.",
            labels=["compressed"],
        )
        stored.add_metric(["true"], store.values_stored_compressed_total)
        stored.add_metric(["false"], store.values_stored_uncompressed_total)
        yield stored


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


class BrokerMetrics:
    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.operations = Counter(
            f"{PREFIX}_operations", "Requests by operation and result.",
            ["operation", "result"], registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            f"{PREFIX}_errors", "Error responses by stable code.", ["code"],
            registry=self.registry,
        )  # fmt: skip
        self.duration = Histogram(
            f"{PREFIX}_request_duration_seconds", "Request duration by operation.",
            ["operation"], buckets=DURATION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._state = _StateCollector(version)
        self.registry.register(self._state)
        ProcessCollector(registry=self.registry)
        # Resolved label children, so the hot path skips prometheus-client's lock and lookup.
        self._ops: dict[tuple[str, str], Counter] = {}
        self._errs: dict[str, Counter] = {}
        self._durations: dict[str, Histogram] = {}

    def observe(self, operation: str, result: str, error_code: str | None, seconds: float) -> None:
        key = (operation, result)
        op = self._ops.get(key)
        if op is None:
            op = self._ops[key] = self.operations.labels(operation, result)
        op.inc()
        hist = self._durations.get(operation)
        if hist is None:
            hist = self._durations[operation] = self.duration.labels(operation)
        hist.observe(seconds)
        if error_code is not None:
            err = self._errs.get(error_code)
            if err is None:
                err = self._errs[error_code] = self.errors.labels(error_code)
            err.inc()

    def render(self, snapshot: ScrapeSnapshot) -> bytes:
        self._state.snapshot = snapshot
        try:
            return generate_latest(self.registry)
        finally:
            self._state.snapshot = None
