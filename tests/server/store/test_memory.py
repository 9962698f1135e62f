"""The memory store on a fake clock: TTLs, versions, preconditions, limits, expiry heap."""

from __future__ import annotations

import heapq
import zlib
from typing import Any

import orjson
import pytest

from ephemeral_broker.clock import FakeClock
from ephemeral_broker.errors import BrokerError
from ephemeral_broker.store import MemoryStore, Precondition
from ephemeral_broker.store import memory as memory_module
from ephemeral_broker.store.memory import ENTRY_OVERHEAD_BYTES
from tests.support.store import enc, limits

pytestmark = pytest.mark.anyio


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(limits(), clock)


async def code_of(awaitable: Any) -> str:
    with pytest.raises(BrokerError) as caught:
        await awaitable
    return caught.value.code


async def test_set_then_get_returns_the_same_bytes(store: MemoryStore) -> None:
    value = enc({"token": "abc", "n": [1, 2.5, None, True], "ü": "✓"})
    result = await store.set("k", value, 1000)
    assert result.created
    item = await store.get("k")
    assert item is not None
    assert item.value == value
    assert item.version == result.meta.version


async def test_versions_grow_broker_wide_on_every_write(store: MemoryStore) -> None:
    v1 = (await store.set("a", enc(1), 1000)).meta.version
    v2 = (await store.set("b", enc(1), 1000)).meta.version
    v3 = (await store.incr("c", 1, 1000)).version
    replaced = await store.set("a", enc(2), 1000)
    assert v1 < v2 < v3 < replaced.meta.version
    assert not replaced.created


async def test_key_expires_exactly_at_its_deadline(store: MemoryStore, clock: FakeClock) -> None:
    meta = (await store.set("k", enc(1), 1000)).meta
    assert meta.expires_at == clock.now_ms() + 1000
    clock.advance(999)
    assert await store.get("k") is not None
    clock.advance(1)
    assert await store.get("k") is None  # never returned past expires_at, even unswept
    assert (await store.stats()).expired_items_total == 1


async def test_expired_keys_are_never_listed_even_before_a_sweep(
    store: MemoryStore, clock: FakeClock
) -> None:
    await store.set("a1", enc(1), 100)
    await store.set("a2", enc(1), 5000)
    clock.advance(100)
    assert [k.key for k in await store.list("a", 10)] == ["a2"]


@pytest.mark.defect(8)
async def test_ttl_zero_is_refused_not_the_default(clock: FakeClock) -> None:
    """Defect 8: `ttl: 0` silently meant "default TTL"; here it is always invalid."""
    for require in (True, False):
        store = MemoryStore(limits(require_ttl=require), clock)
        for bad in (0, -1, -86_400_000):
            assert await code_of(store.set("k", enc(1), bad)) == "invalid_ttl"
            assert await code_of(store.touch("k", bad)) == "invalid_ttl"
            assert await code_of(store.incr("k", 1, bad)) == "invalid_ttl"
        assert await store.get("k") is None


async def test_ttl_rules(clock: FakeClock) -> None:
    strict = MemoryStore(limits(), clock)
    assert await code_of(strict.set("k", enc(1), None)) == "ttl_required"
    assert await code_of(strict.set("k", enc(1), 86_400_001)) == "invalid_ttl"
    assert await code_of(strict.set("k", enc(1), True)) == "invalid_ttl"
    lenient = MemoryStore(limits(require_ttl=False, default_ttl=5000), clock)
    meta = (await lenient.set("k", enc(1), None)).meta
    assert (meta.ttl_ms, meta.expires_at) == (5000, clock.now_ms() + 5000)


async def test_if_none_match_star_creates_only(store: MemoryStore, clock: FakeClock) -> None:
    create_only = Precondition(if_none_match="*")
    await store.set("k", enc(1), 100, create_only)
    assert await code_of(store.set("k", enc(2), 100, create_only)) == "precondition_failed"
    clock.advance(100)  # an expired key counts as absent
    assert (await store.set("k", enc(3), 100, create_only)).created


async def test_if_match_is_compare_and_set(store: MemoryStore) -> None:
    version = (await store.set("k", enc(1), 1000)).meta.version
    assert (
        await code_of(store.set("k", enc(2), 1000, Precondition(if_match=frozenset({version + 1}))))
        == "precondition_failed"
    )
    ok = await store.set("k", enc(2), 1000, Precondition(if_match=frozenset({version})))
    assert ok.meta.version > version
    # the old version no longer matches: a second writer with the stale version loses
    stale = Precondition(if_match=frozenset({version}))
    assert await code_of(store.set("k", enc(3), 1000, stale)) == "precondition_failed"
    assert (
        await code_of(store.set("absent", enc(1), 1000, Precondition(if_match="*")))
        == "precondition_failed"
    )


async def test_delete_is_idempotent_and_honours_if_match(store: MemoryStore) -> None:
    version = (await store.set("k", enc(1), 1000)).meta.version
    assert (
        await code_of(store.delete("k", Precondition(if_match=frozenset({version + 5}))))
        == "precondition_failed"
    )
    assert await store.delete("k", Precondition(if_match=frozenset({version})))
    assert not await store.delete("k")
    assert await store.get("k") is None


async def test_incr_counts_from_zero_and_keeps_its_deadline(
    store: MemoryStore, clock: FakeClock
) -> None:
    first = await store.incr("n", 5, 1000)
    assert (orjson.loads(first.value), first.expires_at) == (5, clock.now_ms() + 1000)
    clock.advance(400)
    second = await store.incr("n", -7, None)
    assert orjson.loads(second.value) == -2
    assert second.expires_at == first.expires_at  # no ttl_ms: the deadline stays
    third = await store.incr("n", 1, 2000)
    assert third.expires_at == clock.now_ms() + 2000  # ttl_ms given: restarted


async def test_incr_refuses_non_integers_and_overflow(store: MemoryStore) -> None:
    for value in ("3", 1.5, 2.0, True, None, [1], {"n": 1}):
        await store.set("k", enc(value), 1000)
        assert await code_of(store.incr("k", 1, None)) == "not_an_integer"
    await store.set("k", enc(2**63 - 1), 1000)
    assert await code_of(store.incr("k", 1, None)) == "not_an_integer"
    assert orjson.loads((await store.incr("k", -1, None)).value) == 2**63 - 2
    assert await code_of(store.incr("new", 1, None)) == "ttl_required"


async def test_touch_restarts_ttl_but_keeps_value_and_version(
    store: MemoryStore, clock: FakeClock
) -> None:
    meta = (await store.set("k", enc("v"), 100)).meta
    clock.advance(90)
    touched = await store.touch("k", 1000)
    assert (touched.version, touched.expires_at) == (meta.version, clock.now_ms() + 1000)
    clock.advance(500)
    item = await store.get("k")
    assert item is not None and item.value == enc("v")
    assert await code_of(store.touch("missing", 1000)) == "not_found"


async def test_touch_can_shorten_a_ttl_and_the_sweep_sees_it(
    store: MemoryStore, clock: FakeClock
) -> None:
    await store.set("k", enc(1), 10_000)
    await store.touch("k", 10)
    clock.advance(10)
    assert await store.sweep() == 1


async def test_refresh_ttl_on_get_slides_the_deadline(clock: FakeClock) -> None:
    store = MemoryStore(limits(refresh_ttl_on_get=True), clock)
    await store.set("k", enc(1), 100)
    for _ in range(5):
        clock.advance(80)
        assert await store.get("k") is not None
    # The heap still holds the first deadline; the sweep reschedules instead of expiring.
    assert await store.sweep() == 0
    clock.advance(100)
    assert await store.sweep() == 1


async def test_list_is_sorted_prefix_filtered_and_limited(store: MemoryStore) -> None:
    for key in ("b", "a/x".replace("/", "-"), "a", "ab", "abc", "b2", "zz", "ä"):
        await store.set(key, enc(key), 1000)
    assert [k.key for k in await store.list("", 100)] == sorted(
        ["b", "a-x", "a", "ab", "abc", "b2", "zz", "ä"]
    )
    assert [k.key for k in await store.list("ab", 100)] == ["ab", "abc"]
    assert [k.key for k in await store.list("a", 2)] == ["a", "a-x"]
    info = (await store.list("zz", 1))[0]
    assert info.size == len(enc("zz"))
    assert await store.list("nothing", 10) == []


@pytest.mark.defect(10)
async def test_sizes_are_utf8_bytes_of_the_canonical_json(clock: FakeClock) -> None:
    """Defect 10: sizes were UTF-16 code units and values were serialised twice."""
    store = MemoryStore(limits(max_value_size=10, compression_threshold=0), clock)
    fire = "🔥🔥"  # 2 characters in Python, 8 bytes of UTF-8, 10 with the JSON quotes
    assert len(enc(fire)) == 10
    await store.set("ok", enc(fire), 1000)
    error = await code_of(store.set("big", enc(fire + "a"), 1000))
    assert error == "too_large"
    assert (await store.list("ok", 1))[0].size == 10


@pytest.mark.defect(10)
async def test_too_large_names_the_key_and_the_limit(clock: FakeClock) -> None:
    store = MemoryStore(limits(max_value_size=4), clock)
    with pytest.raises(BrokerError) as caught:
        await store.set("big-key", enc("12345"), 1000)
    assert "big-key" in caught.value.detail
    assert "max_value_size of 4 bytes" in caught.value.detail


async def test_max_items_counts_live_keys_in_constant_time(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryStore(limits(max_items=3), clock)
    for key in "abc":
        await store.set(key, enc(1), 100)
    assert await code_of(store.set("d", enc(1), 100)) == "max_items"
    await store.set("a", enc(2), 100)  # replacing never needs room
    await store.delete("b")
    await store.set("d", enc(1), 100)
    # Keys that are due but not swept never block a write: they are reclaimed first.
    clock.advance(100)
    for key in "xyz":
        await store.set(key, enc(1), 100)
    assert (await store.stats()).items == 3
    # Counting is len(dict): a set with room never walks the items.
    walked: list[int] = []
    original = memory_module.MemoryStore._sweep

    def counting_sweep(self: memory_module.MemoryStore, now: int) -> int:
        walked.append(now)
        return original(self, now)

    monkeypatch.setattr(memory_module.MemoryStore, "_sweep", counting_sweep)
    roomy = MemoryStore(limits(max_items=100), clock)
    for i in range(50):
        await roomy.set(f"k{i}", enc(i), 1000)
    assert walked == []


async def test_unlimited_items_when_max_items_is_zero(clock: FakeClock) -> None:
    store = MemoryStore(limits(max_items=0), clock)
    for i in range(200):
        await store.set(f"k{i}", enc(i), 1000)
    assert (await store.stats()).items == 200


async def test_sweep_costs_only_the_expired(
    store: MemoryStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(1000):
        await store.set(f"long{i}", enc(i), 100_000)
    for i in range(10):
        await store.set(f"short{i}", enc(i), 10)
    pops: list[object] = []
    real_pop = heapq.heappop

    def counting_pop(heap: list[Any]) -> Any:
        pops.append(None)
        return real_pop(heap)

    monkeypatch.setattr(memory_module, "heappop", counting_pop)
    clock.advance(10)
    assert await store.sweep() == 10
    assert len(pops) == 10
    assert (await store.stats()).items == 1000


@pytest.mark.defect(24)
async def test_idle_sweeper_does_no_work(
    store: MemoryStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 24: the sweeper walked an empty store every tick; here it looks at the heap
    top once and stops, whether the store is empty or nothing is due."""
    pops: list[object] = []
    monkeypatch.setattr(memory_module, "heappop", pops.append)
    assert await store.sweep() == 0  # empty store
    for i in range(500):
        await store.set(f"k{i}", enc(i), 60_000)
    clock.advance(59_999)
    for _ in range(100):
        assert await store.sweep() == 0  # nothing due
    assert pops == []


async def test_stale_heap_pairs_are_compacted(store: MemoryStore) -> None:
    # Each write that shortens a TTL leaves one stale pair; the heap must not grow forever.
    await store.set("k", enc(1), 86_400_000)
    for ttl in range(80_000_000, 70_000_000, -1000):
        await store.set("k", enc(1), ttl)
    assert store.heap_size <= 2 * 1 + 1024 + 1


async def test_overwrite_with_a_later_ttl_is_rescheduled_not_expired(
    store: MemoryStore, clock: FakeClock
) -> None:
    await store.set("k", enc(1), 100)
    await store.set("k", enc(2), 1000)
    clock.advance(100)
    assert await store.sweep() == 0
    item = await store.get("k")
    assert item is not None and item.value == enc(2)
    clock.advance(900)
    assert await store.sweep() == 1


async def test_delete_then_recreate_is_not_expired_by_the_old_heap_pair(
    store: MemoryStore, clock: FakeClock
) -> None:
    await store.set("k", enc(1), 100)
    await store.delete("k")
    await store.set("k", enc(2), 1000)
    clock.advance(100)
    assert await store.sweep() == 0
    assert await store.get("k") is not None


async def test_values_at_the_threshold_are_kept_compressed_when_smaller(
    clock: FakeClock,
) -> None:
    store = MemoryStore(limits(compression_threshold=100), clock)
    compressible = enc("x" * 5000)
    await store.set("zip", compressible, 1000)
    entry = store._items["zip"]
    assert entry.compressed
    assert len(entry.data) < len(compressible) / 10
    assert zlib.decompress(entry.data) == compressible
    item = await store.get("zip")
    assert item is not None and item.value == compressible  # GET sees the original bytes
    await store.set("small", enc("x" * 10), 1000)
    assert not store._items["small"].compressed


@pytest.mark.defect(5)
@pytest.mark.defect(25)
async def test_compression_counters_with_empty_and_tiny_values(
    clock: FakeClock,
) -> None:
    """Defects 5 and 25: counters were skipped for 0-byte sizes (falsy checks), and a
    ratio could divide by zero. Every stored value is counted once, compressed or not."""
    store = MemoryStore(limits(compression_threshold=1), clock)
    stats = await store.stats()
    assert (stats.compression_bytes_before_total, stats.compression_bytes_after_total) == (0, 0)
    tiny: object
    for tiny in ("", 0, None, [], {}):
        await store.set("t", enc(tiny), 1000)  # zlib output is larger: stored plain
    stats = await store.stats()
    assert stats.values_stored_uncompressed_total == 5
    assert stats.values_stored_compressed_total == 0
    assert stats.compression_bytes_before_total == 0
    big = enc("a" * 4000)
    await store.set("big", big, 1000)
    stats = await store.stats()
    assert stats.values_stored_compressed_total == 1
    assert stats.compression_bytes_before_total == len(big)
    assert 0 < stats.compression_bytes_after_total < len(big)
    never = MemoryStore(limits(compression_threshold=0), clock)
    await never.set("big", big, 1000)
    assert (await never.stats()).values_stored_compressed_total == 0


@pytest.mark.defect(12)
async def test_approx_bytes_counts_utf8_and_compressed_sizes(clock: FakeClock) -> None:
    """Defect 12: the Node broker counted UTF-16 units and ignored compression."""
    store = MemoryStore(limits(compression_threshold=100), clock)
    assert (await store.stats()).approx_store_bytes == 0
    key = "ключ"  # 4 characters, 8 bytes of UTF-8
    value = enc("ü" * 10)  # 22 bytes
    await store.set(key, value, 1000)
    assert (await store.stats()).approx_store_bytes == 8 + 22 + ENTRY_OVERHEAD_BYTES
    big = enc("z" * 10_000)
    await store.set("big", big, 1000)
    stored = len(store._items["big"].data)
    assert stored < len(big)
    expected = 8 + 22 + 3 + stored + 2 * ENTRY_OVERHEAD_BYTES
    assert (await store.stats()).approx_store_bytes == expected
    await store.delete(key)
    await store.delete("big")
    assert (await store.stats()).approx_store_bytes == 0


async def test_names_are_checked_on_every_operation(store: MemoryStore) -> None:
    for bad in (
        "",
        "a/b",
        "a b",
        "tab\there",
        "nl\n",
        "\x00",
        "\x7f",
        "\x85",
        ".",
        "..",
        "x" * 513,
    ):
        assert await code_of(store.set(bad, enc(1), 1000)) == "invalid_key", bad
        assert await code_of(store.get(bad)) == "invalid_key", bad
        assert await code_of(store.delete(bad)) == "invalid_key", bad
        assert await code_of(store.incr(bad, 1, 1000)) == "invalid_key", bad
        assert await code_of(store.touch(bad, 1000)) == "invalid_key", bad
    # 512 bytes is the limit, counted in UTF-8: 256 two-byte characters fit, 257 do not.
    await store.set("é" * 256, enc(1), 1000)
    assert await code_of(store.set("é" * 257, enc(1), 1000)) == "invalid_key"
    for fine in ("...", ".hidden", "a.b", "ü-✓-🔥", "a:b", "q?x=1", 'quo"te', "back\\slash"):
        await store.set(fine, enc(1), 1000)


async def test_stored_values_are_right_sized_whatever_their_producer(clock: FakeClock) -> None:
    """orjson returns over-allocated bytes (a 100-byte value in a 4 KiB allocation); the store
    keeps a right-sized copy, so a key costs its value's bytes plus a bounded overhead."""
    import tracemalloc

    store = MemoryStore(limits(max_items=0), clock)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            # Produced inside the traced region, as the keys route does: orjson.dumps per set.
            await store.set(f"k{i}", enc("v" * 98), 60_000)
        per_key = (tracemalloc.get_traced_memory()[0] - before) / 2000
    finally:
        tracemalloc.stop()
    # 100 bytes of value; the entry, heap pair, index slot and dict slot are a few hundred more.
    assert per_key < 600, per_key
