"""The lease routes in-process (ASGI transport, fake clock): shapes, statuses, codes, metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ephemeral_broker.clock import FakeClock
from ephemeral_broker.store import MemoryStore
from tests.support.asgi import AppFactory
from tests.support.responses import assert_problem

pytestmark = pytest.mark.anyio

LEASE_FIELDS = {"pool", "worker_id", "value", "token", "expires_at", "ttl_ms"}


async def lease(api: httpx.AsyncClient, pool: str, worker: str, **body: Any) -> httpx.Response:
    return await api.post(f"/v1/leases/{pool}", json={"worker_id": worker, **body})


def metric(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels is None or sample.labels == labels):
                return float(sample.value)
    return 0.0


async def parked_leases(api: httpx.AsyncClient, count: int) -> None:
    store: MemoryStore = api._transport.app.state.store  # type: ignore[attr-defined]
    for _ in range(1000):
        if store.leases.waiting >= count:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("lease waiters never parked")


async def test_acquire_answers_201_then_200_for_the_holder(
    api: httpx.AsyncClient, clock: FakeClock
) -> None:
    created = await lease(api, "accounts", "gw0", ttl_ms=5000)
    assert created.status_code == 201
    body = created.json()
    assert set(body) == LEASE_FIELDS
    assert (body["pool"], body["worker_id"], body["value"], body["ttl_ms"]) == (
        "accounts",
        "gw0",
        0,
        5000,
    )
    assert body["expires_at"] == clock.now_ms() + 5000
    clock.advance(1000)
    renewed = await lease(api, "accounts", "gw0")
    assert renewed.status_code == 200
    again = renewed.json()
    assert (again["value"], again["token"]) == (body["value"], body["token"])
    assert again["ttl_ms"] == 60000  # the lease_ttl default
    assert again["expires_at"] == clock.now_ms() + 60000
    second = await lease(api, "accounts", "gw1")
    assert (second.status_code, second.json()["value"]) == (201, 1)
    assert second.json()["token"] > body["token"]


async def test_renew_route(api: httpx.AsyncClient, clock: FakeClock) -> None:
    granted = (await lease(api, "p", "w", ttl_ms=1000)).json()
    clock.advance(999)
    renewed = await api.post("/v1/leases/p/w/renew", json={"ttl_ms": 3000})
    assert renewed.status_code == 200
    body = renewed.json()
    assert set(body) == LEASE_FIELDS
    assert (body["value"], body["token"]) == (granted["value"], granted["token"])
    assert body["ttl_ms"] == 3000
    # An empty body renews by lease_ttl.
    assert (await api.post("/v1/leases/p/w/renew")).json()["ttl_ms"] == 60000
    clock.advance(60000)
    assert_problem(await api.post("/v1/leases/p/w/renew", json={}), 404, "lease_not_found")
    assert_problem(await api.post("/v1/leases/p/nobody/renew"), 404, "lease_not_found")


async def test_release_routes(api: httpx.AsyncClient) -> None:
    token = (await lease(api, "p", "w")).json()["token"]
    wrong = await api.delete("/v1/leases/p/w", params={"token": token + 1})
    assert f"token {token + 1}" in assert_problem(wrong, 412, "precondition_failed")["detail"]
    released = await api.delete("/v1/leases/p/w", params={"token": token})
    assert (released.status_code, released.json()) == (200, {"released": True})
    assert (await api.delete("/v1/leases/p/w")).json() == {"released": False}
    assert_problem(
        await api.delete("/v1/leases/p/w", params={"token": token}), 412, "precondition_failed"
    )
    # The released value is handed out again as the lowest.
    assert (await lease(api, "p", "other")).json()["value"] == 0


async def test_release_all_route(api: httpx.AsyncClient) -> None:
    for pool in ("a", "b", "c"):
        await lease(api, pool, "gw0")
    await lease(api, "a", "gw1")
    response = await api.delete("/v1/leases", params={"worker_id": "gw0"})
    assert (response.status_code, response.json()) == (200, {"released": 3})
    assert (await api.delete("/v1/leases", params={"worker_id": "gw0"})).json() == {"released": 0}
    listing = (await api.get("/v1/leases")).json()
    assert listing == {
        "pools": [
            {
                "pool": "a",
                "leases": [
                    {
                        "worker_id": "gw1",
                        "value": 1,
                        "token": 4,
                        "expires_at": listing["pools"][0]["leases"][0]["expires_at"],
                    }
                ],
            }
        ]
    }


async def test_list_routes_sort_pools_by_name_and_leases_by_value(
    api: httpx.AsyncClient, clock: FakeClock
) -> None:
    assert (await api.get("/v1/leases")).json() == {"pools": []}
    for worker in ("w0", "w1", "w2"):
        await lease(api, "zeta", worker)
    await api.delete("/v1/leases/zeta/w0")
    await lease(api, "zeta", "late")  # value 0, listed first
    await lease(api, "Alpha", "w")
    await lease(api, "beta", "w", ttl_ms=10)
    clock.advance(10)  # beta's only lease expires: the pool is not listed
    listing = (await api.get("/v1/leases")).json()["pools"]
    assert [pool["pool"] for pool in listing] == ["Alpha", "zeta"]
    one = (await api.get("/v1/leases/zeta")).json()
    assert one == listing[1]
    assert [(x["worker_id"], x["value"]) for x in one["leases"]] == [
        ("late", 0),
        ("w1", 1),
        ("w2", 2),
    ]
    assert set(one["leases"][0]) == {"worker_id", "value", "token", "expires_at"}
    assert (await api.get("/v1/leases/beta")).json() == {"pool": "beta", "leases": []}
    assert (await api.get("/v1/leases/never-used")).json() == {"pool": "never-used", "leases": []}


async def test_max_leases_507(make_api: AppFactory) -> None:
    async with make_api(max_leases=2) as api:
        await lease(api, "a", "w0")
        await lease(api, "b", "w0")
        body = assert_problem(await lease(api, "c", "w0"), 507, "max_leases")
        assert "'c'" in body["detail"]
        assert (await lease(api, "a", "w0")).status_code == 200  # renewal still works


async def test_pool_exhausted_409_at_once_and_after_wait(api: httpx.AsyncClient) -> None:
    await lease(api, "p", "w0", size=1)
    assert_problem(await lease(api, "p", "w1", size=1), 409, "pool_exhausted")
    body = assert_problem(await lease(api, "p", "w1", size=1, wait_ms=20), 409, "pool_exhausted")
    assert "wait_ms of 20 ms" in body["detail"]


async def test_waiting_acquire_is_granted_on_release(api: httpx.AsyncClient) -> None:
    holder = (await lease(api, "p", "holder", size=1)).json()
    waiting = asyncio.ensure_future(lease(api, "p", "waiter", size=1, wait_ms=30000))
    await parked_leases(api, 1)
    await api.delete("/v1/leases/p/holder")
    response = await waiting
    assert response.status_code == 201
    assert (response.json()["value"], response.json()["worker_id"]) == (holder["value"], "waiter")


INVALID_ACQUIRES: list[tuple[str, Any, int, str]] = [
    ("/v1/leases/a%20b", {"worker_id": "w"}, 422, "invalid_key"),
    ("/v1/leases/a%2Fb", {"worker_id": "w"}, 422, "invalid_key"),
    ("/v1/leases/%2E%2E", {"worker_id": "w"}, 422, "invalid_key"),
    ("/v1/leases/", {"worker_id": "w"}, 422, "invalid_key"),
    ("/v1/leases/" + "p" * 513, {"worker_id": "w"}, 422, "invalid_key"),
    ("/v1/leases/p", {"worker_id": ""}, 422, "invalid_key"),
    ("/v1/leases/p", {"worker_id": "a b"}, 422, "invalid_key"),
    ("/v1/leases/p", {"worker_id": "a/b"}, 422, "invalid_key"),
    ("/v1/leases/p", {"worker_id": "x\u0000"}, 422, "invalid_key"),
    ("/v1/leases/p", {"worker_id": 7}, 422, "invalid_key"),
    ("/v1/leases/p", {"worker_id": None}, 422, "invalid_key"),
    ("/v1/leases/p", {}, 422, "validation_error"),
    ("/v1/leases/p", {"worker_id": "w", "ttl_ms": 0}, 422, "invalid_ttl"),
    ("/v1/leases/p", {"worker_id": "w", "ttl_ms": -1}, 422, "invalid_ttl"),
    ("/v1/leases/p", {"worker_id": "w", "ttl_ms": 86400001}, 422, "invalid_ttl"),
    ("/v1/leases/p", {"worker_id": "w", "ttl_ms": "100"}, 422, "invalid_ttl"),
    ("/v1/leases/p", {"worker_id": "w", "ttl_ms": 1.5}, 422, "invalid_ttl"),
    ("/v1/leases/p", {"worker_id": "w", "ttl_ms": True}, 422, "invalid_ttl"),
    ("/v1/leases/p", {"worker_id": "w", "size": 0}, 422, "validation_error"),
    ("/v1/leases/p", {"worker_id": "w", "size": 1000001}, 422, "validation_error"),
    ("/v1/leases/p", {"worker_id": "w", "size": "8"}, 422, "validation_error"),
    # Beyond 64 bits a JSON integer cannot be read without losing digits: refused as JSON.
    ("/v1/leases/p", {"worker_id": "w", "size": 10**30}, 400, "invalid_json"),
    ("/v1/leases/p", {"worker_id": "w", "size": 2**62}, 422, "validation_error"),
    ("/v1/leases/p", {"worker_id": "w", "wait_ms": -1}, 422, "validation_error"),
    ("/v1/leases/p", {"worker_id": "w", "wait_ms": 300001}, 422, "validation_error"),
    ("/v1/leases/p", {"worker_id": "w", "wait_ms": None}, 422, "validation_error"),
    ("/v1/leases/p", {"worker_id": "w", "colour": "red"}, 422, "validation_error"),
    ("/v1/leases/p", ["w"], 422, "validation_error"),
    ("/v1/leases/p", "w", 422, "validation_error"),
]


@pytest.mark.parametrize(("url", "body", "status", "code"), INVALID_ACQUIRES)
async def test_malformed_acquire_is_refused_with_its_code(
    api: httpx.AsyncClient, url: str, body: Any, status: int, code: str
) -> None:
    assert_problem(await api.post(url, json=body), status, code)
    assert (await api.get("/v1/stats")).json()["leases"] == 0


@pytest.mark.parametrize(
    ("content", "code"),
    [(b"", "invalid_json"), (b"{", "invalid_json"), (b'{"worker_id": NaN}', "invalid_json")],
)
async def test_acquire_with_a_broken_body(
    api: httpx.AsyncClient, content: bytes, code: str
) -> None:
    assert_problem(await api.post("/v1/leases/p", content=content), 400, code)


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status", "code"),
    [
        ("POST", "/v1/leases/p/w/renew", {"json": {"ttl_ms": 0}}, 422, "invalid_ttl"),
        ("POST", "/v1/leases/p/w/renew", {"json": {"ttl_ms": "x"}}, 422, "invalid_ttl"),
        ("POST", "/v1/leases/p/w/renew", {"json": {"extra": 1}}, 422, "validation_error"),
        ("POST", "/v1/leases/p/w/renew", {"content": b"[1"}, 400, "invalid_json"),
        ("POST", "/v1/leases/p/a%20b/renew", {}, 422, "invalid_key"),
        ("POST", "/v1/leases/%2E%2E/w/renew", {}, 422, "invalid_key"),
        ("DELETE", "/v1/leases/p/w?token=abc", {}, 422, "validation_error"),
        ("DELETE", "/v1/leases/p/w?token=0", {}, 422, "validation_error"),
        ("DELETE", "/v1/leases/p/w?token=-3", {}, 422, "validation_error"),
        ("DELETE", "/v1/leases/p/a%2Fb", {}, 422, "invalid_key"),
        ("DELETE", "/v1/leases/p%20q/w", {}, 422, "invalid_key"),
        ("DELETE", "/v1/leases/p/", {}, 422, "invalid_key"),
        ("DELETE", "/v1/leases", {}, 422, "validation_error"),
        ("DELETE", "/v1/leases?worker_id=", {}, 422, "invalid_key"),
        ("DELETE", "/v1/leases?worker_id=a%20b", {}, 422, "invalid_key"),
        ("GET", "/v1/leases/a%20b", {}, 422, "invalid_key"),
        ("GET", "/v1/leases/a%2Fb", {}, 422, "invalid_key"),
        ("DELETE", "/v1/leases/p", {}, 405, "method_not_allowed"),
        ("PUT", "/v1/leases/p", {}, 405, "method_not_allowed"),
    ],
)
async def test_malformed_lease_requests_are_refused_with_their_code(
    api: httpx.AsyncClient, method: str, url: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    assert_problem(await api.request(method, url, **kwargs), status, code)


async def test_stats_and_metrics_count_leases(api: httpx.AsyncClient, clock: FakeClock) -> None:
    await lease(api, "a", "w0")
    await lease(api, "a", "w0")
    await lease(api, "a", "w1", ttl_ms=10)
    await lease(api, "b", "w0")
    await lease(api, "b", "w1", size=1)  # exhausted
    await api.post("/v1/leases/a/w0/renew")
    await api.delete("/v1/leases/b/w0")
    await api.delete("/v1/leases/b/w0")
    clock.advance(10)
    stats = (await api.get("/v1/stats")).json()
    assert (stats["leases"], stats["pools"]) == (1, 1)
    text = (await api.get("/metrics")).text
    assert metric(text, "ephemeral_broker_leases") == 1
    assert metric(text, "ephemeral_broker_expired_total", {"type": "leases"}) == 1

    def ops(operation: str, result: str) -> float:
        labels = {"operation": operation, "result": result}
        return metric(text, "ephemeral_broker_operations_total", labels)

    assert ops("leases.acquire", "granted") == 3
    assert ops("leases.acquire", "renewed") == 1
    assert ops("leases.acquire", "pool_exhausted") == 1
    assert ops("leases.renew", "renewed") == 1
    assert ops("leases.release", "released") == 1
    assert ops("leases.release", "absent") == 1


@pytest.mark.defect(22)
async def test_pool_and_worker_names_never_become_metric_labels(
    api: httpx.AsyncClient,
) -> None:
    name = 'we"ird\\pool{x="1"}'
    assert (await lease(api, name, 'wor"ker')).status_code == 201
    assert (await api.get(f"/v1/leases/{name}")).json()["leases"][0]["worker_id"] == 'wor"ker'
    text = (await api.get("/metrics")).text
    assert "we" + '"ird' not in text and "wor" + '"ker' not in text
    list(text_string_to_metric_families(text))  # still parses
