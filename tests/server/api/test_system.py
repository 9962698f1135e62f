"""Probes, health, stats, ping and metrics, in-process."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ephemeral_broker import __version__
from ephemeral_broker.clock import FakeClock
from tests.support.asgi import AppFactory

pytestmark = pytest.mark.anyio


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def fill(api: httpx.AsyncClient, count: int, prefix: str = "k") -> None:
    for i in range(count):
        response = await api.put(f"/v1/keys/{prefix}{i}", json={"value": i, "ttl_ms": 1000})
        assert response.status_code == 201


async def test_probes(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    assert (await api.get("/readyz")).json() == {"status": "ready"}


async def test_ping_is_broker_time(api: httpx.AsyncClient) -> None:
    before = time.time_ns() // 1_000_000
    pong = (await api.get("/v1/ping")).json()["pong"]
    assert before <= pong <= time.time_ns() // 1_000_000


async def test_health_capacity_thresholds(make_api: AppFactory) -> None:
    async with make_api(max_items=10) as api:
        health = (await api.get("/v1/health")).json()
        assert health["status"] == "healthy"
        assert health["capacity"] == {
            "items": 0,
            "max_items": 10,
            "utilization": 0.0,
            "near_capacity": False,
            "at_capacity": False,
            "warning": None,
        }
        assert health["memory"]["rss_bytes"] > 1_000_000
        assert health["connections"]["in_flight"] == 1  # this request
        assert health["uptime_ms"] >= 0
        await fill(api, 8)
        assert (await api.get("/v1/health")).json()["capacity"]["warning"] is None
        await fill(api, 1, prefix="n")  # 9 of 10 = 90 %
        near = (await api.get("/v1/health")).json()
        assert near["status"] == "healthy"
        assert (near["capacity"]["near_capacity"], near["capacity"]["warning"]) == (
            True,
            "near_capacity",
        )
        await fill(api, 1, prefix="f")
        full = (await api.get("/v1/health")).json()
        assert full["status"] == "degraded"
        assert full["capacity"]["at_capacity"] and full["capacity"]["warning"] == "at_capacity"
        assert full["capacity"]["utilization"] == 1.0


async def test_health_counts_only_live_items(make_api: AppFactory, clock: FakeClock) -> None:
    async with make_api(max_items=2) as api:
        await fill(api, 2)
        clock.advance(1000)
        health = (await api.get("/v1/health")).json()
        assert (health["status"], health["capacity"]["items"]) == ("healthy", 0)


@pytest.mark.defect(25)
async def test_unlimited_capacity_never_divides_by_zero(make_api: AppFactory) -> None:
    """Defect 25: a ratio with a zero denominator. max_items=0 means unlimited."""
    async with make_api(max_items=0, compression_threshold=0) as api:
        await fill(api, 3)
        capacity = (await api.get("/v1/health")).json()["capacity"]
        assert (capacity["utilization"], capacity["warning"]) == (0.0, None)
        values = samples((await api.get("/metrics")).text)
        assert values[("ephemeral_broker_capacity_utilization", ())] == 0.0
        assert values[("ephemeral_broker_capacity_max", ())] == 0.0
        assert values[("ephemeral_broker_compression_bytes_total", (("stage", "after"),))] == 0.0


async def test_stats(api: httpx.AsyncClient) -> None:
    await fill(api, 3)
    stats = (await api.get("/v1/stats")).json()
    assert stats["items"] == 3
    assert stats["approx_store_bytes"] > 0
    assert stats["version"] == __version__
    assert stats["requests_total"] == 4  # three PUTs and this GET
    assert set(stats) >= {"items", "approx_store_bytes", "uptime_ms", "requests_total", "version"}


async def test_metrics_cover_the_spec_list_and_are_current_at_scrape(
    api: httpx.AsyncClient, clock: FakeClock
) -> None:
    text = (await api.get("/metrics")).text
    families = {f.name for f in text_string_to_metric_families(text)}
    for name in [
        "ephemeral_broker_items",
        "ephemeral_broker_capacity_max",
        "ephemeral_broker_capacity_utilization",
        "ephemeral_broker_expired",
        "ephemeral_broker_compression_bytes",
        "ephemeral_broker_values_stored",
        "ephemeral_broker_requests_in_flight",
        "ephemeral_broker_draining",
        "ephemeral_broker_build_info",
    ]:
        assert name in families, name
    await fill(api, 4)
    await api.get("/v1/keys/missing")
    values = samples((await api.get("/metrics")).text)
    assert values[("ephemeral_broker_items", ())] == 4
    assert values[("ephemeral_broker_requests_in_flight", ())] == 1
    assert values[("ephemeral_broker_draining", ())] == 0
    assert values[("ephemeral_broker_build_info", (("version", __version__),))] == 1
    ops = ("ephemeral_broker_operations_total", (("operation", "keys.set"), ("result", "created")))
    assert values[ops] == 4
    miss = ("ephemeral_broker_operations_total", (("operation", "keys.get"), ("result", "miss")))
    assert values[miss] == 1
    assert values[("ephemeral_broker_errors_total", (("code", "not_found"),))] == 1
    count = ("ephemeral_broker_request_duration_seconds_count", (("operation", "keys.set"),))
    assert values[count] == 4
    assert values[("ephemeral_broker_values_stored_total", (("compressed", "false"),))] == 4
    # Expiry shows up at the next scrape, with no other call in between.
    clock.advance(1000)
    values = samples((await api.get("/metrics")).text)
    assert values[("ephemeral_broker_items", ())] == 0
    assert values[("ephemeral_broker_expired_total", (("type", "items"),))] == 4


@pytest.mark.defect(22)
async def test_keys_never_become_label_values(api: httpx.AsyncClient) -> None:
    """Defect 22: label values were written unescaped, so a quote in a key broke the
    exposition. Keys never become labels here, and the output always parses."""
    nasty = ['quote"d', "back\\slash", "brace}{", "comma,=x", "ünï"]
    for key in nasty:
        assert (await api.put(f"/v1/keys/{key}", json={"value": 1, "ttl_ms": 100})).is_success
        await api.get(f"/v1/keys/{key}")
        await api.put(f"/v1/keys/{key}", json={"value": 1, "ttl_ms": 0})  # an error for it too
    text = (await api.get("/metrics")).text
    for key in nasty:
        assert key not in text
    parsed = list(text_string_to_metric_families(text))  # raises on a broken exposition
    assert parsed
    labels = {v for f in parsed for s in f.samples for k, v in s.labels.items() if k != "le"}
    assert labels <= {
        "keys.set",
        "keys.get",
        "system.metrics",
        "created",
        "replaced",
        "hit",
        "ok",
        "invalid_ttl",
        "items",
        "leases",
        "before",
        "after",
        "true",
        "false",
        __version__,
        "memory",
        "",
    }


async def test_each_app_has_its_own_registry(make_api: AppFactory) -> None:
    async with make_api() as first, make_api() as second:
        await fill(first, 2)
        first_ops = samples((await first.get("/metrics")).text)
        second_ops = samples((await second.get("/metrics")).text)
        key = (
            "ephemeral_broker_operations_total",
            (("operation", "keys.set"), ("result", "created")),
        )
        assert first_ops[key] == 2
        assert key not in second_ops


def test_fastapi_telemetry_stays_off_whatever_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker never exports spans, metrics or logs: FastAPI's native OpenTelemetry would
    name URL paths (keys) and send them wherever the environment's exporters point."""
    from ephemeral_broker.api.app import create_app
    from ephemeral_broker.settings import BrokerSettings

    monkeypatch.setenv("FASTAPI_OTEL_AUTO_CONFIGURE", "true")
    app = create_app(BrokerSettings())
    telemetry = app._native_telemetry  # FastAPI's own switch, read where it decides
    assert not telemetry.enabled()
    for switch in ("tracing", "metrics", "logs", "operation_spans", "auto_configure"):
        assert app._telemetry[switch] is False
