"""The Store protocol: what the routes may ask of state, and the plain values they get back.

Every compound operation (compare-and-set, incr, a lease grant) is one call, atomic, so that a
store on another backend (Redis, for brokers on several hosts) can follow without touching the
routes. Methods are async for that reason, even though the memory store never awaits.
Stores raise `ephemeral_broker.errors.BrokerError` for every refusal.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

from ephemeral_broker.settings import BrokerSettings

# A parsed If-Match / If-None-Match header: "*" (any current version) or a set of versions.
VersionMatch = Literal["*"] | frozenset[int]


@dataclass(frozen=True, slots=True)
class Precondition:
    """HTTP conditional-request semantics for a write (RFC 9110 section 13)."""

    if_match: VersionMatch | None = None
    if_none_match: VersionMatch | None = None


NO_PRECONDITION = Precondition()


@dataclass(frozen=True, slots=True)
class StoreLimits:
    max_items: int
    max_value_size: int
    max_key_length: int
    max_ttl: int
    default_ttl: int
    require_ttl: bool
    compression_threshold: int
    refresh_ttl_on_get: bool
    # Defaults so that limits built by hand (tests, benchmarks) need not name the lease ones.
    max_leases: int = 10_000
    lease_ttl: int = 60_000

    @classmethod
    def from_settings(cls, settings: BrokerSettings) -> StoreLimits:
        return cls(
            max_items=settings.max_items,
            max_value_size=settings.max_value_size,
            max_key_length=settings.max_key_length,
            max_ttl=settings.max_ttl,
            default_ttl=settings.default_ttl,
            require_ttl=settings.require_ttl,
            compression_threshold=settings.compression_threshold,
            refresh_ttl_on_get=settings.refresh_ttl_on_get,
            max_leases=settings.max_leases,
            lease_ttl=settings.lease_ttl,
        )


# The values every key request builds are NamedTuples: immutable like a frozen dataclass, and
# built in a third of the time (a frozen dataclass sets each field through object.__setattr__).


class ItemMeta(NamedTuple):
    key: str
    version: int
    expires_at: int
    ttl_ms: int


class SetResult(NamedTuple):
    created: bool
    meta: ItemMeta


class Item(NamedTuple):
    key: str
    value: bytes  # canonical JSON, exactly the bytes that were stored
    version: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key: str
    version: int
    expires_at: int
    size: int


@dataclass(frozen=True, slots=True)
class StoreStats:
    items: int
    max_items: int
    approx_store_bytes: int
    expired_items_total: int
    compression_bytes_before_total: int
    compression_bytes_after_total: int
    values_stored_compressed_total: int
    values_stored_uncompressed_total: int
    leases: int = 0
    pools: int = 0
    max_leases: int = 0
    expired_leases_total: int = 0


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """Which store holds the state and whether it answers (/healthz, /readyz, /v1/health,
    /v1/stats, /metrics). The memory store is always available and never reset."""

    kind: str  # "memory" or "redis"
    namespace: str | None = None
    available: bool = True
    reason: str | None = None  # why it is unavailable
    resets: int = 0  # times the shared store was found to have lost the namespace
    last_reset_ms: int | None = None


MEMORY_STATUS = StoreStatus("memory")


class NamespaceConflict(Exception):
    """This broker's limits differ from the ones the namespace was created with."""

    def __init__(self, setting: str, ours: object, theirs: object, namespace: str) -> None:
        super().__init__(
            f"namespace {namespace!r} in Redis was created with {setting}={theirs!r}, this broker "
            f"has {setting}={ours!r}; every broker of a namespace must use the same {setting}"
        )
        self.setting = setting


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """A lease as granted or renewed; `created` is False for a renewal."""

    pool: str
    worker_id: str
    value: int
    token: int
    expires_at: int
    ttl_ms: int
    created: bool


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    worker_id: str
    value: int
    token: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class PoolLeases:
    pool: str
    leases: list[LeaseInfo]  # sorted by value


class Store(Protocol):
    async def set(
        self,
        key: str,
        value: bytes,
        ttl_ms: int | None,
        precondition: Precondition = NO_PRECONDITION,
    ) -> SetResult:
        """Store canonical JSON `value` under `key`. O(log n)."""
        ...

    async def get(self, key: str) -> Item | None:
        """The live item, or None when absent or expired. O(1)."""
        ...

    async def wait_for(
        self, key: str, wait_ms: int, after_version: int | None = None
    ) -> Item | None:
        """Wait up to `wait_ms` for `key` to be live (and, with `after_version`, at a newer
        version); returns what is there when that happens or the time is up: None when absent,
        or an item that is not newer. Waiters cost nothing while they wait (no polling), and
        one write wakes every waiter of its key. Cancelling the call leaves nothing behind."""
        ...

    async def delete(self, key: str, precondition: Precondition = NO_PRECONDITION) -> bool:
        """Remove `key`; False when it was not there. O(log n)."""
        ...

    async def list(self, prefix: str, limit: int) -> list[KeyInfo]:
        """Live keys starting with `prefix`, sorted, at most `limit`. O(log n + limit)."""
        ...

    async def incr(self, key: str, by: int, ttl_ms: int | None) -> Item:
        """Add `by` to an integer value (absent counts as 0). O(log n)."""
        ...

    async def touch(self, key: str, ttl_ms: int) -> ItemMeta:
        """Restart the TTL of a live key; value and version stay. O(log n)."""
        ...

    async def acquire_lease(
        self,
        pool: str,
        worker_id: str,
        ttl_ms: int | None,
        size: int | None = None,
        wait_ms: int = 0,
    ) -> LeaseGrant:
        """Grant `worker_id` the lowest value of `pool` no live lease holds (below `size` if
        given), or renew the lease it already holds there (same value and token). When no value
        below `size` is free, wait up to `wait_ms`, first come first served, then raise
        `pool_exhausted`. Cancelling a wait leaves no waiter and no lease behind.
        O(log n) in the pool's holders."""
        ...

    async def renew_lease(self, pool: str, worker_id: str, ttl_ms: int | None) -> LeaseGrant:
        """Restart the TTL of the lease `worker_id` holds in `pool`; `lease_not_found` when it
        holds none (expired or released). O(log n)."""
        ...

    async def release_lease(self, pool: str, worker_id: str, token: int | None = None) -> bool:
        """End the lease of `worker_id` in `pool`; False when it held none. With `token`, only
        the lease with that fencing token is released (`precondition_failed` otherwise).
        O(log n)."""
        ...

    async def release_worker(self, worker_id: str) -> int:
        """End every lease `worker_id` holds, in all pools; returns how many. O(k log n)."""
        ...

    async def list_pools(self) -> builtins.list[PoolLeases]:
        """Every pool with live leases, sorted by name, each sorted by value."""
        ...

    async def list_pool(self, pool: str) -> PoolLeases:
        """The live leases of one pool, sorted by value (none for an unknown pool)."""
        ...

    async def stats(self) -> StoreStats:
        """Counts and counters, exact at the time of the call (due entries are swept first)."""
        ...

    async def sweep(self) -> int:
        """Reclaim entries that are due; returns how many. O(expired · log n)."""
        ...
