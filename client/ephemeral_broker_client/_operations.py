"""Every broker operation, defined once as a plan (see `ephemeral_broker_client._protocol`).

The public methods of `BrokerClient` and `AsyncBrokerClient` are these functions bound to a
client: their docstrings and signatures are the clients' documentation.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
from collections.abc import Callable
from typing import Any, Final, TypeVar

import orjson

# Names appear in error sentences exactly as in the broker's own errors.
from ephemeral_broker.errors import quote_name as show
from ephemeral_broker_client._protocol import (
    Call,
    Malformed,
    Plan,
    Renewal,
    Reply,
    RunFactory,
    Wire,
    default_worker_id,
    encode_json,
    exchange,
    json_object,
    member,
    member_value,
    quote_name,
)
from ephemeral_broker_client.errors import (
    BrokerError,
    KeyNotFound,
    LeaseNotFound,
    PreconditionFailed,
)
from ephemeral_broker_client.models import Item, KeyInfo, LeaseGrant


class _Raise:
    """The default of `get`: raise KeyNotFound instead of returning a default."""

    def __repr__(self) -> str:
        return "<raise KeyNotFound>"


T = TypeVar("T")

RAISE: Final = _Raise()
ONCE_LOCK_SUFFIX: Final = ".once-lock"
DEFAULT_LOCK_TTL_MS: Final = 5000


# ---- answers -------------------------------------------------------------------------------


def _version(reply: Reply) -> int:
    return member(json_object(reply), "version", int)


def _item(reply: Reply) -> Item:
    data = json_object(reply)
    return Item(
        member(data, "key", str),
        member_value(data),
        member(data, "version", int),
        member(data, "expires_at", int),
    )


def _value(reply: Reply) -> Any:
    return member_value(json_object(reply))


def _deleted(reply: Reply) -> bool:
    return member(json_object(reply), "deleted", bool)


def _key_infos(reply: Reply) -> builtins.list[KeyInfo]:
    entries = member(json_object(reply), "keys", builtins.list)
    infos = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise Malformed("an entry of 'keys' is not a JSON object")
        infos.append(
            KeyInfo(
                member(entry, "key", str),
                member(entry, "version", int),
                member(entry, "expires_at", int),
                member(entry, "size", int),
            )
        )
    return infos


def _int_value(reply: Reply) -> int:
    return member(json_object(reply), "value", int)


def _expires_at(reply: Reply) -> int:
    return member(json_object(reply), "expires_at", int)


def _round_trip_ms(reply: Reply) -> float:
    member(json_object(reply), "pong", int)
    return reply.elapsed_s * 1000


def _text(reply: Reply) -> str:
    return reply.content.decode("utf-8")


def _grant(reply: Reply) -> LeaseGrant:
    data = json_object(reply)
    return LeaseGrant(
        member(data, "pool", str),
        member(data, "worker_id", str),
        member(data, "value", int),
        member(data, "token", int),
        member(data, "expires_at", int),
        member(data, "ttl_ms", int),
    )


def _released(reply: Reply) -> bool:
    return member(json_object(reply), "released", bool)


def _released_count(reply: Reply) -> int:
    return member(json_object(reply), "released", int)


# ---- calls ---------------------------------------------------------------------------------


def _key_target(key: str, suffix: str = "") -> str:
    return f"/v1/keys/{quote_name(key)}{suffix}"


def _wait_seconds(wait_ms: object) -> float:
    # Out-of-range or non-integer waits are the broker's to refuse (validation_error).
    return wait_ms / 1000 if isinstance(wait_ms, int) and wait_ms > 0 else 0.0


def _if_match(version: int) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"if-match", f'"{version}"'.encode()),)


def _set_call(
    key: str, body: bytes, *, if_absent: bool = False, if_version: int | None = None
) -> Call[int]:
    if if_absent and if_version is not None:
        raise ValueError("if_absent and if_version exclude each other")
    headers: tuple[tuple[bytes, bytes], ...] = ()
    if if_absent:
        headers = ((b"if-none-match", b"*"),)
    elif if_version is not None:
        headers = _if_match(if_version)
    return Call(
        "PUT",
        _key_target(key),
        _version,
        f"set of key {show(key)}",
        body,
        # A plain set written twice leaves the same state; a conditional one would fail the
        # second time, so it is never re-sent once it may have arrived.
        idempotent=not headers,
        headers=headers,
    )


def _set_body(key: str, value: Any, ttl_ms: int | None) -> bytes:
    payload = {"value": value} if ttl_ms is None else {"value": value, "ttl_ms": ttl_ms}
    return encode_json(payload, f"the value for key {show(key)}")


def _get_call(
    key: str, wait_ms: int | None, parse: Callable[[Reply], T], after_version: int | None = None
) -> Call[T]:
    if wait_ms is None and after_version is None and type(key) is str:
        return _plain_get_call(key, parse)
    return _new_get_call(key, wait_ms, parse, after_version)


@functools.lru_cache(maxsize=4096)
def _plain_get_call(key: str, parse: Callable[[Reply], T]) -> Call[T]:
    # A plain read of a key is the same Call every time (it is immutable); workers read the
    # same few keys over and over, and percent-encoding the name is the dearest part of it.
    return _new_get_call(key, None, parse, None)


def _new_get_call(
    key: str, wait_ms: int | None, parse: Callable[[Reply], T], after_version: int | None
) -> Call[T]:
    target = _key_target(key)
    query = []
    if wait_ms is not None:
        query.append(f"wait_ms={wait_ms}")
    if after_version is not None:
        query.append(f"after_version={after_version}")
    subject = f"get of key {show(key)}"
    if query:
        target += "?" + "&".join(query)
    if after_version is not None:
        subject += f" after version {after_version}"
    return Call("GET", target, parse, subject, wait_s=_wait_seconds(wait_ms))


def _delete_call(key: str, if_version: int | None = None) -> Call[bool]:
    headers = _if_match(if_version) if if_version is not None else ()
    return Call("DELETE", _key_target(key), _deleted, f"delete of key {show(key)}", headers=headers)


def _lookup(wire: Wire, key: str, wait_ms: int | None = None) -> Plan[Item | None]:
    try:
        item: Item = yield from exchange(wire, _get_call(key, wait_ms, _item))
    except KeyNotFound:
        return None
    return item


# ---- keys ----------------------------------------------------------------------------------


def set(
    wire: Wire,
    key: str,
    value: Any,
    ttl_ms: int | None = None,
    *,
    if_absent: bool = False,
    if_version: int | None = None,
) -> Plan[int]:
    """Store `value` (any JSON value) under `key`; return the key's new version.

    `ttl_ms` is required unless the broker runs with `--no-require-ttl`. `if_absent=True`
    creates only (PreconditionFailed if the key exists); `if_version=v` replaces only while the
    key is still at version `v` (compare-and-set; PreconditionFailed otherwise).

    Raises TypeError naming the key, before anything is sent, when the value cannot be
    encoded as JSON (NaN, infinities, non-str dict keys, unsupported types, cycles).
    """
    call = _set_call(key, _set_body(key, value, ttl_ms), if_absent=if_absent, if_version=if_version)
    return (yield from exchange(wire, call))


def get(
    wire: Wire,
    key: str,
    default: Any = RAISE,
    *,
    wait_ms: int | None = None,
    after_version: int | None = None,
) -> Plan[Any]:
    """Return the value stored under `key`.

    A missing or expired key raises KeyNotFound, or returns `default` when one is given.
    With `wait_ms`, wait up to that long for the key to appear (the broker answers as soon as
    it is written); the call may then take up to `wait_ms` plus the client's `timeout`.
    With `after_version=v` (a watch), wait for a version newer than `v`: when none came within
    `wait_ms` (or at once, without `wait_ms`), NotModified is raised, with the key's current
    `version`; `default` stands in only for a missing key.
    """
    try:
        return (yield from exchange(wire, _get_call(key, wait_ms, _value, after_version)))
    except KeyNotFound:
        if default is RAISE:
            raise
        return default


def get_item(
    wire: Wire, key: str, *, wait_ms: int | None = None, after_version: int | None = None
) -> Plan[Item]:
    """Return the value stored under `key` with its version and expiry, as an `Item`.

    Use the version for a compare-and-set: `set(key, new, ttl, if_version=item.version)`.
    Raises KeyNotFound when the key is missing (after `wait_ms`, when given). With
    `after_version=v`, wait for a version newer than `v` (NotModified when none came): to
    follow a key, loop with the last item's `version`.
    """
    return (yield from exchange(wire, _get_call(key, wait_ms, _item, after_version)))


def delete(wire: Wire, key: str) -> Plan[bool]:
    """Delete `key`; True if it existed, False if it did not (deleting is idempotent)."""
    return (yield from exchange(wire, _delete_call(key)))


def list(wire: Wire, prefix: str = "", *, limit: int = 1000) -> Plan[builtins.list[KeyInfo]]:
    """Return the live keys starting with `prefix`, sorted, at most `limit` of them (the
    broker allows up to 10000), as `KeyInfo` records; values are never listed."""
    target = (
        f"/v1/keys?prefix={quote_name(prefix)}&limit={limit}"
        if prefix
        else (f"/v1/keys?limit={limit}")
    )
    subject = f"list of keys with prefix {show(prefix)}" if prefix else "list of keys"
    return (yield from exchange(wire, Call("GET", target, _key_infos, subject)))


def incr(wire: Wire, key: str, by: int = 1, ttl_ms: int | None = None) -> Plan[int]:
    """Add `by` to the integer under `key` atomically and return the new value.

    An absent key counts as 0 and is created with `ttl_ms` (required then, while the broker
    requires TTLs); on an existing key `ttl_ms` restarts its TTL. A value that is not an
    integer raises InvalidRequest (code `not_an_integer`). Never retried once it may have
    reached the broker: an increment applied twice would be wrong.
    """
    payload: dict[str, Any] = {"by": by} if ttl_ms is None else {"by": by, "ttl_ms": ttl_ms}
    call = Call(
        "POST",
        _key_target(key, "/incr"),
        _int_value,
        f"incr of key {show(key)}",
        encode_json(payload, f"the incr of key {show(key)}"),
        idempotent=False,
    )
    return (yield from exchange(wire, call))


def touch(wire: Wire, key: str, ttl_ms: int) -> Plan[int]:
    """Restart the TTL of `key` (value and version stay); return its new `expires_at`
    (Unix epoch ms). Raises KeyNotFound when the key is missing."""
    body = encode_json({"ttl_ms": ttl_ms}, f"the touch of key {show(key)}")
    call = Call("POST", _key_target(key, "/touch"), _expires_at, f"touch of key {show(key)}", body)
    return (yield from exchange(wire, call))


# ---- system --------------------------------------------------------------------------------


def ping(wire: Wire) -> Plan[float]:
    """Return the round-trip time of one request to the broker, in milliseconds."""
    return (yield from exchange(wire, Call("GET", "/v1/ping", _round_trip_ms, "ping")))


def health(wire: Wire) -> Plan[dict[str, Any]]:
    """Return the broker's health report (status, capacity, memory, connections)."""
    return (yield from exchange(wire, Call("GET", "/v1/health", json_object, "health")))


def stats(wire: Wire) -> Plan[dict[str, Any]]:
    """Return the broker's counters (items, leases, pools, bytes, uptime, requests)."""
    return (yield from exchange(wire, Call("GET", "/v1/stats", json_object, "stats")))


def metrics(wire: Wire) -> Plan[str]:
    """Return the broker's Prometheus metrics in the text exposition format."""
    return (yield from exchange(wire, Call("GET", "/metrics", _text, "metrics")))


# ---- leases --------------------------------------------------------------------------------


def _lease_target(pool: str, worker_id: str, suffix: str = "") -> str:
    return f"/v1/leases/{quote_name(pool)}/{quote_name(worker_id)}{suffix}"


def acquire(
    wire: Wire,
    pool: str,
    worker_id: str | None,
    ttl_ms: int | None,
    size: int | None,
    wait_ms: int | None,
) -> Plan[LeaseGrant]:
    """Lease the lowest free integer in `pool` for `worker_id` and return the `Lease`.

    `worker_id` defaults to `$PYTEST_XDIST_WORKER`, else `<hostname>:<pid>`. A worker that
    already holds a lease in the pool gets the same one back, renewed. `ttl_ms` defaults to
    the broker's lease_ttl; with `size` the value stays below it, waiting up to `wait_ms` for
    one to be released before PoolExhausted. With `keepalive=True` the lease is renewed in
    the background every third of its TTL until released; the `Lease` is a context manager
    that releases it on exit.
    """
    worker = worker_id if worker_id is not None else default_worker_id()
    payload: dict[str, Any] = {"worker_id": worker}
    for name, given in (("ttl_ms", ttl_ms), ("size", size), ("wait_ms", wait_ms)):
        if given is not None:
            payload[name] = given
    call = Call(
        "POST",
        f"/v1/leases/{quote_name(pool)}",
        _grant,
        f"lease in pool {show(pool)} for worker {show(worker)}",
        encode_json(payload, f"the lease request for pool {show(pool)}"),
        # Asking again for the same worker returns the lease it already holds.
        idempotent=True,
        wait_s=_wait_seconds(wait_ms),
    )
    return (yield from exchange(wire, call))


def renew(wire: Wire, pool: str, worker_id: str, ttl_ms: int | None = None) -> Plan[LeaseGrant]:
    """Restart the TTL of the lease `worker_id` holds in `pool` (`ttl_ms`, default the
    broker's lease_ttl); value and token stay. Return the renewed `LeaseGrant`.

    For a lease this client does not hold as a `Lease` object (another process took it, as
    the command line's `lease` and `renew` do); a held `Lease` has `renew()`. Raises
    LeaseNotFound when the worker holds no lease there (it expired or was released).
    """
    body = (
        b"{}"
        if ttl_ms is None
        else (encode_json({"ttl_ms": ttl_ms}, f"the lease renewal for pool {show(pool)}"))
    )
    call = Call(
        "POST",
        _lease_target(pool, worker_id, "/renew"),
        _grant,
        f"renewal of the lease in pool {show(pool)} for worker {show(worker_id)}",
        body,
    )
    return (yield from exchange(wire, call))


def release(
    wire: Wire, pool: str, worker_id: str | None = None, *, token: int | None = None
) -> Plan[bool]:
    """Release the lease `worker_id` holds in `pool`; True if it held one.

    `worker_id` defaults to `$PYTEST_XDIST_WORKER`, else `<hostname>:<pid>`. With `token`,
    release only if the lease still carries that fencing token (PreconditionFailed if not).
    """
    worker = worker_id if worker_id is not None else default_worker_id()
    target = _lease_target(pool, worker)
    if token is not None:
        target += f"?token={token}"
    call = Call(
        "DELETE",
        target,
        _released,
        f"release of the lease in pool {show(pool)} for worker {show(worker)}",
    )
    return (yield from exchange(wire, call))


def release_all(wire: Wire, worker_id: str | None = None) -> Plan[int]:
    """Release every lease `worker_id` holds, in all pools; return how many it held.

    `worker_id` defaults to `$PYTEST_XDIST_WORKER`, else `<hostname>:<pid>`.
    """
    worker = worker_id if worker_id is not None else default_worker_id()
    call = Call(
        "DELETE",
        f"/v1/leases?worker_id={quote_name(worker)}",
        _released_count,
        f"release of all leases of worker {show(worker)}",
    )
    return (yield from exchange(wire, call))


class LeaseRenewal(Renewal):
    """Keeps a lease alive; a lease the broker no longer holds is reported as lost."""

    lost_errors = (LeaseNotFound,)

    def __init__(self, wire: Wire, grant: LeaseGrant) -> None:
        # A third of the TTL: two renewals can fail before the lease lapses.
        super().__init__(grant.ttl_ms / 3000, f"lease {grant.value} in pool {show(grant.pool)}")
        self.wire = wire
        self.grant = grant

    def renew(self) -> Plan[None]:
        yield from self.renew_now(None)

    def renew_now(self, ttl_ms: int | None) -> Plan[None]:
        """Renew for `ttl_ms` (default: the lease's TTL); LeaseNotFound marks it lost."""
        grant = self.grant
        ttl = grant.ttl_ms if ttl_ms is None else ttl_ms
        try:
            self.grant = yield from renew(self.wire, grant.pool, grant.worker_id, ttl)
        except LeaseNotFound as exc:
            self.lost = exc
            raise
        self.interval_s = self.grant.ttl_ms / 3000


def release_lease(renewal: LeaseRenewal) -> Plan[bool]:
    """Release the lease of `renewal`, and only that grant of it (by its fencing token)."""
    grant = renewal.grant
    try:
        return (yield from release(renewal.wire, grant.pool, grant.worker_id, token=grant.token))
    except PreconditionFailed:
        # The worker holds a newer grant in this pool (another token): not this lease's to end.
        return False


# ---- once ----------------------------------------------------------------------------------


class LockRenewal(Renewal):
    """Keeps a `once` lock alive with compare-and-set, so a lock that lapsed and was taken
    over by another caller is noticed instead of being extended on the other's behalf."""

    lost_errors = (PreconditionFailed, KeyNotFound)

    def __init__(self, wire: Wire, lock: str, ttl_ms: int, version: int) -> None:
        super().__init__(ttl_ms / 3000, f"the once lock {show(lock)}")
        self.wire = wire
        self.lock = lock
        self.body = _set_body(lock, default_worker_id(), ttl_ms)
        self.version = version

    def renew(self) -> Plan[None]:
        call = _set_call(self.lock, self.body, if_version=self.version)
        self.version = yield from exchange(self.wire, call)


def once_lock_key(key: str) -> str:
    return key + ONCE_LOCK_SUFFIX


def once(
    wire: Wire, key: str, factory: Any, ttl_ms: int, lock_ttl_ms: int = DEFAULT_LOCK_TTL_MS
) -> Plan[Any]:
    """Across all processes, exactly one caller runs `factory()`; every caller returns its
    result, which is kept under `key` for `ttl_ms`.

    The first caller creates the lock key `<key>.once-lock` (create-only, `lock_ttl_ms`) and
    renews it every third of that while the factory runs; the others wait for `key` with a
    waiting read. When the winner dies, its lock lapses after at most `lock_ttl_ms` and the
    next caller takes the turn. When the factory raises, the lock is released at once and
    the exception propagates; a waiting caller then runs the factory itself. The result must
    be JSON (TypeError naming the key otherwise); every caller, the winner included, gets it
    as decoded from JSON (a tuple comes back as a list).
    """
    for name, given in (("ttl_ms", ttl_ms), ("lock_ttl_ms", lock_ttl_ms)):
        # Checked before the factory runs: a result that could not be stored would be lost.
        if isinstance(given, bool) or not isinstance(given, int) or given <= 0:
            raise ValueError(f"{name} of once({show(key)}) must be a positive int, not {given!r}")
    lock = once_lock_key(key)
    item = yield from _lookup(wire, key)
    while item is None:
        try:
            version = yield from exchange(
                wire,
                _set_call(lock, _set_body(lock, default_worker_id(), lock_ttl_ms), if_absent=True),
            )
        except PreconditionFailed:
            # Another caller has the turn: wait for its result. A 404 after the wait means
            # its lock may have lapsed (it died), so try to take the turn again.
            item = yield from _lookup(wire, key, wait_ms=lock_ttl_ms)
            continue
        return (
            yield from _take_turn(
                wire, key, factory, ttl_ms, LockRenewal(wire, lock, lock_ttl_ms, version)
            )
        )
    return item.value


def _take_turn(wire: Wire, key: str, factory: Any, ttl_ms: int, renewal: LockRenewal) -> Plan[Any]:
    try:
        # A previous winner may have stored the result and released the lock between our
        # first read and our lock: then there is nothing left to do.
        item = yield from _lookup(wire, key)
        if item is not None:
            result = item.value
        else:
            value = yield RunFactory(factory, renewal)
            body = _set_body(key, value, ttl_ms)
            try:
                yield from exchange(wire, _set_call(key, body, if_absent=True))
                result = orjson.loads(body)["value"]
            except PreconditionFailed:
                # Our lock lapsed while the factory ran and another caller stored first:
                # every caller must return the same result, so it is theirs.
                result = yield from get(wire, key)
    except Exception:
        yield from _release_lock(wire, renewal)
        raise
    yield from _release_lock(wire, renewal)
    return result


def _release_lock(wire: Wire, renewal: LockRenewal) -> Plan[None]:
    # A lock we no longer hold, or a broker gone: the lock lapses after its TTL anyway.
    with contextlib.suppress(BrokerError):
        yield from exchange(wire, _delete_call(renewal.lock, if_version=renewal.version))
