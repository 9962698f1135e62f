"""Probes, health, stats, ping and Prometheus metrics."""

from __future__ import annotations

import os
import resource
import sys
import time
from typing import Final

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ephemeral_broker.api.deps import (
    JSONBytesResponse,
    json_response,
    metrics_of,
    runtime_of,
    store_of,
)
from ephemeral_broker.api.responses import COMMON, problems
from ephemeral_broker.api.routing import LeanRoute
from ephemeral_broker.api.schemas import (
    HealthResponse,
    LivenessResponse,
    PingResponse,
    ReadinessResponse,
    StatsResponse,
)
from ephemeral_broker.errors import BrokerError
from ephemeral_broker.metrics import ScrapeSnapshot
from ephemeral_broker.store import StoreStatus, store_status
from ephemeral_broker.store.capacity import is_near_capacity
from ephemeral_broker.store.select import check_store

router = APIRouter(tags=["system"], route_class=LeanRoute)

_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size; peak RSS where /proc is missing (macOS)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


@router.get(
    "/healthz", name="system.healthz", summary="Liveness (no auth)", response_model=LivenessResponse
)
async def healthz(request: Request) -> Response:
    # Liveness: 200 while the process serves, even when a shared store is down (restarting
    # the broker would not bring Redis back); the body says why it would not be ready.
    status = store_status(store_of(request))
    if status.kind == "memory":
        return json_response({"status": "ok"})
    return json_response({"status": "ok", "store": _store_fields(status)})


def _store_fields(status: StoreStatus) -> dict[str, object]:
    return {
        "kind": status.kind,
        "namespace": status.namespace,
        "available": status.available,
        "reason": status.reason,
        "resets": status.resets,
        "last_reset_ms": status.last_reset_ms,
    }


@router.get(
    "/readyz",
    name="system.readyz",
    summary="Readiness (no auth): 503 once shutdown began, or while a shared store is down",
    response_model=ReadinessResponse,
    responses=problems("draining", "store_unavailable"),
)
async def readyz(request: Request) -> Response:
    if runtime_of(request).draining:
        raise BrokerError("draining", "the broker is shutting down")
    store = store_of(request)
    status = await check_store(store)
    if status.kind == "memory":
        return json_response({"status": "ready"})
    if not status.available:
        raise BrokerError("store_unavailable", f"the shared store is unavailable: {status.reason}")
    return json_response({"status": "ready", "store": _store_fields(status)})


@router.get(
    "/v1/health",
    name="system.health",
    summary="Health, capacity, memory",
    response_model=HealthResponse,
    responses=problems(*COMMON),
)
async def health(request: Request) -> Response:
    runtime = runtime_of(request)
    stats = await store_of(request).stats()
    limit = stats.max_items
    utilization = stats.items / limit if limit else 0.0
    at_capacity = bool(limit) and stats.items >= limit
    near_capacity = is_near_capacity(stats.items, limit)
    warning = "at_capacity" if at_capacity else "near_capacity" if near_capacity else None
    status = "draining" if runtime.draining else "degraded" if at_capacity else "healthy"
    return json_response(
        {
            "status": status,
            "store": _store_fields(store_status(store_of(request))),
            "uptime_ms": runtime.uptime_ms(),
            "capacity": {
                "items": stats.items,
                "max_items": limit,
                "utilization": round(utilization, 6),
                "near_capacity": near_capacity,
                "at_capacity": at_capacity,
                "warning": warning,
            },
            "memory": {"rss_bytes": rss_bytes()},
            "connections": {"in_flight": runtime.in_flight},
        }
    )


@router.get(
    "/v1/stats",
    name="system.stats",
    summary="Counts and sizes",
    response_model=StatsResponse,
    responses=problems(*COMMON),
)
async def stats(request: Request) -> Response:
    runtime = runtime_of(request)
    store_stats = await store_of(request).stats()
    return json_response(
        {
            "items": store_stats.items,
            "leases": store_stats.leases,
            "pools": store_stats.pools,
            "approx_store_bytes": store_stats.approx_store_bytes,
            "store": store_status(store_of(request)).kind,
            "uptime_ms": runtime.uptime_ms(),
            "requests_total": runtime.requests_total,
            "version": runtime.version,
        }
    )


@router.get(
    "/v1/ping",
    name="system.ping",
    summary="Round-trip check",
    response_model=PingResponse,
    responses=problems(*COMMON),
)
async def ping() -> Response:
    return JSONBytesResponse.of(b'{"pong":%d}' % (time.time_ns() // 1_000_000))


@router.get(
    "/metrics",
    name="system.metrics",
    summary="Prometheus text exposition",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format", "content": {CONTENT_TYPE_LATEST: {}}},
        **problems(*COMMON),
    },
)
async def metrics(request: Request) -> Response:
    runtime = runtime_of(request)
    snapshot = ScrapeSnapshot(
        store=await store_of(request).stats(),
        in_flight=runtime.in_flight,
        draining=runtime.draining,
        status=store_status(store_of(request)),
    )
    return Response(metrics_of(request).render(snapshot), media_type=CONTENT_TYPE_LATEST)
