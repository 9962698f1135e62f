"""The store without HTTP: cost per operation as it grows, and the cost of a sweep."""

from __future__ import annotations

import asyncio
import time

import orjson

from bench.harness import median
from ephemeral_broker.clock import FakeClock
from ephemeral_broker.store import MemoryStore, StoreLimits

VALUE = orjson.dumps("v" * 98)
TTL_MS = 3_600_000
BATCHES = 5


def unlimited_store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(
        StoreLimits(
            max_items=0,
            max_value_size=1 << 20,
            max_key_length=512,
            max_ttl=86_400_000,
            default_ttl=TTL_MS,
            require_ttl=True,
            compression_threshold=1024,
            refresh_ttl_on_get=False,
        ),
        clock,
    )


async def _fill(store: MemoryStore, count: int, ttl_ms: int = TTL_MS, prefix: str = "k") -> None:
    for i in range(count):
        await store.set(f"{prefix}{i}", VALUE, ttl_ms)


def op_costs(keys: int, ops: int) -> dict[str, float]:
    """CPU µs per set (of a new key) and per get (of an existing key) with `keys` live keys:
    the median over several batches, on this thread's CPU clock."""

    async def run() -> dict[str, float]:
        store = unlimited_store(FakeClock())
        await _fill(store, keys)
        set_costs, get_costs = [], []
        for batch in range(BATCHES):
            start = time.thread_time()
            for i in range(ops):
                await store.set(f"new{batch}-{i}", VALUE, TTL_MS)
            set_costs.append((time.thread_time() - start) / ops * 1e6)
            for i in range(ops):
                await store.delete(f"new{batch}-{i}")
            start = time.thread_time()
            for i in range(ops):
                await store.get(f"k{(i * 7919) % keys}")
            get_costs.append((time.thread_time() - start) / ops * 1e6)
        return {"set_us": round(median(set_costs), 3), "get_us": round(median(get_costs), 3)}

    return asyncio.run(run())


def sweep_cost(keys: int, due_fraction: float = 0.01) -> dict[str, float]:
    """One sweep of a store with `keys` keys of which `due_fraction` are due, and one with
    nothing due."""

    async def run() -> dict[str, float]:
        clock = FakeClock()
        store = unlimited_store(clock)
        due = int(keys * due_fraction)
        await _fill(store, keys - due)
        await _fill(store, due, ttl_ms=1000, prefix="due")
        start = time.thread_time()
        idle = await store.sweep()
        idle_us = (time.thread_time() - start) * 1e6
        assert idle == 0
        clock.advance(1000)
        start = time.thread_time()
        reclaimed = await store.sweep()
        elapsed = time.thread_time() - start
        assert reclaimed == due
        return {
            "keys": keys,
            "due": due,
            "sweep_ms": round(elapsed * 1e3, 2),
            "per_expired_us": round(elapsed / max(1, due) * 1e6, 3),
            "nothing_due_us": round(idle_us, 2),
        }

    return asyncio.run(run())
