"""Which store a broker uses, and the start-up and shut-down that only a shared store needs.

Kept out of main.py so the request path stays as it is: a store is built by `make_store`,
started by `open_store` before the broker listens, and closed by `close_store` after it
stopped. The memory store needs neither.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ephemeral_broker.clock import Clock
from ephemeral_broker.settings import BrokerSettings
from ephemeral_broker.store.base import MEMORY_STATUS, Store, StoreLimits, StoreStatus
from ephemeral_broker.store.memory import MemoryStore


class _Shared(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def status(self) -> StoreStatus: ...

    async def check(self) -> StoreStatus: ...


def make_store(
    settings: BrokerSettings,
    clock: Clock,
    on_items_changed: Callable[[int], None] | None = None,
) -> Store:
    limits = StoreLimits.from_settings(settings)
    if settings.store == "memory":
        return MemoryStore(limits, clock, on_items_changed=on_items_changed)
    # Imported here: a memory-only broker never loads redis-py.
    from ephemeral_broker.store.redis import RedisStore  # noqa: PLC0415 - see above

    # Redis's clock decides expiry (one clock for every broker of the namespace).
    return RedisStore(limits, settings.store, settings.namespace)


def _shared(store: Store) -> _Shared | None:
    return store if hasattr(store, "start") and hasattr(store, "status") else None  # type: ignore[return-value]


async def open_store(store: Store) -> None:
    """Join the shared namespace (raises NamespaceConflict, or BrokerError store_unavailable)."""
    shared = _shared(store)
    if shared is not None:
        await shared.start()


async def close_store(store: Store) -> None:
    shared = _shared(store)
    if shared is not None:
        await shared.close()


def store_status(store: Store) -> StoreStatus:
    """The last known status, without asking the store (cheap: /healthz, /metrics)."""
    shared = _shared(store)
    return MEMORY_STATUS if shared is None else shared.status()


async def check_store(store: Store) -> StoreStatus:
    """Ask the store now (one round trip to Redis): /readyz."""
    shared = _shared(store)
    return MEMORY_STATUS if shared is None else await shared.check()
