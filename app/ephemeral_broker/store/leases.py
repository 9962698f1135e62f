"""Lease pools for the memory store: lowest free values, fencing tokens, expiry and waiters.

Costs (n = holders of one pool, L = live leases of all pools, w = waiters of one pool):
- grant: O(log n). Each pool keeps `next_value` (every value below it has been handed out at
  least once) and a min-heap of the values below it that no live lease holds. The lowest free
  value is the heap's top, or `next_value` when the heap is empty: never a scan of the holders
  (defect 9 of the design notes).
- renew, release: O(log L) for the expiry heap; release-all of a worker: O(k log L) for its k
  leases. Listing sorts what it returns.
- expiry: one heap of `(scheduled_ms, token)` pairs for all pools, with the same lazy
  rescheduling as the key heap (see store/memory.py): `reclaim` costs O(1) when nothing is
  due and O(expired · log L) otherwise. Every lease operation reclaims first, so a lease past
  its `expires_at` never holds a value, whether or not the sweeper has run.
- waiting: a waiter is a future in its pool's FIFO queue. A value freed by a release or an
  expiry is handed to the first waiter whose `size` admits it, in the same step that frees it,
  so a newcomer can never take a value from under a waiter. Usually that is the head of the
  queue; with mixed sizes, waiters that cannot use the value are stepped over (O(w)).
- An expiring lease wakes its pool's waiters promptly: while anyone waits, a loop timer is
  armed at the earliest expiry and reclaims when it fires, independent of the sweeper's tick.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from typing import Final

from ephemeral_broker.clock import Clock
from ephemeral_broker.errors import BrokerError, quote_name
from ephemeral_broker.logs import logger
from ephemeral_broker.rules import MAX_POOL_SIZE, check_name, check_wait_ms, resolve_ttl
from ephemeral_broker.store.base import LeaseGrant, LeaseInfo, PoolLeases, StoreLimits

_HEAP_SLACK: Final = 1024
# The expiry timer never fires sooner than this after being armed: a clock that reads a hair
# behind the loop's timer must not turn into a busy loop.
_MIN_TIMER_MS: Final = 1


class _Lease:
    __slots__ = ("expires_at", "pool", "scheduled", "token", "ttl_ms", "value", "worker_id")

    def __init__(
        self, pool: _Pool, worker_id: str, value: int, token: int, expires_at: int, ttl_ms: int
    ) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.value = value
        self.token = token
        self.expires_at = expires_at
        self.ttl_ms = ttl_ms
        self.scheduled = expires_at  # the live (scheduled_ms, token) pair in the expiry heap

    def grant(self, created: bool) -> LeaseGrant:
        return LeaseGrant(
            self.pool.name,
            self.worker_id,
            self.value,
            self.token,
            self.expires_at,
            self.ttl_ms,
            created,
        )


class _Waiter:
    __slots__ = ("future", "queued", "size", "ttl_ms", "worker_id")

    def __init__(
        self, worker_id: str, size: int, ttl_ms: int, future: asyncio.Future[LeaseGrant]
    ) -> None:
        self.worker_id = worker_id
        self.size = size
        self.ttl_ms = ttl_ms
        self.future = future
        self.queued = True


class _Pool:
    __slots__ = ("free", "holders", "name", "next_value", "waiters")

    def __init__(self, name: str) -> None:
        self.name = name
        self.holders: dict[str, _Lease] = {}  # by worker id
        # Invariant: a value below next_value is either held by a live lease or in `free`.
        self.free: list[int] = []
        self.next_value = 0
        self.waiters: deque[_Waiter] = deque()

    def lowest_free(self) -> int:
        return self.free[0] if self.free else self.next_value

    def take_lowest(self) -> int:
        if self.free:
            return heapq.heappop(self.free)
        value = self.next_value
        self.next_value += 1
        return value

    def give_back(self, value: int) -> None:
        heapq.heappush(self.free, value)


class LeaseTable:
    """All lease pools of one memory store. Synchronous except for waiting."""

    def __init__(self, limits: StoreLimits, clock: Clock) -> None:
        self.limits = limits
        self.clock = clock
        self._pools: dict[str, _Pool] = {}
        self._by_token: dict[int, _Lease] = {}  # every live lease
        self._by_worker: dict[str, dict[str, _Lease]] = {}  # worker id -> pool name -> lease
        self._heap: list[tuple[int, int]] = []
        self._token = 0
        self.expired_total = 0
        self._waiting = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0

    # ---- counts ------------------------------------------------------------------------

    @property
    def live(self) -> int:
        return len(self._by_token)

    @property
    def pool_count(self) -> int:
        """Pools with a live lease or a waiter; an emptied pool is forgotten."""
        return len(self._pools)

    @property
    def waiting(self) -> int:
        """Lease requests waiting for a value right now."""
        return self._waiting

    @property
    def heap_size(self) -> int:
        """Pairs in the expiry heap, stale ones included (tests and benchmarks)."""
        return len(self._heap)

    # ---- the operations ----------------------------------------------------------------

    async def acquire(
        self, pool_name: str, worker_id: str, ttl_ms: int | None, size: int | None, wait_ms: int
    ) -> LeaseGrant:
        self._check_names(pool_name, worker_id)
        ttl = self._ttl(ttl_ms, pool_name, worker_id)
        if size is not None and (
            isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_POOL_SIZE
        ):
            raise BrokerError(
                "validation_error",
                f"size of the lease in pool {quote_name(pool_name)} is {size!r}; it must be an "
                f"integer from 1 to {MAX_POOL_SIZE}",
            )
        check_wait_ms(wait_ms, "the lease in pool", pool_name)
        now = self.clock.now_ms()
        self.reclaim(now)
        pool = self._pools.get(pool_name)
        if pool is not None:
            held = pool.holders.get(worker_id)
            if held is not None:
                self._extend(held, ttl, now)
                return held.grant(created=False)
            if size is not None and pool.lowest_free() >= size:
                if not wait_ms:
                    raise _exhausted(pool_name, size, wait_ms)
                return await self._wait(pool, worker_id, size, ttl, wait_ms)
        self._check_room(pool_name, worker_id)
        if pool is None:
            pool = self._pools[pool_name] = _Pool(pool_name)
        return self._grant(pool, worker_id, ttl, now).grant(created=True)

    def renew(self, pool_name: str, worker_id: str, ttl_ms: int | None) -> LeaseGrant:
        self._check_names(pool_name, worker_id)
        ttl = self._ttl(ttl_ms, pool_name, worker_id)
        now = self.clock.now_ms()
        self.reclaim(now)
        lease = self._held(pool_name, worker_id)
        if lease is None:
            raise BrokerError(
                "lease_not_found",
                f"worker {quote_name(worker_id)} holds no lease in pool {quote_name(pool_name)} "
                "(it expired or was released); acquire a new one",
            )
        self._extend(lease, ttl, now)
        return lease.grant(created=False)

    def release(self, pool_name: str, worker_id: str, token: int | None) -> bool:
        self._check_names(pool_name, worker_id)
        self.reclaim(self.clock.now_ms())
        lease = self._held(pool_name, worker_id)
        if token is not None and (lease is None or lease.token != token):
            now_held = (
                "holds no lease there (it expired or was released)"
                if lease is None
                else f"holds the lease with token {lease.token}"
            )
            raise BrokerError(
                "precondition_failed",
                f"token {token} does not match: in pool {quote_name(pool_name)}, worker "
                f"{quote_name(worker_id)} {now_held}; nothing was released",
            )
        if lease is None:
            return False
        self._end(lease)
        return True

    def release_worker(self, worker_id: str) -> int:
        check_name(worker_id, self.limits.max_key_length, what="worker id")
        self.reclaim(self.clock.now_ms())
        leases = self._by_worker.get(worker_id)
        if not leases:
            return 0
        ended = list(leases.values())
        for lease in ended:
            self._end(lease)
        return len(ended)

    def list_pools(self) -> list[PoolLeases]:
        self.reclaim(self.clock.now_ms())
        return [
            _pool_leases(self._pools[name])
            for name in sorted(self._pools)
            if self._pools[name].holders
        ]

    def list_pool(self, pool_name: str) -> PoolLeases:
        check_name(pool_name, self.limits.max_key_length, what="pool")
        self.reclaim(self.clock.now_ms())
        pool = self._pools.get(pool_name)
        return _pool_leases(pool) if pool is not None else PoolLeases(pool_name, [])

    def reclaim(self, now: int) -> int:
        """End every lease that is due; hands its value to a waiter. O(1) when none is due."""
        heap = self._heap
        reclaimed = 0
        while heap and heap[0][0] <= now:
            scheduled, token = heapq.heappop(heap)
            lease = self._by_token.get(token)
            if lease is None or lease.scheduled != scheduled:
                continue  # stale pair: released, or a newer pair is the live one
            if lease.expires_at <= now:
                self._end(lease)
                reclaimed += 1
            else:
                # Renewed after this pair was pushed: look again at its real time.
                lease.scheduled = lease.expires_at
                heapq.heappush(heap, (lease.expires_at, token))
        self.expired_total += reclaimed
        return reclaimed

    # ---- helpers -----------------------------------------------------------------------

    def _check_names(self, pool_name: str, worker_id: str) -> None:
        check_name(pool_name, self.limits.max_key_length, what="pool")
        check_name(worker_id, self.limits.max_key_length, what="worker id")

    def _ttl(self, ttl_ms: int | None, pool_name: str, worker_id: str) -> int:
        if ttl_ms is None:
            return self.limits.lease_ttl
        if type(ttl_ms) is int and 0 < ttl_ms <= self.limits.max_ttl:
            return ttl_ms  # the common case, without building the error sentence's subject
        return resolve_ttl(
            ttl_ms,
            default_ms=self.limits.lease_ttl,
            max_ms=self.limits.max_ttl,
            required=False,
            subject=f"the lease of worker {quote_name(worker_id)} in pool {quote_name(pool_name)}",
        )

    def _held(self, pool_name: str, worker_id: str) -> _Lease | None:
        pool = self._pools.get(pool_name)
        return pool.holders.get(worker_id) if pool is not None else None

    def _has_room(self) -> bool:
        limit = self.limits.max_leases
        return not limit or len(self._by_token) < limit

    def _check_room(self, pool_name: str, worker_id: str) -> None:
        if not self._has_room():
            raise BrokerError(
                "max_leases",
                f"cannot grant worker {quote_name(worker_id)} a lease in pool "
                f"{quote_name(pool_name)}: {len(self._by_token)} leases are live, the "
                "max_leases limit",
            )

    def _grant(self, pool: _Pool, worker_id: str, ttl: int, now: int) -> _Lease:
        self._token += 1
        lease = _Lease(pool, worker_id, pool.take_lowest(), self._token, now + ttl, ttl)
        pool.holders[worker_id] = lease
        self._by_token[lease.token] = lease
        self._by_worker.setdefault(worker_id, {})[pool.name] = lease
        self._push(lease)
        return lease

    def _extend(self, lease: _Lease, ttl: int, now: int) -> None:
        lease.expires_at = now + ttl
        lease.ttl_ms = ttl
        if lease.expires_at < lease.scheduled:
            self._push(lease)  # earlier than its live pair: a later one catches up lazily

    def _push(self, lease: _Lease) -> None:
        lease.scheduled = lease.expires_at
        heapq.heappush(self._heap, (lease.expires_at, lease.token))
        if len(self._heap) > 2 * len(self._by_token) + _HEAP_SLACK:
            # Rebuilt in place: `reclaim` may be iterating this very list (a hand-off grants).
            for live in self._by_token.values():
                live.scheduled = live.expires_at
            self._heap[:] = [(live.expires_at, token) for token, live in self._by_token.items()]
            heapq.heapify(self._heap)
        if self._waiting and (self._timer is None or lease.expires_at < self._timer_due):
            self._arm_expiry_timer()

    def _end(self, lease: _Lease) -> None:
        """Forget a lease (released or expired) and pass its value on."""
        pool = lease.pool
        del self._by_token[lease.token]
        del pool.holders[lease.worker_id]
        of_worker = self._by_worker[lease.worker_id]
        del of_worker[pool.name]
        if not of_worker:
            del self._by_worker[lease.worker_id]
        pool.give_back(lease.value)
        if pool.waiters:
            self._serve(pool)
        self._forget_if_unused(pool)

    def _forget_if_unused(self, pool: _Pool) -> None:
        """Forget a pool nobody holds or waits on: its free heap and counter start over with
        the next grant."""
        if not pool.holders and not pool.waiters and self._pools.get(pool.name) is pool:
            del self._pools[pool.name]

    def _serve(self, pool: _Pool) -> None:
        """Hand free values to waiters, first come first served among those that can use them."""
        waiters = pool.waiters
        now = self.clock.now_ms()
        while waiters and self._has_room():
            lowest = pool.lowest_free()
            chosen: _Waiter | None = None
            for waiter in waiters:
                if not waiter.future.done() and lowest < waiter.size:
                    chosen = waiter
                    break
            if chosen is None:
                return
            if waiters[0] is chosen:
                waiters.popleft()
            else:
                waiters.remove(chosen)
            chosen.queued = False
            held = pool.holders.get(chosen.worker_id)
            if held is not None:
                # The same worker was granted a lease by another request meanwhile: renew it.
                self._extend(held, chosen.ttl_ms, now)
                chosen.future.set_result(held.grant(created=False))
            else:
                chosen.future.set_result(
                    self._grant(pool, chosen.worker_id, chosen.ttl_ms, now).grant(created=True)
                )

    async def _wait(
        self, pool: _Pool, worker_id: str, size: int, ttl: int, wait_ms: int
    ) -> LeaseGrant:
        loop = asyncio.get_running_loop()
        self._loop = loop
        waiter = _Waiter(worker_id, size, ttl, loop.create_future())
        pool.waiters.append(waiter)
        self._waiting += 1
        self._arm_expiry_timer()
        give_up = loop.call_later(wait_ms / 1000, _time_out, waiter, pool.name, wait_ms)
        try:
            return await waiter.future
        except BaseException:
            # Cancelled (shutdown, a client gone) after a value was handed over but before this
            # request could answer: nobody will learn of that lease, so end it at once.
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                granted = future.result()
                lease = self._by_token.get(granted.token)
                if granted.created and lease is not None:
                    self._end(lease)
            raise
        finally:
            give_up.cancel()
            if waiter.queued:
                pool.waiters.remove(waiter)
                waiter.queued = False
            self._waiting -= 1
            self._forget_if_unused(pool)
            if not self._waiting and self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _arm_expiry_timer(self) -> None:
        """While anyone waits, fire at the earliest lease expiry (not at the sweeper's tick)."""
        if not self._waiting or not self._heap or self._loop is None:
            return
        due = self._heap[0][0]
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        delay_ms = max(due - self.clock.now_ms(), _MIN_TIMER_MS)
        self._timer = self._loop.call_later(delay_ms / 1000, self._on_expiry_timer)
        self._timer_due = due

    def _on_expiry_timer(self) -> None:
        self._timer = None
        try:
            self.reclaim(self.clock.now_ms())
        except Exception:  # a bug; the loop must not lose its timer chain over it
            logger.exception("reclaiming expired leases failed")
        self._arm_expiry_timer()


def _time_out(waiter: _Waiter, pool_name: str, wait_ms: int) -> None:
    if not waiter.future.done():
        waiter.future.set_exception(_exhausted(pool_name, waiter.size, wait_ms))


def _exhausted(pool_name: str, size: int, wait_ms: int) -> BrokerError:
    waited = f" within wait_ms of {wait_ms} ms" if wait_ms else " (no wait_ms given)"
    return BrokerError(
        "pool_exhausted",
        f"pool {quote_name(pool_name)} has no free value below size {size}{waited}",
    )


def _pool_leases(pool: _Pool) -> PoolLeases:
    leases = sorted(pool.holders.values(), key=lambda lease: lease.value)
    return PoolLeases(
        pool.name,
        [
            LeaseInfo(lease.worker_id, lease.value, lease.token, lease.expires_at)
            for lease in leases
        ],
    )
