"""The Redis store: several brokers, on several hosts, sharing one namespace of keys and leases.

Every operation is one Lua script run with EVALSHA (see store/redis_scripts.py for the data
layout and the costs): atomic, so two brokers calling at once are ordered by Redis and no
operation reads in one round trip and writes in another. Names, TTLs, sizes and compression
are checked and done here, before the script, exactly as the memory store does them (same
rules module, same sentences).

Waiting without polling: every broker holds ONE subscription to the namespace's channel.
Scripts publish "k" + key after a write of a value and "w" + waiter id after handing a lease
value to a queued waiter; the subscriber wakes the matching local waiters, which then look
again with a script. Messages published while the subscription is down are lost, so after
every (re)subscribe all local waiters look again.

Faults are errors, never wrong answers: a connection error or a timeout is `503
store_unavailable`, and a script is never sent twice (a script whose reply was lost may have
run, and running a CAS or an incr again would change its answer). The one retry is after an
epoch refusal, which a script answers before it changes anything: Redis lost the namespace
(restarted without persistence), this broker re-creates it with counters above every version
and token it has seen, reports the reset, and runs the operation again.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import itertools
import secrets
import time
import zlib
from typing import Any, Final

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ephemeral_broker.clock import Clock
from ephemeral_broker.errors import BrokerError, quote_name
from ephemeral_broker.logs import logger
from ephemeral_broker.rules import (
    MAX_POOL_SIZE,
    check_name,
    check_namespace,
    check_wait_ms,
    pack_value,
    redact_url,
    resolve_ttl,
)
from ephemeral_broker.store import redis_scripts as lua
from ephemeral_broker.store.base import (
    NO_PRECONDITION,
    Item,
    ItemMeta,
    KeyInfo,
    LeaseGrant,
    LeaseInfo,
    NamespaceConflict,
    PoolLeases,
    Precondition,
    SetResult,
    StoreLimits,
    StoreStats,
    StoreStatus,
    VersionMatch,
)
from ephemeral_broker.store.memory import ENTRY_OVERHEAD_BYTES, _json_type
from ephemeral_broker.store.watch import KeyWatchers

# Longer than any TTL a value or lease can have: what keeps an abandoned namespace bounded.
SAFETY_MARGIN_MS: Final = 3_600_000
# How long a broker's liveness key lasts; refreshed every third of it while it has queued
# lease waiters. After a broker dies its waiters are skipped within this time.
ALIVE_MS: Final = 3000
# Due entries reclaimed per script run (a sweep loops); bounds how long one script blocks.
_BATCH: Final = 1000
# Limits that define a namespace's behaviour: brokers that disagree on one would give
# different answers to the same request, so a broker that disagrees refuses to start.
SHARED_LIMITS: Final = (
    "max_items",
    "max_value_size",
    "max_key_length",
    "max_ttl",
    "default_ttl",
    "require_ttl",
    "compression_threshold",
    "refresh_ttl_on_get",
    "max_leases",
    "lease_ttl",
)
_RECONNECT_DELAYS_S: Final = (0.05, 0.1, 0.25, 0.5, 1.0)
_EPOCH_REFUSAL: Final = "EBEPOCH"

_StoreFault = (RedisConnectionError, RedisTimeoutError, OSError)


def _precondition_args(precondition: Precondition) -> tuple[str, str]:
    return _match_arg(precondition.if_match), _match_arg(precondition.if_none_match)


def _match_arg(condition: VersionMatch | None) -> str:
    if condition is None:
        return ""
    if condition == "*":
        return "*"
    # An empty set matches nothing; "-" is never a version.
    return ",".join(str(version) for version in condition) or "-"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    def __init__(
        self,
        limits: StoreLimits,
        url: str,
        namespace: str = "default",
        clock: Clock | None = None,
        *,
        timeout_s: float = 2.0,
    ) -> None:
        check_namespace(namespace)
        self.limits = limits
        self.url = url
        self.namespace = namespace
        # Only tests pass a clock; otherwise Redis's TIME decides, one clock for all brokers.
        self._clock = clock
        self._prefix = f"eb:{{{namespace}}}:"
        self._meta = self._prefix + "meta"
        self._channel = self._prefix + "ev"
        self._safety = limits.max_ttl + SAFETY_MARGIN_MS
        # No retries and no reconnect-and-resend: a script sent twice could run twice.
        common: dict[str, Any] = {
            "retry": Retry(NoBackoff(), 0),
            "socket_connect_timeout": timeout_s,
            "decode_responses": False,
        }
        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout_s, **common)
        # The subscription blocks between messages: no read timeout there.
        self._sub_client = aioredis.Redis.from_url(url, socket_timeout=None, **common)
        self._scripts = {
            name: self._redis.register_script(lua.PRELUDE + body)
            for name, body in (
                ("set", lua.SET),
                ("get", lua.GET),
                ("delete", lua.DELETE),
                ("list", lua.LIST),
                ("incr", lua.INCR),
                ("touch", lua.TOUCH),
                ("acquire", lua.ACQUIRE),
                ("claim", lua.CLAIM),
                ("abandon", lua.ABANDON),
                ("renew", lua.RENEW),
                ("release", lua.RELEASE),
                ("release_worker", lua.RELEASE_WORKER),
                ("list_pools", lua.LIST_POOLS),
                ("sweep", lua.SWEEP),
                ("stats", lua.STATS),
                ("probe", "return 1"),
            )
        }
        self._init_script = self._redis.register_script(lua.INIT)
        self._epoch = ""
        self._recovering = asyncio.Lock()
        self._seen_version = 0
        self._seen_token = 0
        self._broker_id = secrets.token_hex(6)  # hex: never contains the '.' of waiter ids
        self._waiter_ids = itertools.count(1)
        self._key_watchers = KeyWatchers()
        self._lease_waiters: dict[str, asyncio.Future[None]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._heart: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0
        self._reclaim_task: asyncio.Future[None] | None = None
        self._queued = 0
        self._available = False
        self._reason: str | None = "not started"
        self._resets = 0
        self._last_reset_ms: int | None = None
        self._closed = False

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Create or join the namespace (NamespaceConflict when the limits differ), then
        subscribe. Raises BrokerError(store_unavailable) when Redis cannot be reached."""
        await self._join(recovering=False)
        self._listener = asyncio.create_task(self._listen(), name="redis-store-subscriber")
        self._heart = asyncio.create_task(self._keep_alive(), name="redis-store-liveness")
        await self._subscribed.wait()

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in (self._listener, self._heart):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await self._redis.aclose()
        await self._sub_client.aclose()

    def status(self) -> StoreStatus:
        return StoreStatus(
            "redis",
            self.namespace,
            self._available,
            self._reason,
            self._resets,
            self._last_reset_ms,
        )

    async def check(self) -> StoreStatus:
        """One round trip now (readiness): a script that only checks the epoch, so a namespace
        Redis lost is noticed (and re-created) here too."""
        with contextlib.suppress(BrokerError):
            await self._run("probe")
        return self.status()

    def _limits_json(self) -> bytes:
        return orjson.dumps({name: getattr(self.limits, name) for name in SHARED_LIMITS})

    async def _join(self, *, recovering: bool) -> None:
        try:
            reply = await self._init_script(
                keys=[self._meta],
                args=[
                    self._prefix,
                    secrets.token_hex(8),
                    self._limits_json(),
                    self._safety,
                    self._seen_version,
                    self._seen_token,
                ],
            )
        except _StoreFault as exc:
            raise self._unavailable(exc) from exc
        epoch, stored, created = _s(reply[0]), orjson.loads(reply[1] or b"{}"), int(reply[2])
        self._epoch = epoch
        self._mark_available()
        if created and recovering:
            logger.warning(
                "Redis lost namespace %r (restarted without persistence?); re-created it with "
                "versions and fencing tokens above every one handed out before",
                self.namespace,
            )
        if not created:
            ours = orjson.loads(self._limits_json())
            for name in SHARED_LIMITS:
                if name in stored and stored[name] != ours[name]:
                    if recovering:
                        logger.error(
                            "namespace %r was re-created by a broker with %s=%r (this one has %r)",
                            self.namespace,
                            name,
                            stored[name],
                            ours[name],
                        )
                        break
                    raise NamespaceConflict(name, ours[name], stored[name], self.namespace)

    # ---- running scripts ---------------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> BrokerError:
        reason = f"Redis at {redact_url(self.url)} is unreachable or timed out: {exc}"
        self._available = False
        self._reason = reason
        return BrokerError(
            "store_unavailable",
            f"the shared store (Redis) did not answer; the request may or may not have been "
            f"applied and was not retried ({exc})",
        )

    def _mark_available(self) -> None:
        self._available = True
        self._reason = None

    async def _run(self, name: str, *args: Any) -> Any:
        script = self._scripts[name]
        for attempt in range(2):
            now = "" if self._clock is None else str(self._clock.now_ms())
            epoch = self._epoch
            try:
                reply = await script(
                    keys=[self._meta],
                    args=[
                        self._prefix,
                        epoch,
                        now,
                        self._safety,
                        self.limits.max_items,
                        self.limits.max_leases,
                        _BATCH,
                        *args,
                    ],
                )
            except ResponseError as exc:
                if str(exc).startswith(_EPOCH_REFUSAL) and attempt == 0:
                    # Refused before it changed anything, so running it again is safe.
                    await self._recover(epoch)
                    continue
                # Redis refused it (LOADING after a restart, OOM under maxmemory, READONLY on
                # a replica, BUSY): an answer the broker cannot give, never a wrong one.
                logger.error("Redis refused the %s script: %s", name, exc)
                raise BrokerError(
                    "store_unavailable", f"the shared store (Redis) refused the operation: {exc}"
                ) from exc
            except _StoreFault as exc:
                raise self._unavailable(exc) from exc
            self._available = True
            self._reason = None
            return reply
        raise BrokerError(
            "store_unavailable", f"namespace {self.namespace!r} keeps being reset in Redis"
        )

    async def _recover(self, refused_epoch: str) -> None:
        # One recovery per loss however many requests were refused at once: the others find
        # the epoch already moved on and just run again.
        async with self._recovering:
            if self._epoch != refused_epoch:
                return
            if not self._epoch:  # never joined (Redis was down at start): join now, no reset
                await self._join(recovering=False)
                return
            self._resets += 1
            self._last_reset_ms = time.time_ns() // 1_000_000
            await self._join(recovering=True)

    def _saw_version(self, version: int) -> None:
        self._seen_version = max(self._seen_version, version)

    def _saw_token(self, token: int) -> None:
        self._seen_token = max(self._seen_token, token)

    # ---- subscription ------------------------------------------------------------------

    async def _listen(self) -> None:
        delays = itertools.chain(_RECONNECT_DELAYS_S, itertools.repeat(_RECONNECT_DELAYS_S[-1]))
        while not self._closed:
            pubsub = self._sub_client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                if not self._subscribed.is_set():
                    self._subscribed.set()
                else:
                    logger.info("Redis subscription restored; every waiter looks again")
                # Messages sent while unsubscribed are lost: every waiter looks again.
                self._wake_everyone()
                delays = itertools.chain(
                    _RECONNECT_DELAYS_S, itertools.repeat(_RECONNECT_DELAYS_S[-1])
                )
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._dispatch(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost, refused, timed out
                self._subscribed.set()  # start() must not hang on a Redis that went away
                self._available = False
                self._reason = f"Redis at {redact_url(self.url)}: subscription lost: {exc}"
                await asyncio.sleep(next(delays))
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _dispatch(self, data: bytes) -> None:
        kind, rest = data[:1], data[1:].decode()
        if kind == b"k":
            self._key_watchers.notify(rest)
        elif kind == b"w":
            future = self._lease_waiters.get(rest)
            if future is not None and not future.done():
                future.set_result(None)

    def _wake_everyone(self) -> None:
        self._key_watchers.notify_all()
        for future in self._lease_waiters.values():
            if not future.done():
                future.set_result(None)

    # ---- keys ----------------------------------------------------------------------------

    def _ttl(self, ttl_ms: int | None, key: str, *, required: bool) -> int:
        return resolve_ttl(
            ttl_ms,
            default_ms=self.limits.default_ttl,
            max_ms=self.limits.max_ttl,
            required=required,
            subject=f"key {quote_name(key)}",
        )

    def _encode(self, key: str, value: bytes) -> tuple[bytes, bool]:
        return pack_value(key, value, self.limits.max_value_size, self.limits.compression_threshold)

    @staticmethod
    def _precondition_failed(key: str, reply: Any) -> BrokerError:
        which, current = _s(reply[1]), _s(reply[2])
        if which == "match":
            state = "does not exist" if not current else f"is at version {current}"
            return BrokerError(
                "precondition_failed", f"If-Match does not hold: key {quote_name(key)} {state}"
            )
        return BrokerError(
            "precondition_failed",
            f"If-None-Match does not hold: key {quote_name(key)} exists at version {current}",
        )

    @staticmethod
    def _full(key: str, count: int) -> BrokerError:
        return BrokerError(
            "max_items",
            f"cannot add key {quote_name(key)}: the store holds {count} keys, its max_items limit",
        )

    async def set(
        self,
        key: str,
        value: bytes,
        ttl_ms: int | None,
        precondition: Precondition = NO_PRECONDITION,
    ) -> SetResult:
        check_name(key, self.limits.max_key_length)
        ttl = self._ttl(ttl_ms, key, required=self.limits.require_ttl)
        data, compressed = self._encode(key, value)
        if_match, if_none_match = _precondition_args(precondition)
        reply = await self._run(
            "set",
            key,
            data,
            "1" if compressed else "0",
            len(value),
            _key_bytes(key) + len(data) + ENTRY_OVERHEAD_BYTES,
            ttl,
            if_match,
            if_none_match,
            len(value),
            len(data),
        )
        status = _s(reply[0])
        if status == "pf":
            raise self._precondition_failed(key, reply)
        if status == "full":
            raise self._full(key, int(reply[1]))
        version = int(reply[2])
        self._saw_version(version)
        return SetResult(bool(reply[1]), ItemMeta(key, version, int(reply[3]), ttl))

    async def get(self, key: str) -> Item | None:
        check_name(key, self.limits.max_key_length)
        return await self._read(key)

    async def _read(self, key: str) -> Item | None:
        reply = await self._run("get", key, "1" if self.limits.refresh_ttl_on_get else "0")
        if not reply:
            return None
        data, compressed, version, expires_at = reply
        value = zlib.decompress(data) if compressed == b"1" else bytes(data)
        version = int(version)
        self._saw_version(version)
        return Item(key, value, version, int(expires_at))

    async def wait_for(
        self, key: str, wait_ms: int, after_version: int | None = None
    ) -> Item | None:
        check_name(key, self.limits.max_key_length)
        check_wait_ms(wait_ms, "the read of key", key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        while True:
            # Watch first, then read: a write that lands after the read was sent publishes
            # after the watch exists, so it cannot slip between the two. (The watch task runs
            # before the subscriber can deliver anything: it is scheduled first.)
            watch = asyncio.ensure_future(
                self._key_watchers.wait(key, max(deadline - loop.time(), 0))
            )
            try:
                item = await self._read(key)
                if item is not None and (after_version is None or item.version > after_version):
                    return item
                if deadline - loop.time() <= 0:
                    return item
                await watch  # woken by a write (or a resubscribe), or the time is up: look again
            finally:
                if not watch.done():
                    watch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watch

    async def delete(self, key: str, precondition: Precondition = NO_PRECONDITION) -> bool:
        check_name(key, self.limits.max_key_length)
        if_match, if_none_match = _precondition_args(precondition)
        reply = await self._run("delete", key, if_match, if_none_match)
        if _s(reply[0]) == "pf":
            raise self._precondition_failed(key, reply)
        return bool(reply[1])

    async def list(self, prefix: str, limit: int) -> builtins.list[KeyInfo]:
        if prefix:
            check_name(prefix, self.limits.max_key_length, what="prefix")
        if limit <= 0:
            return []
        reply = await self._run("list", prefix, limit)
        return [
            KeyInfo(_s(reply[i]), int(reply[i + 1]), int(reply[i + 2]), int(reply[i + 3]))
            for i in range(0, len(reply), 4)
        ]

    async def incr(self, key: str, by: int, ttl_ms: int | None) -> Item:
        check_name(key, self.limits.max_key_length)
        # A TTL given is checked as it would be for an existing key (required); an absent key
        # without one takes the default, or is refused when TTLs are required (in the script,
        # which knows whether the key exists).
        ttl = "" if ttl_ms is None else str(self._ttl(ttl_ms, key, required=True))
        reply = await self._run(
            "incr",
            key,
            str(by),
            ttl,
            "1" if self.limits.require_ttl else "0",
            self.limits.default_ttl,
            _key_bytes(key) + ENTRY_OVERHEAD_BYTES,
        )
        status = _s(reply[0])
        if status == "ttl_required":
            self._ttl(None, key, required=True)  # raises ttl_required with its sentence
        if status == "nan":
            raw = zlib.decompress(reply[1]) if reply[2] == b"1" else bytes(reply[1])
            raise BrokerError(
                "not_an_integer",
                f"cannot incr key {quote_name(key)}: its value is a JSON "
                f"{_json_type(orjson.loads(raw))}, not an integer",
            )
        if status == "overflow":
            raise BrokerError(
                "not_an_integer",
                f"cannot incr key {quote_name(key)} by {by}: the result leaves the signed 64-bit "
                "integer range",
            )
        if status == "full":
            raise self._full(key, int(reply[1]))
        version = int(reply[2])
        self._saw_version(version)
        return Item(key, bytes(reply[1]), version, int(reply[3]))

    async def touch(self, key: str, ttl_ms: int) -> ItemMeta:
        check_name(key, self.limits.max_key_length)
        ttl = self._ttl(ttl_ms, key, required=True)
        reply = await self._run("touch", key, ttl)
        if _s(reply[0]) == "nf":
            raise BrokerError("not_found", f"key {quote_name(key)} does not exist or has expired")
        return ItemMeta(key, int(reply[1]), int(reply[2]), ttl)

    # ---- leases --------------------------------------------------------------------------

    def _check_names(self, pool: str, worker_id: str) -> None:
        check_name(pool, self.limits.max_key_length, what="pool")
        check_name(worker_id, self.limits.max_key_length, what="worker id")

    def _lease_ttl(self, ttl_ms: int | None, pool: str, worker_id: str) -> int:
        if ttl_ms is None:
            return self.limits.lease_ttl
        return resolve_ttl(
            ttl_ms,
            default_ms=self.limits.lease_ttl,
            max_ms=self.limits.max_ttl,
            required=False,
            subject=f"the lease of worker {quote_name(worker_id)} in pool {quote_name(pool)}",
        )

    def _grant(self, pool: str, worker_id: str, reply: Any) -> LeaseGrant:
        token = int(reply[2])
        self._saw_token(token)
        return LeaseGrant(
            pool, worker_id, int(reply[1]), token, int(reply[3]), int(reply[4]), bool(reply[5])
        )

    def _handed(self, pool: str, worker_id: str, record: bytes) -> LeaseGrant:
        value, token, expires_at, ttl, created = record.split(b" ")
        self._saw_token(int(token))
        return LeaseGrant(
            pool, worker_id, int(value), int(token), int(expires_at), int(ttl), created == b"1"
        )

    async def acquire_lease(
        self,
        pool: str,
        worker_id: str,
        ttl_ms: int | None,
        size: int | None = None,
        wait_ms: int = 0,
    ) -> LeaseGrant:
        self._check_names(pool, worker_id)
        ttl = self._lease_ttl(ttl_ms, pool, worker_id)
        if size is not None and (
            isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_POOL_SIZE
        ):
            raise BrokerError(
                "validation_error",
                f"size of the lease in pool {quote_name(pool)} is {size!r}; it must be an "
                f"integer from 1 to {MAX_POOL_SIZE}",
            )
        check_wait_ms(wait_ms, "the lease in pool", pool)
        waiter_id = f"{self._broker_id}.{next(self._waiter_ids)}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        # Registered before the script runs: a hand-over published right after it is not lost.
        self._lease_waiters[waiter_id] = loop.create_future()
        queued = False
        try:
            while True:  # once, unless a value handed over was lost before it was claimed
                left_ms = max(int((deadline - loop.time()) * 1000), 1) if wait_ms else 0
                reply = await self._run(
                    "acquire",
                    pool,
                    worker_id,
                    ttl,
                    "" if size is None else size,
                    left_ms,
                    waiter_id,
                    self._broker_id,
                    ALIVE_MS,
                )
                status = _s(reply[0])
                if status == "ok":
                    return self._grant(pool, worker_id, reply)
                if status == "full":
                    raise BrokerError(
                        "max_leases",
                        f"cannot grant worker {quote_name(worker_id)} a lease in pool "
                        f"{quote_name(pool)}: {int(reply[1])} leases are live, the max_leases "
                        "limit",
                    )
                assert size is not None  # only a sized pool can be exhausted
                if status == "exhausted":
                    raise _exhausted(pool, size, wait_ms)
                queued = True
                self._queued += 1
                self._arm_expiry_timer(reply[1], int(reply[2]))
                grant = await self._wait_for_hand_over(pool, worker_id, waiter_id, deadline)
                queued = False
                self._queued -= 1
                if grant is not None:
                    return grant
                if loop.time() >= deadline:
                    raise _exhausted(pool, size, wait_ms)
        except BaseException as exc:
            if queued:
                self._queued -= 1
                if not isinstance(exc, BrokerError):
                    # Cancelled while queued (a client gone, shutdown): leave no waiter behind,
                    # and end a lease handed over that nobody will learn of. Shielded: it must
                    # finish even though this task is being cancelled. (After a store fault the
                    # queue entry is dropped by the pool once its broker stops refreshing its
                    # liveness or its deadline has long passed.)
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self._run("abandon", pool, worker_id, waiter_id))
            raise
        finally:
            self._lease_waiters.pop(waiter_id, None)

    async def _wait_for_hand_over(
        self, pool: str, worker_id: str, waiter_id: str, deadline: float
    ) -> LeaseGrant | None:
        """Wait, queued, until a value is handed over (the grant) or the deadline passes
        (None, having left the queue); also None when a value handed over was lost before the
        claim (the caller asks again)."""
        loop = asyncio.get_running_loop()
        while True:
            wake = self._lease_waiters[waiter_id]
            remaining = deadline - loop.time()
            if remaining > 0:
                await asyncio.wait((wake,), timeout=remaining)
            give_up = not wake.done()
            if wake.done():
                self._lease_waiters[waiter_id] = loop.create_future()
            reply = await self._run("claim", pool, worker_id, waiter_id, "1" if give_up else "0")
            status = _s(reply[0])
            if status == "granted":
                return self._handed(pool, worker_id, reply[1])
            if status == "lost" or give_up:
                return None
            self._arm_expiry_timer(reply[1], int(reply[2]))

    def _arm_expiry_timer(self, earliest: bytes | str, script_now: int) -> None:
        """While this broker has lease waiters, reclaim at the earliest lease expiry (timed
        on the script's clock), not only at the sweeper's tick: an expiry hands its value to
        the first waiter, wherever that waiter is."""
        if not earliest or self._closed:
            return
        due = int(earliest)
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        delay_ms = max(due - script_now, 1)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(delay_ms / 1000, self._on_expiry_timer)
        self._timer_due = due

    def _on_expiry_timer(self) -> None:
        self._timer = None
        if self._lease_waiters and not self._closed:
            self._reclaim_task = asyncio.ensure_future(self._reclaim_for_waiters())

    async def _reclaim_for_waiters(self) -> None:
        try:
            reply = await self._run("sweep", *self._liveness())
        except Exception as exc:  # Redis down: the sweeper and the waiters' deadlines go on
            logger.debug("reclaiming for lease waiters failed: %s", exc)
            return
        if self._lease_waiters:
            self._arm_expiry_timer(reply[2], int(reply[3]))

    async def renew_lease(self, pool: str, worker_id: str, ttl_ms: int | None) -> LeaseGrant:
        self._check_names(pool, worker_id)
        ttl = self._lease_ttl(ttl_ms, pool, worker_id)
        reply = await self._run("renew", pool, worker_id, ttl)
        if _s(reply[0]) == "lnf":
            raise BrokerError(
                "lease_not_found",
                f"worker {quote_name(worker_id)} holds no lease in pool {quote_name(pool)} "
                "(it expired or was released); acquire a new one",
            )
        return self._grant(pool, worker_id, reply)

    async def release_lease(self, pool: str, worker_id: str, token: int | None = None) -> bool:
        self._check_names(pool, worker_id)
        reply = await self._run("release", pool, worker_id, "" if token is None else str(token))
        if _s(reply[0]) == "pf":
            held = _s(reply[1])
            now_held = (
                f"holds the lease with token {held}"
                if held
                else "holds no lease there (it expired or was released)"
            )
            raise BrokerError(
                "precondition_failed",
                f"token {token} does not match: in pool {quote_name(pool)}, worker "
                f"{quote_name(worker_id)} {now_held}; nothing was released",
            )
        return bool(reply[1])

    async def release_worker(self, worker_id: str) -> int:
        check_name(worker_id, self.limits.max_key_length, what="worker id")
        return int(await self._run("release_worker", worker_id))

    @staticmethod
    def _pools(reply: Any) -> builtins.list[PoolLeases]:
        pools = []
        for name, leases in reply:
            infos = [
                LeaseInfo(_s(worker), int(value), int(token), int(expires_at))
                for worker, value, token, expires_at in leases
            ]
            infos.sort(key=lambda lease: lease.value)
            pools.append(PoolLeases(_s(name), infos))
        return pools

    async def list_pools(self) -> builtins.list[PoolLeases]:
        return [pool for pool in self._pools(await self._run("list_pools", "")) if pool.leases]

    async def list_pool(self, pool: str) -> PoolLeases:
        check_name(pool, self.limits.max_key_length, what="pool")
        return self._pools(await self._run("list_pools", pool))[0]

    # ---- counts and upkeep ---------------------------------------------------------------

    async def stats(self) -> StoreStats:
        items, counters, leases, pools = await self._run("stats")
        counts = {_s(counters[i]): int(counters[i + 1]) for i in range(0, len(counters), 2)}
        return StoreStats(
            items=int(items),
            max_items=self.limits.max_items,
            approx_store_bytes=counts.get("bytes", 0),
            expired_items_total=counts.get("expired", 0),
            compression_bytes_before_total=counts.get("cb", 0),
            compression_bytes_after_total=counts.get("ca", 0),
            values_stored_compressed_total=counts.get("cc", 0),
            values_stored_uncompressed_total=counts.get("cp", 0),
            leases=int(leases),
            pools=int(pools),
            max_leases=self.limits.max_leases,
            expired_leases_total=counts.get("lexpired", 0),
        )

    def _liveness(self) -> tuple[str, str]:
        return self._broker_id, str(ALIVE_MS) if self._queued else ""

    async def _keep_alive(self) -> None:
        """While this broker has queued lease waiters, keep its liveness key (a dead broker's
        waiters are skipped when values are handed out)."""
        while True:
            await asyncio.sleep(ALIVE_MS / 3000)
            if self._queued:
                with contextlib.suppress(BrokerError):
                    await self._run("sweep", *self._liveness())

    async def sweep(self) -> int:
        """Reclaim what is due (in batches) and refresh the namespace's safety TTLs. Also how
        a broker notices, while idle, that Redis came back or lost the namespace."""
        total = 0
        while True:
            reply = await self._run("sweep", *self._liveness())
            done = int(reply[0]) + int(reply[1])
            total += done
            if int(reply[0]) < _BATCH and int(reply[1]) < _BATCH:
                return total

    @property
    def waiting_reads(self) -> int:
        """Waiting GETs parked on this broker right now (tests)."""
        return self._key_watchers.waiting

    @property
    def waiting_leases(self) -> int:
        """Lease requests of this broker queued in their pool right now (tests, stats)."""
        return self._queued


def _exhausted(pool: str, size: int, wait_ms: int) -> BrokerError:
    waited = f" within wait_ms of {wait_ms} ms" if wait_ms else " (no wait_ms given)"
    return BrokerError(
        "pool_exhausted", f"pool {quote_name(pool)} has no free value below size {size}{waited}"
    )


def _key_bytes(key: str) -> int:
    return len(key) if key.isascii() else len(key.encode("utf-8"))
