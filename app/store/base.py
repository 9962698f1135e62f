"""The Store protocol: what the routes may ask of state, and the plain values they get back.

Every compound operation (compare-and-set, incr, a lease grant) is one call, atomic, so that a
store on another backend (Redis, for brokers on several hosts) can follow without touching the
routes. Methods are async for that reason, even though the memory store never awaits.
Stores raise `app.errors.BrokerError` for every refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from app.settings import BrokerSettings

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
        )


@dataclass(frozen=True, slots=True)
class ItemMeta:
    key: str
    version: int
    expires_at: int
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class SetResult:
    created: bool
    meta: ItemMeta


@dataclass(frozen=True, slots=True)
class Item:
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

    async def stats(self) -> StoreStats:
        """Counts and counters, exact at the time of the call (due entries are swept first)."""
        ...

    async def sweep(self) -> int:
        """Reclaim entries that are due; returns how many. O(expired · log n)."""
        ...
