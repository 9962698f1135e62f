"""Prometheus metrics on a registry of the app's own (never the global default registry).

Request metrics are recorded as requests finish, as plain numbers (see _RequestCollector).
Everything that describes state (items, capacity, in-flight requests, draining, store
counters) is read from a snapshot taken when
`/metrics` is scraped, so a scrape is always current without any other call first.
Label values come from fixed sets (route names, error codes): a key or pool name never
becomes a label, and prometheus-client escapes whatever it writes (defect 22 of the design notes).
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ephemeral_broker.store import StoreStats
from ephemeral_broker.store.base import MEMORY_STATUS, StoreStatus

# The `*_created` timestamp series double the exposition and nobody graphs them.
disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX: Final = "ephemeral_broker"
# Sub-millisecond buckets for the hot path; the long tail is for waiting reads and lease waits.
DURATION_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


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


class _RequestCollector(Collector):
    """The per-request series, kept as plain numbers and turned into metric families only
    when `/metrics` is scraped.

    prometheus-client's Counter and Histogram take a lock and check their state on every
    increment, which is most of what recording a request cost. The broker serves requests on
    one event-loop thread and scrapes on that same thread, so plain ints and floats are exact
    here, and the exposition is the same text as from a Counter and a Histogram: same names,
    help, labels, cumulative buckets.
    """

    def __init__(self) -> None:
        # operation -> its series; code -> count. Counting dicts start every key at 0, so a
        # count is `+= 1` without a `.get` call first.
        self.operations: defaultdict[str, OperationSeries] = defaultdict(OperationSeries)
        self.errors: defaultdict[str, int] = defaultdict(int)

    def collect(self) -> Iterator[Metric]:
        operations = CounterMetricFamily(
            f"{PREFIX}_operations",
            "Requests by operation and result.",
            labels=["operation", "result"],
        )
        for operation, series in self.operations.items():
            for result, count in series.results.items():
                operations.add_metric([operation, result], float(count))
        yield operations
        errors = CounterMetricFamily(
            f"{PREFIX}_errors", "Error responses by stable code.", labels=["code"]
        )
        for code, count in self.errors.items():
            errors.add_metric([code], float(count))
        yield errors
        duration = HistogramMetricFamily(
            f"{PREFIX}_request_duration_seconds",
            "Request duration by operation.",
            labels=["operation"],
        )
        for operation, observed in self.operations.items():
            cumulative = list(itertools.accumulate(observed.counts))
            duration.add_metric(
                [operation],
                list(zip(_BUCKET_NAMES, map(float, cumulative), strict=True)),
                observed.total,
            )
        yield duration


class OperationSeries:
    """One operation's request series: its count by result, and its duration histogram (a
    count per bucket, not cumulative, and the sum)."""

    __slots__ = ("counts", "results", "total")

    def __init__(self) -> None:
        self.results: defaultdict[str, int] = defaultdict(int)
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, result: str, seconds: float) -> None:
        """One request of this operation: its result, and how long it took."""
        self.results[result] += 1
        # The first bucket whose upper bound is >= seconds, as Histogram.observe picks it;
        # most requests take less than the first bound, which one comparison settles.
        if seconds <= _FIRST_BOUND:
            self.counts[0] += 1
        else:
            self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.total += seconds


_FIRST_BOUND: Final = DURATION_BUCKETS[0]
# Bucket labels as prometheus-client writes them (0.0001 -> "0.0001", 1.0 -> "1.0").
_BUCKET_NAMES: Final = (
    *(floatToGoString(b) for b in DURATION_BUCKETS),  # type: ignore[no-untyped-call]
    "+Inf",
)


class BrokerMetrics:
    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests = _RequestCollector()
        self.registry.register(self._requests)
        self._state = _StateCollector(version)
        self.registry.register(self._state)
        ProcessCollector(registry=self.registry)

    def series(self, operation: str) -> OperationSeries:
        """The series of one operation (a route's name), to record its requests into."""
        return self._requests.operations[operation]

    def count_error(self, code: str) -> None:
        """One error response with this stable code."""
        self._requests.errors[code] += 1

    def observe(self, operation: str, result: str, error_code: str | None, seconds: float) -> None:
        """One request: `series(operation).observe(...)`, and its error code if it has one."""
        self._requests.operations[operation].observe(result, seconds)
        if error_code is not None:
            self._requests.errors[error_code] += 1

    def render(self, snapshot: ScrapeSnapshot) -> bytes:
        self._state.snapshot = snapshot
        try:
            return generate_latest(self.registry)
        finally:
            self._state.snapshot = None
