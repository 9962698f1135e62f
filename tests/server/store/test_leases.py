"""The memory store's lease pools, on a fake clock: values, tokens, expiry, waiters, limits."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar

import pytest

from ephemeral_broker.clock import FakeClock
from ephemeral_broker.errors import BrokerError
from ephemeral_broker.settings import BrokerSettings
from ephemeral_broker.store import LeaseGrant, MemoryStore, StoreLimits

pytestmark = pytest.mark.anyio

T = TypeVar("T")


def make_store(clock: FakeClock, **settings: Any) -> MemoryStore:
    return MemoryStore(StoreLimits.from_settings(BrokerSettings(**settings)), clock)


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return make_store(clock)


async def error_of(work: Coroutine[Any, Any, Any]) -> BrokerError:
    with pytest.raises(BrokerError) as caught:
        await work
    return caught.value


async def parked(store: MemoryStore, count: int) -> None:
    """Let waiting tasks run until `count` lease requests are parked."""
    for _ in range(1000):
        if store.leases.waiting >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{count} waiters never parked ({store.leases.waiting} did)")


async def fill(store: MemoryStore, pool: str, holders: int, ttl_ms: int = 60_000) -> None:
    for n in range(holders):
        await store.acquire_lease(pool, f"w{n}", ttl_ms)


def run_traced(work: Coroutine[Any, Any, T]) -> tuple[int, T]:
    """Run a coroutine that never suspends; count the Python lines it executes."""
    lines = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal lines
        if event == "line":
            lines += 1
        return tracer

    sys.settrace(tracer)
    try:
        work.send(None)
    except StopIteration as stop:
        result: T = stop.value
    else:
        raise AssertionError("the call suspended")
    finally:
        sys.settrace(None)
    return lines, result


# ---- values and tokens ------------------------------------------------------------------------


async def test_grants_lowest_free_values_with_growing_tokens(store: MemoryStore) -> None:
    grants = [await store.acquire_lease("accounts", f"w{n}", 60_000) for n in range(5)]
    assert [g.value for g in grants] == [0, 1, 2, 3, 4]
    tokens = [g.token for g in grants]
    assert tokens == sorted(tokens) and len(set(tokens)) == 5
    assert all(g.created for g in grants)
    first = grants[0]
    assert (first.pool, first.worker_id, first.ttl_ms) == ("accounts", "w0", 60_000)
    assert first.expires_at == store.clock.now_ms() + 60_000


async def test_released_value_is_handed_out_again_as_the_lowest(store: MemoryStore) -> None:
    await fill(store, "p", 6)
    assert await store.release_lease("p", "w4")
    assert await store.release_lease("p", "w1")
    again = [await store.acquire_lease("p", name, 60_000) for name in ("x", "y", "z")]
    assert [g.value for g in again] == [1, 4, 6]


async def test_tokens_grow_across_pools_and_never_repeat(store: MemoryStore) -> None:
    a = await store.acquire_lease("a", "w", 60_000)
    b = await store.acquire_lease("b", "w", 60_000)
    await store.release_lease("a", "w")
    a_again = await store.acquire_lease("a", "w", 60_000)
    assert a.value == a_again.value == 0 and b.value == 0
    assert a.token < b.token < a_again.token


async def test_default_lease_ttl_applies_when_ttl_is_omitted(clock: FakeClock) -> None:
    store = make_store(clock, lease_ttl=1234)
    grant = await store.acquire_lease("p", "w", None)
    assert grant.ttl_ms == 1234
    assert grant.expires_at == clock.now_ms() + 1234


# ---- renewal ----------------------------------------------------------------------------------


async def test_acquire_by_a_holder_renews_with_same_value_and_token(
    store: MemoryStore, clock: FakeClock
) -> None:
    await store.acquire_lease("p", "other", 60_000)
    first = await store.acquire_lease("p", "w", 1_000)
    clock.advance(900)
    again = await store.acquire_lease("p", "w", 5_000)
    assert not again.created
    assert (again.value, again.token) == (first.value, first.token)
    assert (again.ttl_ms, again.expires_at) == (5_000, clock.now_ms() + 5_000)
    clock.advance(4_000)  # past the first deadline, within the renewed one
    await store.sweep()
    assert [lease.worker_id for lease in (await store.list_pool("p")).leases] == ["other", "w"]


async def test_renew_only_extends_a_held_lease(store: MemoryStore, clock: FakeClock) -> None:
    first = await store.acquire_lease("p", "w", 1_000)
    clock.advance(999)
    renewed = await store.renew_lease("p", "w", 2_000)
    assert (renewed.value, renewed.token, renewed.created) == (first.value, first.token, False)
    assert renewed.expires_at == clock.now_ms() + 2_000
    clock.advance(1_999)
    assert (await store.renew_lease("p", "w", None)).token == first.token


async def test_renew_fails_with_lease_not_found_once_lost(
    store: MemoryStore, clock: FakeClock
) -> None:
    await store.acquire_lease("p", "expires", 1_000)
    await store.acquire_lease("p", "releases", 1_000)
    await store.release_lease("p", "releases")
    clock.advance(1_000)  # exactly at expires_at: the lease is gone (no sweep ran)
    for worker in ("expires", "releases", "never-held"):
        error = await error_of(store.renew_lease("p", worker, 1_000))
        assert (error.code, error.status) == ("lease_not_found", 404)
        assert repr(worker) in error.detail and "'p'" in error.detail


async def test_renew_with_a_shorter_ttl_expires_earlier(
    store: MemoryStore, clock: FakeClock
) -> None:
    await store.acquire_lease("p", "w", 60_000)
    await store.renew_lease("p", "w", 100)
    clock.advance(100)
    assert await store.sweep() == 1
    assert (await store.list_pool("p")).leases == []


async def test_renewals_keep_the_expiry_heap_bounded(store: MemoryStore, clock: FakeClock) -> None:
    await fill(store, "p", 10)
    for round_ in range(3000):
        # Alternating earlier and later deadlines leaves stale heap pairs behind.
        await store.renew_lease("p", f"w{round_ % 10}", 1_000 if round_ % 2 else 60_000)
    assert store.leases.heap_size <= 2 * 10 + 1024 + 1
    clock.advance(1_000)
    await store.sweep()
    assert store.leases.live == 5  # the five renewed last with 60 s


# ---- expiry -----------------------------------------------------------------------------------


async def test_expired_lease_frees_its_value_for_the_next_grant(
    store: MemoryStore, clock: FakeClock
) -> None:
    await store.acquire_lease("p", "a", 60_000)
    short = await store.acquire_lease("p", "b", 500)
    await store.acquire_lease("p", "c", 60_000)
    clock.advance(500)
    # No sweep: the grant itself reclaims what is due first.
    grant = await store.acquire_lease("p", "d", 60_000)
    assert grant.value == short.value == 1
    assert grant.token > short.token
    assert (await store.stats()).expired_leases_total == 1


async def test_expired_lease_frees_its_value_for_a_waiter(
    store: MemoryStore, clock: FakeClock
) -> None:
    holder = await store.acquire_lease("p", "holder", 1_000, size=1)
    waiter = asyncio.ensure_future(store.acquire_lease("p", "waiter", 60_000, 1, 60_000))
    await parked(store, 1)
    clock.advance(1_000)
    assert await store.sweep() == 1
    grant = await waiter
    assert (grant.value, grant.created) == (holder.value, True)
    assert grant.token > holder.token
    assert [x.worker_id for x in (await store.list_pool("p")).leases] == ["waiter"]


async def test_expiry_timer_wakes_a_waiter_without_any_sweep(
    store: MemoryStore, clock: FakeClock
) -> None:
    # The timer is armed at the earliest expiry (50 ms from now, on this clock) while someone
    # waits; when it fires it reclaims by the clock. Moving the fake clock past the deadline
    # before it fires leaves the timer as the only thing that can hand the value over.
    await store.acquire_lease("p", "holder", 50, size=1)
    waiter = asyncio.ensure_future(store.acquire_lease("p", "waiter", 60_000, 1, 60_000))
    await parked(store, 1)
    clock.advance(50)
    grant = await asyncio.wait_for(waiter, 30)
    assert (grant.worker_id, grant.value) == ("waiter", 0)


async def test_sweep_reclaims_leases_with_items_and_counts_them(
    store: MemoryStore, clock: FakeClock
) -> None:
    await store.set("k", b"1", 100)
    await fill(store, "p", 3, ttl_ms=100)
    await store.acquire_lease("q", "w", 100)
    clock.advance(100)
    assert await store.sweep() == 5
    stats = await store.stats()
    assert (stats.leases, stats.pools, stats.expired_leases_total) == (0, 0, 4)
    assert stats.expired_items_total == 1


@pytest.mark.defect(24)
async def test_lease_sweep_with_nothing_due_is_constant_work(clock: FakeClock) -> None:
    """A sweep that finds nothing due looks at the top of the expiry heap and stops: the same
    Python lines with 10 leases as with 10,000."""
    small, large = make_store(clock, max_leases=0), make_store(clock, max_leases=0)
    await fill(small, "p", 10)
    await fill(large, "p", 10_000)
    small_lines, _ = run_traced(small.sweep())
    large_lines, _ = run_traced(large.sweep())
    assert large_lines == small_lines


async def test_empty_pool_is_forgotten_and_starts_over(store: MemoryStore) -> None:
    await fill(store, "p", 3)
    assert (await store.stats()).pools == 1
    assert await store.release_worker("w2") == 1
    assert await store.release_worker("w0") == 1
    assert await store.release_worker("w1") == 1
    stats = await store.stats()
    assert (stats.leases, stats.pools) == (0, 0)
    assert (await store.acquire_lease("p", "fresh", 1_000)).value == 0


# ---- release ----------------------------------------------------------------------------------


async def test_release_is_idempotent_without_a_token(store: MemoryStore) -> None:
    await store.acquire_lease("p", "w", 60_000)
    assert await store.release_lease("p", "w") is True
    assert await store.release_lease("p", "w") is False
    assert await store.release_lease("unknown-pool", "w") is False


async def test_release_with_a_token_releases_only_that_lease(
    store: MemoryStore, clock: FakeClock
) -> None:
    old = await store.acquire_lease("p", "w", 1_000)
    clock.advance(1_000)
    new = await store.acquire_lease("p", "w", 60_000)  # the old lease expired: a new grant
    assert new.token != old.token and new.created
    error = await error_of(store.release_lease("p", "w", old.token))
    assert (error.code, error.status) == ("precondition_failed", 412)
    assert f"token {old.token}" in error.detail and f"token {new.token}" in error.detail
    assert (await store.list_pool("p")).leases[0].token == new.token  # still held
    assert await store.release_lease("p", "w", new.token) is True
    gone = await error_of(store.release_lease("p", "w", new.token))
    assert gone.code == "precondition_failed" and "holds no lease" in gone.detail


async def test_release_all_of_a_worker_counts_every_pool(store: MemoryStore) -> None:
    for pool in ("ports", "accounts", "schemas"):
        await store.acquire_lease(pool, "gw0", 60_000)
        await store.acquire_lease(pool, "gw1", 60_000)
    assert await store.release_worker("gw0") == 3
    assert await store.release_worker("gw0") == 0
    assert await store.release_worker("nobody") == 0
    pools = await store.list_pools()
    assert [(p.pool, [x.worker_id for x in p.leases]) for p in pools] == [
        ("accounts", ["gw1"]),
        ("ports", ["gw1"]),
        ("schemas", ["gw1"]),
    ]


async def test_a_worker_holds_leases_in_several_pools(store: MemoryStore) -> None:
    await store.acquire_lease("ports", "other", 60_000)
    port = await store.acquire_lease("ports", "gw3", 60_000)
    account = await store.acquire_lease("accounts", "gw3", 60_000)
    assert (port.value, account.value) == (1, 0)
    assert await store.release_lease("ports", "gw3")
    assert (await store.renew_lease("accounts", "gw3", 1_000)).token == account.token


# ---- listing ----------------------------------------------------------------------------------


async def test_list_pools_sorted_by_name_and_leases_by_value(
    store: MemoryStore, clock: FakeClock
) -> None:
    await fill(store, "zeta", 4)
    await store.release_lease("zeta", "w1")
    await store.acquire_lease("zeta", "late", 60_000)  # takes value 1, listed second
    await store.acquire_lease("alpha", "w", 60_000)
    await store.acquire_lease("Mid", "w", 100)
    clock.advance(100)  # "Mid" expires: not listed, before or after a sweep
    pools = await store.list_pools()
    assert [p.pool for p in pools] == ["alpha", "zeta"]
    zeta = pools[1]
    assert [(x.value, x.worker_id) for x in zeta.leases] == [
        (0, "w0"),
        (1, "late"),
        (2, "w2"),
        (3, "w3"),
    ]
    assert (await store.list_pool("zeta")) == zeta
    empty = await store.list_pool("Mid")
    assert (empty.pool, empty.leases) == ("Mid", [])


# ---- limits -----------------------------------------------------------------------------------


async def test_max_leases_refuses_new_leases_but_not_renewals(
    clock: FakeClock,
) -> None:
    store = make_store(clock, max_leases=2)
    await store.acquire_lease("a", "w0", 60_000)
    await store.acquire_lease("b", "w1", 100)
    error = await error_of(store.acquire_lease("c", "w2", 60_000))
    assert (error.code, error.status) == ("max_leases", 507)
    assert "'c'" in error.detail and "'w2'" in error.detail and "max_leases" in error.detail
    assert (await store.stats()).pools == 2  # the refused pool was never created
    assert not (await store.acquire_lease("a", "w0", 60_000)).created  # renewal adds nothing
    clock.advance(100)  # w1's lease expires: room again, no sweep needed
    assert (await store.acquire_lease("c", "w2", 60_000)).value == 0


async def test_max_leases_zero_means_unlimited(clock: FakeClock) -> None:
    store = make_store(clock, max_leases=0)
    await fill(store, "p", 12_000)
    assert (await store.stats()).leases == 12_000


async def test_pool_exhausted_at_once_without_wait(store: MemoryStore) -> None:
    await fill(store, "p", 2)
    error = await error_of(store.acquire_lease("p", "w9", 60_000, size=2))
    assert (error.code, error.status) == ("pool_exhausted", 409)
    assert "'p'" in error.detail and "size 2" in error.detail
    # A larger size (or none) is served from the same pool.
    assert (await store.acquire_lease("p", "w9", 60_000, size=3)).value == 2


async def test_pool_exhausted_after_wait_ms(store: MemoryStore) -> None:
    await fill(store, "p", 1)
    error = await error_of(store.acquire_lease("p", "late", 60_000, size=1, wait_ms=30))
    assert error.code == "pool_exhausted" and "wait_ms of 30 ms" in error.detail
    assert store.leases.waiting == 0
    assert [x.worker_id for x in (await store.list_pool("p")).leases] == ["w0"]


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"pool": ""}, "invalid_key"),
        ({"pool": "a b"}, "invalid_key"),
        ({"pool": "a/b"}, "invalid_key"),
        ({"pool": ".."}, "invalid_key"),
        ({"pool": "x" * 513}, "invalid_key"),
        ({"worker_id": ""}, "invalid_key"),
        ({"worker_id": "tab\there"}, "invalid_key"),
        ({"ttl_ms": 0}, "invalid_ttl"),
        ({"ttl_ms": -5}, "invalid_ttl"),
        ({"ttl_ms": 86_400_001}, "invalid_ttl"),
        ({"ttl_ms": True}, "invalid_ttl"),
        ({"size": 0}, "validation_error"),
        ({"size": 1_000_001}, "validation_error"),
        ({"size": True}, "validation_error"),
        ({"wait_ms": -1}, "validation_error"),
        ({"wait_ms": 300_001}, "validation_error"),
    ],
)
async def test_store_refuses_bad_lease_input(
    store: MemoryStore, kwargs: dict[str, Any], code: str
) -> None:
    args: dict[str, Any] = {"pool": "p", "worker_id": "w", "ttl_ms": 1000, **kwargs}
    error = await error_of(store.acquire_lease(**args))
    assert error.code == code
    assert (await store.stats()).leases == 0


@pytest.mark.defect(8)
async def test_lease_ttl_zero_is_refused_not_defaulted(store: MemoryStore) -> None:
    await store.acquire_lease("p", "w", 1_000)
    for work in (
        store.acquire_lease("p", "x", 0),
        store.renew_lease("p", "w", 0),
        store.acquire_lease("p", "w", 0),
    ):
        error = await error_of(work)
        assert error.code == "invalid_ttl" and "0 never means" in error.detail


# ---- waiting ----------------------------------------------------------------------------------


async def test_waiters_are_served_first_come_first_served(store: MemoryStore) -> None:
    await fill(store, "p", 2)
    waiters = [
        asyncio.ensure_future(store.acquire_lease("p", f"waiter{n}", 60_000, 2, 60_000))
        for n in range(4)
    ]
    await parked(store, 4)
    await store.release_lease("p", "w1")
    await store.release_lease("p", "w0")
    first, second = await waiters[0], await waiters[1]
    assert (first.value, second.value) == (1, 0)
    assert not waiters[2].done()
    # A newcomer does not jump the queue: the next free value goes to waiter2.
    await store.release_lease("p", "waiter0")
    error = await error_of(store.acquire_lease("p", "newcomer", 60_000, 2))
    assert error.code == "pool_exhausted"
    assert (await waiters[2]).value == 1
    await store.release_worker("waiter1")
    assert (await waiters[3]).value == 0
    assert store.leases.waiting == 0


async def test_waiter_that_cannot_use_a_value_is_stepped_over(store: MemoryStore) -> None:
    await fill(store, "p", 2)
    needs_zero = asyncio.ensure_future(store.acquire_lease("p", "small", 60_000, 1, 60_000))
    takes_any = asyncio.ensure_future(store.acquire_lease("p", "large", 60_000, 2, 60_000))
    await parked(store, 2)
    await store.release_lease("p", "w1")  # value 1: not below size 1
    assert (await takes_any).value == 1
    assert not needs_zero.done()
    await store.release_lease("p", "w0")
    assert (await needs_zero).value == 0


async def test_release_all_hands_every_freed_value_to_waiters(store: MemoryStore) -> None:
    for pool in ("a", "b"):
        await store.acquire_lease(pool, "gw0", 60_000, size=1)
    waiters = [
        asyncio.ensure_future(store.acquire_lease(pool, "gw1", 60_000, 1, 60_000))
        for pool in ("a", "b")
    ]
    await parked(store, 2)
    assert await store.release_worker("gw0") == 2
    grants = [await waiter for waiter in waiters]
    assert [(g.pool, g.value, g.worker_id) for g in grants] == [("a", 0, "gw1"), ("b", 0, "gw1")]


async def test_same_worker_waiting_twice_gets_one_lease(store: MemoryStore) -> None:
    await fill(store, "p", 1)
    twice = [
        asyncio.ensure_future(store.acquire_lease("p", "dup", 60_000, 2, 60_000)),
        asyncio.ensure_future(store.acquire_lease("p", "dup", 60_000, 2, 60_000)),
    ]
    await asyncio.sleep(0)
    # Value 1 is free: neither waits; the second is a renewal of the first.
    first, second = await twice[0], await twice[1]
    assert first.created and not second.created and first.token == second.token
    await store.acquire_lease("p", "filler", 60_000)
    parked_twice = [
        asyncio.ensure_future(store.acquire_lease("p", "dup2", 60_000, 3, 60_000)),
        asyncio.ensure_future(store.acquire_lease("p", "dup2", 60_000, 3, 60_000)),
    ]
    await parked(store, 2)
    await store.release_worker("w0")
    await store.release_worker("filler")
    a, b = await parked_twice[0], await parked_twice[1]
    assert a.created and not b.created and a.token == b.token
    assert (await store.stats()).leases == 2  # dup and dup2: one value each


async def test_cancelled_waiter_leaves_nothing_behind(store: MemoryStore) -> None:
    await store.acquire_lease("p", "holder", 60_000, size=1)
    waiter = asyncio.ensure_future(store.acquire_lease("p", "gone", 60_000, 1, 60_000))
    await parked(store, 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert store.leases.waiting == 0
    await store.release_lease("p", "holder")
    stats = await store.stats()
    assert (stats.leases, stats.pools) == (0, 0)


async def test_waiter_cancelled_after_the_hand_over_releases_its_lease(
    store: MemoryStore,
) -> None:
    await store.acquire_lease("p", "holder", 60_000, size=1)
    gone = asyncio.ensure_future(store.acquire_lease("p", "gone", 60_000, 1, 60_000))
    next_in_line = asyncio.ensure_future(store.acquire_lease("p", "next", 60_000, 1, 60_000))
    await parked(store, 2)
    await store.release_lease("p", "holder")  # value 0 is handed to "gone" right here
    gone.cancel()  # ... which is cancelled before it could answer
    with pytest.raises(asyncio.CancelledError):
        await gone
    # Nobody learned of gone's lease, so it was ended and its value passed on.
    assert (await next_in_line).worker_id == "next"
    assert [x.worker_id for x in (await store.list_pool("p")).leases] == ["next"]


async def test_waiter_is_served_when_capacity_frees_without_growing_past_size(
    store: MemoryStore,
) -> None:
    await fill(store, "p", 3)
    waiter = asyncio.ensure_future(store.acquire_lease("p", "x", 60_000, 2, 60_000))
    await parked(store, 1)
    await store.release_lease("p", "w2")  # value 2 is not below size 2: still waiting
    await asyncio.sleep(0)
    assert not waiter.done()
    await store.release_lease("p", "w0")
    assert (await waiter).value == 0


# ---- complexity -------------------------------------------------------------------------------


@pytest.mark.defect(9)
async def test_lease_grant_is_not_a_scan(clock: FakeClock) -> None:
    """The Node predecessor found a value with `while (held.has(v)) v++`: O(n) per grant.

    Here a grant takes the top of a min-heap of freed values. Counting the Python lines a grant
    runs (the heap operations are C calls, one line each) shows it does not depend on how many
    leases the pool holds, whichever value is free.
    """
    counts: dict[int, list[int]] = {}
    for holders in (100, 20_000):
        store = make_store(clock, max_leases=0)
        await fill(store, "p", holders)
        counts[holders] = []
        for freed in (0, holders // 2, holders - 1):
            await store.release_lease("p", f"w{freed}")
            lines, grant = run_traced(store.acquire_lease("p", f"new{freed}", 60_000))
            assert isinstance(grant, LeaseGrant) and grant.value == freed
            counts[holders].append(lines)
        lines, grant = run_traced(store.acquire_lease("p", "fresh", 60_000))
        assert grant.value == holders
        counts[holders].append(lines)
    assert counts[20_000] == counts[100]


async def test_release_and_renew_do_not_scan_either(clock: FakeClock) -> None:
    counts = []
    for holders in (100, 20_000):
        store = make_store(clock, max_leases=0)
        await fill(store, "p", holders)
        renew_lines, _ = run_traced(store.renew_lease("p", f"w{holders // 2}", 30_000))
        release_lines, _ = run_traced(store.release_lease("p", f"w{holders // 3}"))
        counts.append((renew_lines, release_lines))
    assert counts[0] == counts[1]
