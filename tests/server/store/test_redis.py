"""What only the Redis store has: its key layout in Redis, safety TTLs, namespaces, refusals
by Redis, and no keyspace scans. The Store protocol itself is in test_store_conformance.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from ephemeral_broker.clock import FakeClock
from ephemeral_broker.errors import BrokerError
from ephemeral_broker.store.base import NamespaceConflict
from ephemeral_broker.store.redis import SAFETY_MARGIN_MS, RedisStore
from tests.support.redis_server import fresh_namespace
from tests.support.store import enc, limits

pytestmark = pytest.mark.anyio


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def started(
    url: str, namespace: str, clock: FakeClock | None = None, **kw: int
) -> RedisStore:
    store = RedisStore(limits(**kw), url, namespace, clock)
    await store.start()
    return store


async def test_every_key_of_a_namespace_shares_its_hash_tag_and_has_a_safety_ttl(
    redis_url: str, raw: aioredis.Redis, clock: FakeClock
) -> None:
    namespace = fresh_namespace()
    store = await started(redis_url, namespace, clock)
    try:
        await store.set("a:b", enc(1), 1000)
        await store.incr("n", 1, 1000)
        await store.acquire_lease("pool", "worker", 1000, 2)
        await store.sweep()  # refreshes the namespace's own keys
        names = [name.decode() async for name in raw.scan_iter(match=f"eb:{{{namespace}}}:*")]
        assert len(names) >= 10
        for name in names:
            ttl = await raw.pttl(name)
            assert 0 < ttl <= limits().max_ttl + SAFETY_MARGIN_MS, (name, ttl)
        assert all(name.startswith(f"eb:{{{namespace}}}:") for name in names)
    finally:
        await store.close()


async def test_namespaces_are_independent(redis_url: str, clock: FakeClock) -> None:
    one = await started(redis_url, fresh_namespace(), clock)
    two = await started(redis_url, fresh_namespace(), clock)
    try:
        await one.set("k", enc(1), 1000)
        assert await two.get("k") is None
        assert (await one.acquire_lease("p", "w", 1000)).value == 0
        assert (await two.acquire_lease("p", "w", 1000)).value == 0
    finally:
        await one.close()
        await two.close()


async def test_a_store_with_other_limits_cannot_join_a_namespace(redis_url: str) -> None:
    namespace = fresh_namespace()
    first = await started(redis_url, namespace, max_items=100)
    second = RedisStore(limits(max_items=200), redis_url, namespace)
    try:
        with pytest.raises(NamespaceConflict) as caught:
            await second.start()
        assert caught.value.setting == "max_items"
        assert "max_items=100" in str(caught.value) and "max_items=200" in str(caught.value)
        same = await started(redis_url, namespace, max_items=100)
        await same.close()
    finally:
        await first.close()
        await second.close()


async def test_no_operation_scans_the_keyspace(
    redis_url: str, raw: aioredis.Redis, clock: FakeClock
) -> None:
    store = await started(redis_url, fresh_namespace(), clock)
    try:
        await raw.config_resetstat()
        for i in range(20):
            await store.set(f"k{i}", enc(i), 100)
            await store.acquire_lease("p", f"w{i}", 100)
        await store.list("k1", 5)
        await store.list_pools()
        clock.advance(100)
        await store.sweep()
        await store.stats()
        used = {name.removeprefix("cmdstat_") for name in await raw.info("commandstats")}
        assert not used & {"scan", "keys", "bitpos"}, used
    finally:
        await store.close()


async def test_a_refusal_by_redis_is_store_unavailable_not_a_wrong_answer(
    redis_url: str, raw: aioredis.Redis, clock: FakeClock
) -> None:
    store = await started(redis_url, fresh_namespace(), clock)
    await raw.config_set("maxmemory", "1")
    try:
        with pytest.raises(BrokerError) as caught:
            await store.set("k", enc("x" * 100), 1000)
        assert caught.value.code == "store_unavailable"
        assert "refused" in caught.value.detail
    finally:
        await raw.config_set("maxmemory", "0")
        await store.close()


async def test_an_unreachable_redis_is_store_unavailable() -> None:
    store = RedisStore(limits(), "unix:///nonexistent/redis.sock", fresh_namespace())
    try:
        with pytest.raises(BrokerError) as caught:
            await store.start()
        assert caught.value.code == "store_unavailable"
        status = store.status()
        assert not status.available and status.reason is not None
        assert "/nonexistent/redis.sock" in status.reason
    finally:
        await store.close()


async def test_a_lost_namespace_is_one_reset_and_reuses_no_version_or_token(
    redis_url: str, raw: aioredis.Redis, clock: FakeClock
) -> None:
    namespace = fresh_namespace()
    store = await started(redis_url, namespace, clock)
    try:
        version = (await store.set("k", enc(1), 1000)).meta.version
        token = (await store.acquire_lease("p", "w", 1000)).token
        # Redis loses the namespace (as after a restart without persistence).
        names = [name async for name in raw.scan_iter(match=f"eb:{{{namespace}}}:*")]
        await raw.delete(*names)
        results = await asyncio.gather(*(store.set(f"n{i}", enc(i), 1000) for i in range(10)))
        assert min(result.meta.version for result in results) > version
        assert store.status().resets == 1  # ten refusals, one loss, one recovery
        assert (await store.acquire_lease("p", "w2", 1000)).token > token
        assert await store.get("k") is None
    finally:
        await store.close()
