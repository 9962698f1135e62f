"""The Store protocol, run over every store: the memory store and the Redis store (a real
redis-server per test worker, a fresh namespace per test, the fake clock passed to the
scripts). What only the memory store has (its heaps, its compaction) stays in
test_store_memory.py and test_store_leases.py.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import orjson
import pytest

from ephemeral_broker.clock import FakeClock
from ephemeral_broker.errors import BrokerError
from ephemeral_broker.store import MemoryStore, Precondition
from ephemeral_broker.store.redis import RedisStore
from tests.support.redis_server import fresh_namespace
from tests.support.store import limits

pytestmark = pytest.mark.anyio

AnyStore = MemoryStore | RedisStore
StoreFactory = Callable[..., Awaitable[AnyStore]]


@pytest.fixture(params=["memory", "redis"])
async def make_store(
    request: pytest.FixtureRequest, clock: FakeClock
) -> AsyncIterator[StoreFactory]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    started: list[RedisStore] = []

    async def factory(**overrides: Any) -> AnyStore:
        if not url:
            return MemoryStore(limits(**overrides), clock)
        store = RedisStore(limits(**overrides), url, fresh_namespace(), clock)
        await store.start()
        started.append(store)
        return store

    yield factory
    for store in started:
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> AnyStore:
    return await make_store()


def enc(value: Any) -> bytes:
    return orjson.dumps(value)


async def error_of(awaitable: Awaitable[Any]) -> BrokerError:
    with pytest.raises(BrokerError) as caught:
        await awaitable
    return caught.value


async def code_of(awaitable: Awaitable[Any]) -> str:
    return (await error_of(awaitable)).code


def has_waiters(store: AnyStore, count: int) -> bool:
    return lease_waiters(store) == count


def lease_waiters(store: AnyStore) -> int:
    return store.leases.waiting if isinstance(store, MemoryStore) else store.waiting_leases


async def until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


# ---- keys ------------------------------------------------------------------------------


async def test_set_then_get_returns_the_same_bytes(store: AnyStore) -> None:
    value = enc({"token": "abc", "n": [1, 2.5, None, True], "ü": "✓"})
    result = await store.set("k", value, 1000)
    assert result.created
    item = await store.get("k")
    assert item is not None
    assert (item.value, item.version) == (value, result.meta.version)
    again = await store.set("k", enc(2), 1000)
    assert not again.created


async def test_versions_grow_on_every_write_across_keys(store: AnyStore) -> None:
    versions = [
        (await store.set("a", enc(1), 1000)).meta.version,
        (await store.set("b", enc(1), 1000)).meta.version,
        (await store.incr("c", 1, 1000)).version,
        (await store.set("a", enc(2), 1000)).meta.version,
    ]
    assert versions == sorted(set(versions))


async def test_key_expires_exactly_at_its_deadline(store: AnyStore, clock: FakeClock) -> None:
    result = await store.set("k", enc(1), 1000)
    assert result.meta.expires_at == clock.now_ms() + 1000
    clock.advance(999)
    assert await store.get("k") is not None
    clock.advance(1)
    assert await store.get("k") is None
    assert (await store.stats()).items == 0


async def test_expired_keys_are_never_listed_even_before_a_sweep(
    store: AnyStore, clock: FakeClock
) -> None:
    await store.set("a", enc(1), 100)
    await store.set("b", enc(1), 1000)
    clock.advance(100)
    assert [info.key for info in await store.list("", 10)] == ["b"]


async def test_ttl_rules(make_store: StoreFactory) -> None:
    store = await make_store()
    for bad in (0, -1, 86_400_001):
        assert await code_of(store.set("k", enc(1), bad)) == "invalid_ttl"
    assert await code_of(store.set("k", enc(1), None)) == "ttl_required"
    assert await code_of(store.touch("k", 0)) == "invalid_ttl"
    relaxed = await make_store(require_ttl=False, default_ttl=5000)
    assert (await relaxed.set("k", enc(1), None)).meta.ttl_ms == 5000


async def test_if_none_match_star_creates_only(store: AnyStore, clock: FakeClock) -> None:
    create_only = Precondition(if_none_match="*")
    await store.set("k", enc(1), 100, create_only)
    error = await error_of(store.set("k", enc(2), 100, create_only))
    assert error.code == "precondition_failed" and "'k' exists at version" in error.detail
    clock.advance(100)
    assert (await store.set("k", enc(3), 100, create_only)).created


async def test_if_match_is_compare_and_set(store: AnyStore) -> None:
    first = await store.set("k", enc(1), 1000)
    version = first.meta.version
    second = await store.set("k", enc(2), 1000, Precondition(if_match=frozenset({version})))
    assert second.meta.version > version
    stale = await error_of(
        store.set("k", enc(3), 1000, Precondition(if_match=frozenset({version})))
    )
    assert stale.code == "precondition_failed"
    assert f"is at version {second.meta.version}" in stale.detail
    missing = await error_of(store.set("nope", enc(1), 1000, Precondition(if_match="*")))
    assert "does not exist" in missing.detail
    either = Precondition(if_match=frozenset({version, second.meta.version}))
    assert not (await store.set("k", enc(4), 1000, either)).created
    assert await code_of(store.set("k", enc(5), 1000, Precondition(if_match=frozenset()))) == (
        "precondition_failed"
    )


async def test_delete_is_idempotent_and_honours_if_match(store: AnyStore) -> None:
    version = (await store.set("k", enc(1), 1000)).meta.version
    wrong = Precondition(if_match=frozenset({version + 1}))
    assert await code_of(store.delete("k", wrong)) == "precondition_failed"
    assert await store.delete("k", Precondition(if_match=frozenset({version})))
    assert not await store.delete("k")
    assert await code_of(store.delete("k", Precondition(if_match="*"))) == "precondition_failed"


async def test_incr_counts_from_zero_and_keeps_its_deadline(
    store: AnyStore, clock: FakeClock
) -> None:
    first = await store.incr("n", 5, 1000)
    assert first.value == b"5"
    clock.advance(400)
    second = await store.incr("n", -7, None)
    assert (second.value, second.expires_at) == (b"-2", first.expires_at)
    third = await store.incr("n", 1, 5000)
    assert third.expires_at == clock.now_ms() + 5000
    assert await code_of(store.incr("fresh", 1, None)) == "ttl_required"


async def test_incr_is_exact_over_the_whole_64_bit_range(store: AnyStore) -> None:
    top = 2**63 - 1
    await store.set("n", enc(top - 1), 1000)
    assert (await store.incr("n", 1, None)).value == str(top).encode()
    overflow = await error_of(store.incr("n", 1, None))
    assert overflow.code == "not_an_integer" and "64-bit" in overflow.detail
    await store.set("m", enc(-(2**63) + 1), 1000)
    assert (await store.incr("m", -1, None)).value == str(-(2**63)).encode()
    assert await code_of(store.incr("m", -1, None)) == "not_an_integer"
    await store.set("big", enc(2**53), 1000)
    assert (await store.incr("big", 1, None)).value == str(2**53 + 1).encode()
    await store.set("huge", str(2**70).encode(), 1000)
    assert await code_of(store.incr("huge", 1, None)) == "not_an_integer"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("text", "string"),
        (1.5, "number with a fraction"),
        ([1], "array"),
        ({"a": 1}, "object"),
        (None, "null"),
        (True, "boolean"),
        ("x" * 4000, "string"),  # stored compressed
    ],
)
async def test_incr_refuses_non_integers_naming_the_type(
    store: AnyStore, value: Any, kind: str
) -> None:
    await store.set("k", enc(value), 1000)
    error = await error_of(store.incr("k", 1, None))
    assert error.code == "not_an_integer"
    assert f"a JSON {kind}, not an integer" in error.detail


async def test_touch_restarts_ttl_but_keeps_value_and_version(
    store: AnyStore, clock: FakeClock
) -> None:
    version = (await store.set("k", enc("v"), 1000)).meta.version
    clock.advance(900)
    meta = await store.touch("k", 1000)
    assert (meta.version, meta.expires_at) == (version, clock.now_ms() + 1000)
    clock.advance(900)
    item = await store.get("k")
    assert item is not None and item.value == enc("v")
    short = await store.touch("k", 10)
    clock.advance(10)
    assert short.expires_at == clock.now_ms()
    assert await store.get("k") is None
    assert await code_of(store.touch("k", 1000)) == "not_found"


async def test_refresh_ttl_on_get_slides_the_deadline(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = await make_store(refresh_ttl_on_get=True)
    await store.set("k", enc(1), 1000)
    for _ in range(3):
        clock.advance(900)
        item = await store.get("k")
        assert item is not None and item.expires_at == clock.now_ms() + 1000
    clock.advance(1000)
    assert await store.get("k") is None


async def test_list_is_code_point_ordered_prefix_filtered_and_limited(store: AnyStore) -> None:
    keys = ["b", "a", "ab", "a-b", "é", "z", "\U0001f600", "ａ", "a\u00ff"]
    for key in keys:
        await store.set(key, enc(key), 1000)
    listed = [info.key for info in await store.list("", 100)]
    assert listed == sorted(keys)  # Python sorts str by code point
    assert [info.key for info in await store.list("a", 100)] == ["a", "a-b", "ab", "a\u00ff"]
    assert [info.key for info in await store.list("a", 2)] == ["a", "a-b"]
    assert [info.key for info in await store.list("é", 5)] == ["é"]
    assert await store.list("q", 5) == []
    assert await store.list("", 0) == []
    info = (await store.list("é", 1))[0]
    assert info.size == len(enc("é"))


async def test_sizes_are_utf8_bytes_and_too_large_names_the_key_and_limit(
    make_store: StoreFactory,
) -> None:
    store = await make_store(max_value_size=10, compression_threshold=0)
    await store.set("k", enc("ü" * 4), 1000)  # 10 bytes: "ü" is 2 bytes of UTF-8
    error = await error_of(store.set("k", enc("ü" * 5), 1000))
    assert error.code == "too_large"
    assert "'k'" in error.detail and "12 bytes" in error.detail and "max_value_size" in error.detail


async def test_max_items_refuses_new_keys_but_reclaims_due_ones(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = await make_store(max_items=2)
    await store.set("a", enc(1), 100)
    await store.set("b", enc(1), 1000)
    error = await error_of(store.set("c", enc(1), 1000))
    assert error.code == "max_items" and "'c'" in error.detail
    assert await code_of(store.incr("c", 1, 1000)) == "max_items"
    await store.set("a", enc(2), 100)  # an overwrite needs no room
    clock.advance(100)
    assert (await store.set("c", enc(1), 1000)).created
    unlimited = await make_store(max_items=0)
    for i in range(20):
        await unlimited.set(f"k{i}", enc(i), 1000)
    assert (await unlimited.stats()).items == 20


async def test_values_over_the_threshold_round_trip_and_are_counted(
    make_store: StoreFactory,
) -> None:
    store = await make_store(compression_threshold=64)
    big = enc("abc" * 500)
    await store.set("big", big, 1000)
    await store.set("small", enc("x"), 1000)
    noise = enc(zlib.compress(bytes(range(256)) * 2).hex())
    await store.set("noise", noise, 1000)
    item = await store.get("big")
    assert item is not None and item.value == big
    assert (await store.list("big", 1))[0].size == len(big)
    stats = await store.stats()
    assert stats.values_stored_compressed_total >= 1
    assert stats.values_stored_uncompressed_total >= 1
    assert stats.compression_bytes_before_total >= len(big)
    assert stats.compression_bytes_after_total < stats.compression_bytes_before_total
    assert stats.approx_store_bytes > 0


async def test_names_are_checked_on_every_operation(store: AnyStore) -> None:
    for bad in ("", "a/b", "a b", "\x00", ".", "k" * 600):
        assert await code_of(store.set(bad, enc(1), 1000)) == "invalid_key"
        assert await code_of(store.get(bad)) == "invalid_key"
        assert await code_of(store.delete(bad)) == "invalid_key"
        assert await code_of(store.incr(bad, 1, 1000)) == "invalid_key"
        assert await code_of(store.touch(bad, 1000)) == "invalid_key"
        assert await code_of(store.acquire_lease(bad, "w", 1000)) == "invalid_key"
        assert await code_of(store.acquire_lease("p", bad, 1000)) == "invalid_key"
        assert await code_of(store.release_worker(bad)) == "invalid_key"
    assert await code_of(store.list("a/", 10)) == "invalid_key"


async def test_stats_count_items_and_expiries(store: AnyStore, clock: FakeClock) -> None:
    await store.set("a", enc(1), 100)
    await store.set("b", enc(1), 1000)
    await store.acquire_lease("p", "w", 100)
    clock.advance(100)
    assert await store.sweep() == 2
    stats = await store.stats()
    assert (stats.items, stats.expired_items_total) == (1, 1)
    assert (stats.leases, stats.expired_leases_total) == (0, 1)


# ---- waiting reads -------------------------------------------------------------------------


async def test_wait_returns_the_write_that_woke_it(store: AnyStore) -> None:
    waiter = asyncio.create_task(store.wait_for("k", 5000))
    await until(lambda: store.waiting_reads == 1, "the waiting read")
    written = await store.set("k", enc("hello"), 1000)
    item = await asyncio.wait_for(waiter, 5)
    assert item is not None
    assert (item.value, item.version) == (enc("hello"), written.meta.version)


async def test_wait_on_a_missing_key_ends_with_none(store: AnyStore) -> None:
    assert await store.wait_for("k", 30) is None
    assert store.waiting_reads == 0


async def test_after_version_waits_for_a_newer_version(store: AnyStore) -> None:
    first = await store.set("k", enc(1), 1000)
    unchanged = await store.wait_for("k", 20, after_version=first.meta.version)
    assert unchanged is not None and unchanged.version == first.meta.version
    waiter = asyncio.create_task(store.wait_for("k", 5000, after_version=first.meta.version))
    await until(lambda: store.waiting_reads == 1, "the waiting read")
    await store.incr("k", 1, None)
    item = await asyncio.wait_for(waiter, 5)
    assert item is not None and item.value == b"2"


async def test_one_write_wakes_many_waiters(store: AnyStore) -> None:
    waiters = [asyncio.create_task(store.wait_for("k", 5000)) for _ in range(50)]
    await until(lambda: store.waiting_reads == 50, "50 waiting reads")
    await store.set("k", enc(1), 1000)
    items = await asyncio.wait_for(asyncio.gather(*waiters), 10)
    assert all(item is not None and item.value == b"1" for item in items)


async def test_cancelled_wait_leaves_no_watch(store: AnyStore) -> None:
    waiter = asyncio.create_task(store.wait_for("k", 5000))
    await until(lambda: store.waiting_reads == 1, "the waiting read")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert store.waiting_reads == 0


@pytest.mark.parametrize("wait_ms", [-1, 300_001])
async def test_store_refuses_a_bad_wait(store: AnyStore, wait_ms: int) -> None:
    assert await code_of(store.wait_for("k", wait_ms)) == "validation_error"
    assert await code_of(store.acquire_lease("p", "w", 1000, 1, wait_ms)) == "validation_error"


# ---- leases -----------------------------------------------------------------------------


async def test_grants_lowest_free_values_with_growing_tokens(store: AnyStore) -> None:
    grants = [await store.acquire_lease("p", f"w{i}", 1000) for i in range(4)]
    assert [g.value for g in grants] == [0, 1, 2, 3]
    tokens = [g.token for g in grants]
    assert tokens == sorted(set(tokens))
    assert await store.release_lease("p", "w1")
    assert await store.release_lease("p", "w2")
    again = await store.acquire_lease("p", "w9", 1000)
    assert again.value == 1 and again.token > tokens[-1]
    other = await store.acquire_lease("q", "w0", 1000)
    assert other.value == 0 and other.token > again.token


async def test_default_lease_ttl_and_renewal_by_acquire(store: AnyStore, clock: FakeClock) -> None:
    first = await store.acquire_lease("p", "w", None)
    assert first.ttl_ms == 60_000 and first.created
    clock.advance(1000)
    again = await store.acquire_lease("p", "w", 5000)
    assert (again.value, again.token, again.created) == (first.value, first.token, False)
    assert again.expires_at == clock.now_ms() + 5000


async def test_renew_extends_and_fails_once_lost(store: AnyStore, clock: FakeClock) -> None:
    grant = await store.acquire_lease("p", "w", 1000)
    clock.advance(900)
    renewed = await store.renew_lease("p", "w", 1000)
    assert (renewed.token, renewed.expires_at) == (grant.token, clock.now_ms() + 1000)
    clock.advance(1000)
    error = await error_of(store.renew_lease("p", "w", 1000))
    assert error.code == "lease_not_found" and "'w'" in error.detail


async def test_expired_lease_frees_its_value(store: AnyStore, clock: FakeClock) -> None:
    await store.acquire_lease("p", "a", 100)
    await store.acquire_lease("p", "b", 1000)
    clock.advance(100)
    grant = await store.acquire_lease("p", "c", 1000)
    assert grant.value == 0
    assert [lease.worker_id for lease in (await store.list_pool("p")).leases] == ["c", "b"]


async def test_release_with_a_token_releases_only_that_lease(store: AnyStore) -> None:
    grant = await store.acquire_lease("p", "w", 1000)
    error = await error_of(store.release_lease("p", "w", grant.token + 1))
    assert error.code == "precondition_failed"
    assert f"holds the lease with token {grant.token}" in error.detail
    assert await store.release_lease("p", "w", grant.token)
    assert not await store.release_lease("p", "w")
    gone = await error_of(store.release_lease("p", "w", grant.token))
    assert "holds no lease there" in gone.detail


async def test_release_all_of_a_worker_counts_every_pool(store: AnyStore) -> None:
    for pool in ("p", "q", "r"):
        await store.acquire_lease(pool, "w", 1000)
    await store.acquire_lease("p", "other", 1000)
    assert await store.release_worker("w") == 3
    assert await store.release_worker("w") == 0
    pools = await store.list_pools()
    assert [(p.pool, [lease.worker_id for lease in p.leases]) for p in pools] == [("p", ["other"])]


async def test_list_pools_sorted_by_name_and_leases_by_value(store: AnyStore) -> None:
    for worker in ("c", "a", "b"):
        await store.acquire_lease("z", worker, 1000)
        await store.acquire_lease("m", worker, 1000)
    await store.release_lease("z", "c")
    await store.acquire_lease("z", "d", 1000)
    pools = await store.list_pools()
    assert [p.pool for p in pools] == ["m", "z"]
    assert [lease.value for lease in pools[1].leases] == [0, 1, 2]
    assert [lease.worker_id for lease in pools[1].leases] == ["d", "a", "b"]
    assert (await store.list_pool("unknown")).leases == []


async def test_empty_pool_is_forgotten_and_starts_over(store: AnyStore) -> None:
    for worker in ("a", "b", "c"):
        await store.acquire_lease("p", worker, 1000)
    assert await store.release_worker("a") + await store.release_worker("b") == 2
    await store.release_lease("p", "c")
    assert (await store.stats()).pools == 0
    assert (await store.acquire_lease("p", "d", 1000)).value == 0


async def test_max_leases_refuses_new_leases_but_not_renewals(make_store: StoreFactory) -> None:
    store = await make_store(max_leases=2)
    await store.acquire_lease("p", "a", 1000)
    await store.acquire_lease("q", "b", 1000)
    error = await error_of(store.acquire_lease("p", "c", 1000))
    assert error.code == "max_leases" and "'c'" in error.detail
    assert not (await store.acquire_lease("p", "a", 1000)).created
    unlimited = await make_store(max_leases=0)
    for i in range(30):
        await unlimited.acquire_lease("p", f"w{i}", 1000)
    assert (await unlimited.stats()).leases == 30


async def test_pool_exhausted_at_once_and_after_wait_ms(store: AnyStore) -> None:
    await store.acquire_lease("p", "a", 1000, 1)
    error = await error_of(store.acquire_lease("p", "b", 1000, 1))
    assert error.code == "pool_exhausted" and "below size 1" in error.detail
    waited = await error_of(store.acquire_lease("p", "b", 1000, 1, 30))
    assert "within wait_ms of 30 ms" in waited.detail
    assert lease_waiters(store) == 0
    assert (await store.acquire_lease("p", "c", 1000, 2)).value == 1


async def test_store_refuses_bad_lease_input(store: AnyStore) -> None:
    for size in (0, -1, 1_000_001, True):
        assert await code_of(store.acquire_lease("p", "w", 1000, size)) == "validation_error"
    assert await code_of(store.acquire_lease("p", "w", 0)) == "invalid_ttl"
    assert await code_of(store.renew_lease("p", "w", -5)) == "invalid_ttl"


async def test_waiters_are_served_first_come_first_served(store: AnyStore) -> None:
    await store.acquire_lease("p", "holder", 1000, 1)
    order = []
    for count, name in enumerate(("first", "second", "third"), start=1):
        order.append(asyncio.create_task(store.acquire_lease("p", name, 1000, 1, 5000)))
        await until(partial(has_waiters, store, count), f"waiter {name}")
    await store.release_lease("p", "holder")
    first = await asyncio.wait_for(order[0], 5)
    assert (first.worker_id, first.value) == ("first", 0)
    assert not order[1].done()
    await store.release_lease("p", "first")
    assert (await asyncio.wait_for(order[1], 5)).worker_id == "second"
    await store.release_lease("p", "second")
    assert (await asyncio.wait_for(order[2], 5)).worker_id == "third"


async def test_newcomer_never_takes_a_value_from_a_waiter(store: AnyStore) -> None:
    await store.acquire_lease("p", "holder", 1000, 1)
    waiter = asyncio.create_task(store.acquire_lease("p", "waiter", 1000, 1, 5000))
    await until(lambda: lease_waiters(store) == 1, "the waiter")
    await store.release_lease("p", "holder")
    assert await code_of(store.acquire_lease("p", "newcomer", 1000, 1)) == "pool_exhausted"
    assert (await asyncio.wait_for(waiter, 5)).worker_id == "waiter"


async def test_waiter_that_cannot_use_a_value_is_stepped_over(store: AnyStore) -> None:
    await store.acquire_lease("p", "a", 1000)
    await store.acquire_lease("p", "b", 1000)
    small = asyncio.create_task(store.acquire_lease("p", "small", 1000, 1, 5000))
    await until(lambda: lease_waiters(store) == 1, "the small waiter")
    large = asyncio.create_task(store.acquire_lease("p", "large", 1000, 2, 5000))
    await until(lambda: lease_waiters(store) == 2, "the large waiter")
    await store.release_lease("p", "b")  # frees 1: only the size-2 waiter can use it
    assert (await asyncio.wait_for(large, 5)).value == 1
    assert not small.done()
    await store.release_lease("p", "a")
    assert (await asyncio.wait_for(small, 5)).value == 0


async def test_expired_lease_is_handed_to_a_waiter(store: AnyStore, clock: FakeClock) -> None:
    await store.acquire_lease("p", "holder", 100, 1)
    waiter = asyncio.create_task(store.acquire_lease("p", "waiter", 1000, 1, 5000))
    await until(lambda: lease_waiters(store) == 1, "the waiter")
    clock.advance(100)
    await store.sweep()
    grant = await asyncio.wait_for(waiter, 5)
    assert (grant.worker_id, grant.value, grant.created) == ("waiter", 0, True)


async def test_same_worker_waiting_twice_gets_one_lease(store: AnyStore) -> None:
    await store.acquire_lease("p", "holder", 1000, 2)
    await store.acquire_lease("p", "filler", 1000, 2)
    one = asyncio.create_task(store.acquire_lease("p", "w", 1000, 2, 5000))
    await until(lambda: lease_waiters(store) == 1, "the first wait")
    two = asyncio.create_task(store.acquire_lease("p", "w", 1000, 2, 5000))
    await until(lambda: lease_waiters(store) == 2, "the second wait")
    await store.release_lease("p", "holder")
    first = await asyncio.wait_for(one, 5)
    assert first.created and first.value == 0
    await store.release_lease("p", "filler")  # the second wait is served with a renewal
    second = await asyncio.wait_for(two, 5)
    assert (second.token, second.value, second.created) == (first.token, 0, False)
    assert len((await store.list_pool("p")).leases) == 1


async def test_release_all_can_hand_a_value_back_to_the_same_worker(store: AnyStore) -> None:
    await store.acquire_lease("p", "holder", 1000, 1)
    first = asyncio.create_task(store.acquire_lease("p", "w", 1000, 1, 5000))
    await until(lambda: lease_waiters(store) == 1, "the first wait")
    second = asyncio.create_task(store.acquire_lease("p", "w", 1000, 1, 5000))
    await until(lambda: lease_waiters(store) == 2, "the second wait")
    await store.release_lease("p", "holder")
    granted = await asyncio.wait_for(first, 5)
    assert granted.created and not second.done()
    # Ending w's lease hands the value straight to w's own second request: a new lease.
    assert await store.release_worker("w") == 1
    again = await asyncio.wait_for(second, 5)
    assert again.created and again.token > granted.token
    # ...which the worker's index still knows.
    assert await store.release_worker("w") == 1
    assert (await store.list_pool("p")).leases == []


async def test_cancelled_waiter_leaves_nothing_behind(store: AnyStore) -> None:
    await store.acquire_lease("p", "holder", 1000, 1)
    waiter = asyncio.create_task(store.acquire_lease("p", "w", 1000, 1, 5000))
    await until(lambda: lease_waiters(store) == 1, "the waiter")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert lease_waiters(store) == 0
    await store.release_lease("p", "holder")
    assert (await store.list_pool("p")).leases == []
    assert (await store.acquire_lease("p", "next", 1000, 1)).value == 0
