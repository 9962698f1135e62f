"""Waiting reads: GET ?wait_ms= and ?after_version=, in the store and in-process through the API.

Assertions are about order (the answer comes after, and because of, the write), never about how
many milliseconds it took.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from ephemeral_broker.api.app import create_app
from ephemeral_broker.clock import FakeClock
from ephemeral_broker.errors import BrokerError
from ephemeral_broker.settings import BrokerSettings
from ephemeral_broker.store import MemoryStore, StoreLimits

pytestmark = pytest.mark.anyio


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(StoreLimits.from_settings(BrokerSettings()), clock)


async def parked_reads(store: MemoryStore, count: int) -> None:
    for _ in range(2000):
        if store.waiting_reads >= count:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"only {store.waiting_reads} of {count} reads parked")


def store_of(api: httpx.AsyncClient) -> MemoryStore:
    store: MemoryStore = api._transport.app.state.store  # type: ignore[attr-defined]
    return store


# ---- the store --------------------------------------------------------------------------------


async def test_wait_returns_the_write_that_woke_it(store: MemoryStore) -> None:
    waiter = asyncio.ensure_future(store.wait_for("k", 60_000))
    await parked_reads(store, 1)
    assert not waiter.done()
    written = await store.set("k", b'"hello"', 1000)
    item = await waiter
    assert item is not None
    assert (item.value, item.version) == (b'"hello"', written.meta.version)
    assert store.waiting_reads == 0


async def test_present_key_answers_without_waiting(store: MemoryStore) -> None:
    await store.set("k", b"1", 1000)
    item = await asyncio.wait_for(store.wait_for("k", 300_000), 30)
    assert item is not None and item.value == b"1"


async def test_wait_on_a_missing_key_ends_with_none_and_leaves_no_watch(
    store: MemoryStore,
) -> None:
    assert await store.wait_for("missing", 20) is None
    assert store.waiting_reads == 0
    assert not store._watchers  # the key's watch was dropped with its last waiter


async def test_one_write_wakes_two_hundred_waiters(store: MemoryStore) -> None:
    waiters = [asyncio.ensure_future(store.wait_for("k", 60_000)) for _ in range(200)]
    await parked_reads(store, 200)
    version = (await store.set("k", b"[1]", 1000)).meta.version
    items = await asyncio.gather(*waiters)
    assert all(item is not None and item.version == version for item in items)


async def test_after_version_waits_for_a_newer_version(store: MemoryStore) -> None:
    first = (await store.set("k", b"1", 1000)).meta.version
    watcher = asyncio.ensure_future(store.wait_for("k", 60_000, after_version=first))
    await parked_reads(store, 1)
    await store.touch("k", 5000)  # no new version: the watch goes on
    await store.delete("k")  # nor is a delete one
    await asyncio.sleep(0.01)
    assert not watcher.done()
    newer = await store.incr("n", 1, 1000)  # another key: not a wake-up for this one
    await asyncio.sleep(0.01)
    assert not watcher.done()
    recreated = (await store.set("k", b"2", 1000)).meta.version
    item = await watcher
    assert item is not None and item.version == recreated > newer.version > first


async def test_after_version_ends_with_the_unchanged_item(store: MemoryStore) -> None:
    version = (await store.set("k", b"1", 1000)).meta.version
    item = await store.wait_for("k", 20, after_version=version)
    assert item is not None and item.version == version  # the route answers 304
    newer = await store.wait_for("k", 20, after_version=version - 1)
    assert newer is not None and newer.version == version  # already newer: no wait


async def test_an_item_written_already_expired_does_not_end_the_wait(
    store: MemoryStore, clock: FakeClock
) -> None:
    waiter = asyncio.ensure_future(store.wait_for("k", 50))
    await parked_reads(store, 1)
    await store.set("k", b"1", 10)
    clock.advance(10)  # expired before the waiter looks: it keeps waiting until wait_ms
    assert await waiter is None


async def test_incr_wakes_waiters(store: MemoryStore) -> None:
    waiter = asyncio.ensure_future(store.wait_for("counter", 60_000))
    await parked_reads(store, 1)
    await store.incr("counter", 5, 1000)
    item = await waiter
    assert item is not None and item.value == b"5"


async def test_cancelled_wait_leaves_no_watch(store: MemoryStore) -> None:
    waiter = asyncio.ensure_future(store.wait_for("k", 60_000))
    await parked_reads(store, 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert store.waiting_reads == 0 and not store._watchers


@pytest.mark.parametrize("wait_ms", [-1, 300_001, True])
async def test_store_refuses_a_bad_wait(store: MemoryStore, wait_ms: int) -> None:
    with pytest.raises(BrokerError) as caught:
        await store.wait_for("k", wait_ms)
    assert caught.value.code == "validation_error" and "'k'" in caught.value.detail


# ---- the API ----------------------------------------------------------------------------------


async def test_waiting_get_wakes_on_the_write(api: httpx.AsyncClient) -> None:
    events: list[str] = []

    async def read() -> httpx.Response:
        response = await api.get("/v1/keys/ready", params={"wait_ms": 60000})
        events.append("read answered")
        return response

    reader = asyncio.ensure_future(read())
    await parked_reads(store_of(api), 1)
    events.append("writing")
    put = await api.put("/v1/keys/ready", json={"value": {"go": True}, "ttl_ms": 5000})
    response = await reader
    assert events == ["writing", "read answered"]
    assert response.status_code == 200
    assert response.json()["value"] == {"go": True}
    assert response.headers["etag"] == f'"{put.json()["version"]}"'


async def test_waiting_get_on_a_missing_key_ends_404(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/keys/never", params={"wait_ms": 25})
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert response.json()["detail"] == (
        "key 'never' does not exist or has expired (waited wait_ms of 25 ms for it)"
    )


async def test_after_version_304_then_200(api: httpx.AsyncClient) -> None:
    version = (await api.put("/v1/keys/k", json={"value": 1, "ttl_ms": 5000})).json()["version"]
    unchanged = await api.get("/v1/keys/k", params={"wait_ms": 25, "after_version": version})
    assert unchanged.status_code == 304
    assert unchanged.content == b"" and unchanged.headers["etag"] == f'"{version}"'
    # Without wait_ms, after_version is a plain conditional read.
    assert (await api.get("/v1/keys/k", params={"after_version": version})).status_code == 304
    assert (await api.get("/v1/keys/k", params={"after_version": version - 1})).status_code == 200
    watch = asyncio.ensure_future(
        api.get("/v1/keys/k", params={"wait_ms": 60000, "after_version": version})
    )
    await parked_reads(store_of(api), 1)
    newer = (await api.put("/v1/keys/k", json={"value": 2, "ttl_ms": 5000})).json()["version"]
    response = await watch
    assert response.status_code == 200
    assert (response.json()["value"], response.json()["version"]) == (2, newer)


async def test_after_version_on_an_absent_key_ends_404(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/keys/gone", params={"wait_ms": 25, "after_version": 3})
    assert response.status_code == 404


async def test_two_hundred_waiting_gets_wake_on_one_write(api: httpx.AsyncClient) -> None:
    readers = [
        asyncio.ensure_future(api.get("/v1/keys/barrier", params={"wait_ms": 60000}))
        for _ in range(200)
    ]
    await parked_reads(store_of(api), 200)
    version = (await api.put("/v1/keys/barrier", json={"value": "go", "ttl_ms": 5000})).json()[
        "version"
    ]
    responses = await asyncio.gather(*readers)
    assert {(r.status_code, r.json()["version"]) for r in responses} == {(200, version)}


@pytest.mark.parametrize(
    "params",
    [
        {"wait_ms": -1},
        {"wait_ms": 300001},
        {"wait_ms": "soon"},
        {"wait_ms": "1.5"},
        {"after_version": -1},
        {"after_version": "x"},
        {"after_version": 2**63},
    ],
)
async def test_bad_wait_parameters_are_validation_errors(
    api: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    response = await api.get("/v1/keys/k", params=params)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert next(iter(params)) in response.json()["detail"]


async def test_waiting_get_with_a_bad_key_is_invalid_key(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/keys/a%20b", params={"wait_ms": 1000})
    assert (response.status_code, response.json()["code"]) == (422, "invalid_key")


async def test_waits_end_503_draining_when_shutdown_begins(clock: FakeClock) -> None:
    app = create_app(BrokerSettings(), clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as api:
        store: MemoryStore = app.state.store
        await api.post("/v1/leases/p", json={"worker_id": "holder", "size": 1})
        read = asyncio.ensure_future(api.get("/v1/keys/k", params={"wait_ms": 60000}))
        acquire = asyncio.ensure_future(
            api.post("/v1/leases/p", json={"worker_id": "w", "size": 1, "wait_ms": 60000})
        )
        await parked_reads(store, 1)
        for _ in range(1000):
            if store.leases.waiting:
                break
            await asyncio.sleep(0.001)
        app.state.runtime.begin_drain()
        for response in await asyncio.gather(read, acquire):
            assert response.status_code == 503
            assert response.json()["code"] == "draining"
            assert response.headers["retry-after"] == "1"
        assert store.waiting_reads == 0 and store.leases.waiting == 0
        # The lease wait left nothing behind: the holder is still the only lease.
        assert [x.worker_id for x in (await store.list_pool("p")).leases] == ["holder"]


async def test_recipe_barrier_from_incr_and_waiting_reads(api: httpx.AsyncClient) -> None:
    """The barrier of docs/recipes.md: nobody passes before the last of N workers has arrived."""
    parties = 5
    events: list[str] = []

    async def worker(name: str, delay_s: float) -> int:
        await asyncio.sleep(delay_s)
        events.append(f"arrive {name}")
        arrived = await api.post("/v1/keys/barrier:setup:arrived/incr", json={"ttl_ms": 600000})
        if arrived.json()["value"] == parties:
            await api.put("/v1/keys/barrier:setup:open", json={"value": True, "ttl_ms": 600000})
        opened = await api.get("/v1/keys/barrier:setup:open", params={"wait_ms": 60000})
        events.append(f"pass {name}")
        return opened.status_code

    statuses = await asyncio.gather(*(worker(f"w{n}", n * 0.01) for n in range(parties)))
    assert statuses == [200] * parties
    assert [e.split()[0] for e in events] == ["arrive"] * parties + ["pass"] * parties
