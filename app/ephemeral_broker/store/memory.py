"""The in-memory store: a dict of entries, an expiry heap, and a sorted key index.

Costs (n = live keys):
- get: O(1) dict lookup plus a lazy expiry check; set/delete/incr/touch: O(log n) for the
  heap and the sorted index.
- list by prefix: O(log n + k) through `SortedKeys`, never a scan of the store.
- sweep: O(1) when nothing is due (one look at the heap's top), else O(expired · log n).
- leases: see store/leases.py; the store owns one `LeaseTable` on the same clock, and its
  sweep reclaims expired leases too.
- waiting reads: see store/watch.py; every write of a value (set, incr) wakes the key's
  waiters. A delete or an expiry wakes nobody: it brings no value a waiter could return.

The expiry heap holds `(scheduled_ms, key)` pairs. A key's TTL can move both ways (touch,
overwrite, sliding expiry on read), and rewriting heap entries in place is O(n), so instead:
- a TTL that moves *later* leaves the heap alone; when the old time is popped the sweep sees the
  entry is not due yet and pushes it again at its real time (lazy rescheduling);
- a TTL that moves *earlier* pushes a new pair; the older, later pair becomes stale.
`_Entry.scheduled` names the one pair that is live; every other pair for the key is stale and
is dropped when popped. Deleted keys leave stale pairs too, so the heap is rebuilt when stale
pairs outnumber live entries (amortised O(1) per write).
"""

from __future__ import annotations

import asyncio
import builtins
import zlib
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from typing import Final

import orjson

from ephemeral_broker.clock import Clock, SystemClock
from ephemeral_broker.errors import BrokerError, quote_name
from ephemeral_broker.rules import check_name, check_wait_ms, pack_value, resolve_ttl
from ephemeral_broker.store.base import (
    NO_PRECONDITION,
    Item,
    ItemMeta,
    KeyInfo,
    LeaseGrant,
    PoolLeases,
    Precondition,
    SetResult,
    StoreLimits,
    StoreStats,
    VersionMatch,
)
from ephemeral_broker.store.leases import LeaseTable
from ephemeral_broker.store.sortedkeys import SortedKeys
from ephemeral_broker.store.watch import KeyWatchers

# Rough bytes an entry costs beyond its key and stored value (dict slot, entry object, heap
# pair, index slot, int objects): measured by `bench` memory runs, used by approx_store_bytes.
ENTRY_OVERHEAD_BYTES: Final = 400
# The store's answers are NamedTuples; built through tuple.__new__ they skip the Python-level
# __new__ that NamedTuple generates (half the cost of an answer, on every read and write).
_tuple_new: Final = tuple.__new__
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_HEAP_SLACK: Final = 1024


class _Entry:
    __slots__ = ("compressed", "data", "expires_at", "scheduled", "size", "ttl_ms", "version")

    def __init__(
        self, data: bytes, compressed: bool, size: int, version: int, expires_at: int, ttl_ms: int
    ) -> None:
        self.data = data
        self.compressed = compressed
        self.size = size  # length of the canonical (uncompressed) JSON
        self.version = version
        self.expires_at = expires_at
        self.ttl_ms = ttl_ms
        self.scheduled = expires_at

    def raw(self) -> bytes:
        return zlib.decompress(self.data) if self.compressed else self.data


def _matches(condition: VersionMatch, version: int | None) -> bool:
    """Whether a conditional header's etags match the current version (None: no current)."""
    if version is None:
        return False
    return condition == "*" or version in condition


class MemoryStore:
    def __init__(
        self,
        limits: StoreLimits,
        clock: Clock | None = None,
        *,
        on_items_changed: Callable[[int], None] | None = None,
    ) -> None:
        self.limits = limits
        self.clock: Clock = clock or SystemClock()
        # Told the new key count whenever it changes (capacity warnings live in the observer).
        self._on_items_changed = on_items_changed
        self._items: dict[str, _Entry] = {}
        self._index = SortedKeys()
        self._heap: list[tuple[int, str]] = []
        self._version = 0
        self._stored_bytes = 0
        self._expired_total = 0
        self._compress_before = 0
        self._compress_after = 0
        self._stored_compressed = 0
        self._stored_plain = 0
        self._watchers = KeyWatchers()
        self._leases = LeaseTable(limits, self.clock)

    # ---- helpers -----------------------------------------------------------------------

    def _live(self, key: str, now: int) -> _Entry | None:
        entry = self._items.get(key)
        if entry is not None and entry.expires_at <= now:
            self._expire(key, entry)
            return None
        return entry

    def _expire(self, key: str, entry: _Entry) -> None:
        """Drop an entry found due on access (the sweeper counts its own)."""
        self._drop(key, entry)
        self._expired_total += 1

    def _drop(self, key: str, entry: _Entry) -> None:
        del self._items[key]
        self._index.remove(key)
        self._stored_bytes -= self._footprint(key, entry)
        if self._on_items_changed is not None:
            self._on_items_changed(len(self._items))

    @staticmethod
    def _footprint(key: str, entry: _Entry) -> int:
        key_bytes = len(key) if key.isascii() else len(key.encode("utf-8", "surrogatepass"))
        return key_bytes + len(entry.data) + ENTRY_OVERHEAD_BYTES

    def _push(self, key: str, entry: _Entry) -> None:
        entry.scheduled = entry.expires_at
        heappush(self._heap, (entry.expires_at, key))
        if len(self._heap) > 2 * len(self._items) + _HEAP_SLACK:
            self._rebuild_heap()

    def _schedule(self, key: str, entry: _Entry) -> None:
        """Make sure the heap looks at `entry` no later than its (possibly earlier) expiry."""
        if entry.expires_at < entry.scheduled:
            self._push(key, entry)

    def _rebuild_heap(self) -> None:
        for entry in self._items.values():
            entry.scheduled = entry.expires_at
        self._heap = [(entry.expires_at, key) for key, entry in self._items.items()]
        heapify(self._heap)

    def _encode(self, key: str, value: bytes) -> tuple[bytes, bool]:
        limits = self.limits
        packed, compressed = pack_value(
            key, value, limits.max_value_size, limits.compression_threshold
        )
        if compressed:
            self._compress_before += len(value)
            self._compress_after += len(packed)
            self._stored_compressed += 1
            return packed, True
        self._stored_plain += 1
        # A right-sized copy: orjson (3.12 and later) returns bytes whose allocation is rounded
        # up, 4 KiB for a 100-byte value, 64 KiB for a 5 KB one, and never trimmed; keeping
        # them as they are would cost up to 40x the value's size for as long as the key lives.
        return bytes(memoryview(value)), False

    def _check_room(self, key: str, now: int) -> None:
        limit = self.limits.max_items
        if limit and len(self._items) >= limit:
            # The count may include entries that are due but not swept yet: reclaim them first,
            # so a store full of dead keys never refuses a live one.
            self._sweep(now)
            if len(self._items) >= limit:
                raise BrokerError(
                    "max_items",
                    f"cannot add key {quote_name(key)}: the store holds {len(self._items)} keys, "
                    f"its max_items limit",
                )

    def _ttl(self, ttl_ms: int | None, key: str, *, required: bool) -> int:
        # A valid TTL (an int, not a bool, in 1..max_ttl) is the common case: taken as it is,
        # without building the subject of resolve_ttl's error sentences first.
        if type(ttl_ms) is int and 0 < ttl_ms <= self.limits.max_ttl:
            return ttl_ms
        return resolve_ttl(
            ttl_ms,
            default_ms=self.limits.default_ttl,
            max_ms=self.limits.max_ttl,
            required=required,
            subject=f"key {quote_name(key)}",
        )

    def _write(
        self, key: str, entry: _Entry | None, value: bytes, ttl: int, expires_at: int, now: int
    ) -> tuple[_Entry, bool]:
        """Store `value` as a new version of `key` (a live entry or None); returns it, created."""
        if entry is None:
            self._check_room(key, now)
        data, compressed = self._encode(key, value)
        self._version += 1
        if entry is None:
            entry = _Entry(data, compressed, len(value), self._version, expires_at, ttl)
            self._items[key] = entry
            self._index.add(key)
            self._stored_bytes += self._footprint(key, entry)
            self._push(key, entry)
            if self._on_items_changed is not None:
                self._on_items_changed(len(self._items))
            created = True
        else:
            # The key's bytes and the overhead stay: only the data's size changes the footprint.
            self._stored_bytes += len(data) - len(entry.data)
            entry.data = data
            entry.compressed = compressed
            entry.size = len(value)
            entry.version = self._version
            entry.expires_at = expires_at
            entry.ttl_ms = ttl
            self._schedule(key, entry)
            created = False
        if self._watchers:
            self._watchers.notify(key)
        return entry, created

    @staticmethod
    def _check_precondition(key: str, entry: _Entry | None, precondition: Precondition) -> None:
        current = entry.version if entry is not None else None
        if precondition.if_match is not None and not _matches(precondition.if_match, current):
            state = "does not exist" if current is None else f"is at version {current}"
            raise BrokerError(
                "precondition_failed", f"If-Match does not hold: key {quote_name(key)} {state}"
            )
        if precondition.if_none_match is not None and _matches(precondition.if_none_match, current):
            raise BrokerError(
                "precondition_failed",
                f"If-None-Match does not hold: key {quote_name(key)} exists at version {current}",
            )

    def _sweep(self, now: int) -> int:
        heap = self._heap
        reclaimed = 0
        while heap and heap[0][0] <= now:
            scheduled, key = heappop(heap)
            entry = self._items.get(key)
            if entry is None or entry.scheduled != scheduled:
                continue  # stale pair: the key is gone, or a newer pair is the live one
            if entry.expires_at <= now:
                self._drop(key, entry)
                reclaimed += 1
            else:
                # Its TTL was extended after this pair was pushed: look again at the real time.
                entry.scheduled = entry.expires_at
                heappush(heap, (entry.expires_at, key))
        self._expired_total += reclaimed
        return reclaimed

    # ---- the Store protocol ------------------------------------------------------------

    async def set(
        self,
        key: str,
        value: bytes,
        ttl_ms: int | None,
        precondition: Precondition = NO_PRECONDITION,
    ) -> SetResult:
        limits = self.limits
        check_name(key, limits.max_key_length)
        ttl = self._ttl(ttl_ms, key, required=limits.require_ttl)
        now = self.clock.now_ms()
        entry = self._live(key, now)
        if precondition is not NO_PRECONDITION:
            self._check_precondition(key, entry, precondition)
        entry, created = self._write(key, entry, value, ttl, now + ttl, now)
        meta = _tuple_new(ItemMeta, (key, entry.version, entry.expires_at, ttl))
        return _tuple_new(SetResult, (created, meta))

    async def get(self, key: str) -> Item | None:
        item = self._read(key)
        if item is None:
            # Only a name that finds nothing is checked: a stored key's name was checked when
            # it was written, and an invalid one (never stored) is refused, not missed.
            check_name(key, self.limits.max_key_length)
        return item

    def _read(self, key: str) -> Item | None:
        # _live, written out: this is every GET's path.
        entry = self._items.get(key)
        if entry is None:
            return None
        now = self.clock.now_ms()
        if entry.expires_at <= now:
            self._expire(key, entry)
            return None
        if self.limits.refresh_ttl_on_get:
            # Later expiry only: the heap catches up lazily (see the module docstring).
            entry.expires_at = now + entry.ttl_ms
        return _tuple_new(Item, (key, entry.raw(), entry.version, entry.expires_at))

    async def wait_for(
        self, key: str, wait_ms: int, after_version: int | None = None
    ) -> Item | None:
        check_name(key, self.limits.max_key_length)
        check_wait_ms(wait_ms, "the read of key", key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        while True:
            # No await between this check and parking: a write cannot slip in between.
            item = self._read(key)
            if item is not None and (after_version is None or item.version > after_version):
                return item
            remaining = deadline - loop.time()
            if remaining <= 0:
                return item
            # Woken by a write (which may be stale by now, or not newer): look again.
            await self._watchers.wait(key, remaining)

    async def delete(self, key: str, precondition: Precondition = NO_PRECONDITION) -> bool:
        entry = self._live(key, self.clock.now_ms())
        if entry is None:
            check_name(key, self.limits.max_key_length)  # as in `get`
        self._check_precondition(key, entry, precondition)
        if entry is None:
            return False
        self._drop(key, entry)
        return True

    async def list(self, prefix: str, limit: int) -> list[KeyInfo]:
        if prefix:
            check_name(prefix, self.limits.max_key_length, what="prefix")
        now = self.clock.now_ms()
        found: list[KeyInfo] = []
        if limit <= 0:
            return found
        for key in self._index.with_prefix(prefix):
            entry = self._items[key]
            if entry.expires_at <= now:
                continue  # due but not swept yet: never listed
            found.append(KeyInfo(key, entry.version, entry.expires_at, entry.size))
            if len(found) >= limit:
                break
        return found

    async def incr(self, key: str, by: int, ttl_ms: int | None) -> Item:
        check_name(key, self.limits.max_key_length)
        now = self.clock.now_ms()
        entry = self._live(key, now)
        if entry is None:
            current = 0
            ttl = self._ttl(ttl_ms, key, required=self.limits.require_ttl)
            expires_at = now + ttl
        else:
            # Small values are never compressed, so this is a parse of a few bytes.
            parsed = orjson.loads(entry.raw())
            if type(parsed) is not int:
                raise BrokerError(
                    "not_an_integer",
                    f"cannot incr key {quote_name(key)}: its value is a JSON "
                    f"{_json_type(parsed)}, not an integer",
                )
            current = parsed
            if ttl_ms is None:
                # incr without ttl_ms keeps the key's deadline and its TTL.
                ttl, expires_at = entry.ttl_ms, entry.expires_at
            else:
                ttl = self._ttl(ttl_ms, key, required=True)
                expires_at = now + ttl
        result = current + by
        if not _INT64_MIN <= result <= _INT64_MAX:
            raise BrokerError(
                "not_an_integer",
                f"cannot incr key {quote_name(key)} by {by}: the result leaves the signed 64-bit "
                "integer range",
            )
        encoded = orjson.dumps(result)
        entry, _ = self._write(key, entry, encoded, ttl, expires_at, now)
        return _tuple_new(Item, (key, encoded, entry.version, entry.expires_at))

    async def touch(self, key: str, ttl_ms: int) -> ItemMeta:
        check_name(key, self.limits.max_key_length)
        ttl = self._ttl(ttl_ms, key, required=True)
        now = self.clock.now_ms()
        entry = self._live(key, now)
        if entry is None:
            raise BrokerError("not_found", f"key {quote_name(key)} does not exist or has expired")
        entry.expires_at = now + ttl
        entry.ttl_ms = ttl
        self._schedule(key, entry)
        return ItemMeta(key, entry.version, entry.expires_at, ttl)

    async def acquire_lease(
        self,
        pool: str,
        worker_id: str,
        ttl_ms: int | None,
        size: int | None = None,
        wait_ms: int = 0,
    ) -> LeaseGrant:
        return await self._leases.acquire(pool, worker_id, ttl_ms, size, wait_ms)

    async def renew_lease(self, pool: str, worker_id: str, ttl_ms: int | None) -> LeaseGrant:
        return self._leases.renew(pool, worker_id, ttl_ms)

    async def release_lease(self, pool: str, worker_id: str, token: int | None = None) -> bool:
        return self._leases.release(pool, worker_id, token)

    async def release_worker(self, worker_id: str) -> int:
        return self._leases.release_worker(worker_id)

    async def list_pools(self) -> builtins.list[PoolLeases]:
        return self._leases.list_pools()

    async def list_pool(self, pool: str) -> PoolLeases:
        return self._leases.list_pool(pool)

    async def stats(self) -> StoreStats:
        now = self.clock.now_ms()
        self._sweep(now)
        leases = self._leases
        leases.reclaim(now)
        return StoreStats(
            items=len(self._items),
            max_items=self.limits.max_items,
            approx_store_bytes=self._stored_bytes,
            expired_items_total=self._expired_total,
            compression_bytes_before_total=self._compress_before,
            compression_bytes_after_total=self._compress_after,
            values_stored_compressed_total=self._stored_compressed,
            values_stored_uncompressed_total=self._stored_plain,
            leases=leases.live,
            pools=leases.pool_count,
            max_leases=self.limits.max_leases,
            expired_leases_total=leases.expired_total,
        )

    async def sweep(self) -> int:
        now = self.clock.now_ms()
        return self._sweep(now) + self._leases.reclaim(now)

    @property
    def leases(self) -> LeaseTable:
        """The lease pools (tests and benchmarks look at their counters)."""
        return self._leases

    @property
    def waiting_reads(self) -> int:
        """Waiting GETs parked right now (tests)."""
        return self._watchers.waiting

    @property
    def resident_items(self) -> int:
        """Entries held, due-but-unreclaimed ones included; unlike stats(), never sweeps."""
        return len(self._items)

    @property
    def heap_size(self) -> int:
        """Pairs in the expiry heap, stale ones included (tests and benchmarks)."""
        return len(self._heap)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, float):
        return "number with a fraction"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
