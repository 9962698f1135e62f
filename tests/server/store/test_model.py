"""The memory store against a model a reader can check by eye: random sequences of set, get,
delete, incr, touch, list, acquire, renew, release and release-all, on a fake clock that moves
between steps, with every observable compared after every step (hypothesis stateful testing).

The model is deliberately naive: a dict of keys with (value, version, expires_at, ttl), a dict
of leases, the lowest free value found by counting up, expiry by comparing with the clock.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ephemeral_broker.clock import FakeClock
from ephemeral_broker.errors import BrokerError
from ephemeral_broker.store.base import NO_PRECONDITION, Precondition
from ephemeral_broker.store.memory import MemoryStore
from ephemeral_broker.store.redis import RedisStore
from tests.support.redis_server import fresh_namespace
from tests.support.store import limits

KEYS = st.sampled_from(["a", "ab", "b", "ba", "c"])
POOLS = st.sampled_from(["p", "q"])
WORKERS = st.sampled_from(["w1", "w2", "w3", "w4"])
TTLS = st.integers(min_value=1, max_value=5_000)
VALUES = st.one_of(
    st.integers(min_value=-1000, max_value=1000),
    st.text(max_size=5),
    st.lists(st.integers(max_value=9, min_value=0), max_size=3),
    st.none(),
)
MAX_ITEMS = 4
MAX_LEASES = 5
MODEL_LIMITS = limits(max_items=MAX_ITEMS, max_leases=MAX_LEASES, compression_threshold=8)


@dataclass
class ModelKey:
    value: Any
    version: int
    expires_at: int
    ttl: int


@dataclass
class ModelLease:
    value: int
    token: int
    expires_at: int


class StoreAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.store: MemoryStore | RedisStore = MemoryStore(MODEL_LIMITS, self.clock)
        self.keys: dict[str, ModelKey] = {}
        self.leases: dict[tuple[str, str], ModelLease] = {}
        # The last version and token handed out (a Redis namespace starts its counters high).
        self.version = 0
        self.token = 0

    def teardown(self) -> None:
        if isinstance(self.store, RedisStore):
            self.run(self.store.close())
        self.loop.close()

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def attempt(self, coroutine: Any) -> tuple[Any, str | None]:
        try:
            return self.run(coroutine), None
        except BrokerError as exc:
            return None, exc.code

    # ---- the model's view of time --------------------------------------------------------

    @property
    def now(self) -> int:
        return self.clock.now_ms()

    def expire(self) -> None:
        self.keys = {k: v for k, v in self.keys.items() if v.expires_at > self.now}
        self.leases = {k: v for k, v in self.leases.items() if v.expires_at > self.now}

    @initialize()
    def start(self) -> None:
        self.expire()

    @rule(ms=st.integers(min_value=0, max_value=3_000))
    def time_passes(self, ms: int) -> None:
        self.clock.advance(ms)
        self.expire()

    # ---- keys ----------------------------------------------------------------------------

    @rule(key=KEYS, value=VALUES, ttl=TTLS, mode=st.sampled_from(["plain", "absent", "match"]))
    def set(self, key: str, value: Any, ttl: int, mode: str) -> None:
        existing = self.keys.get(key)
        condition = NO_PRECONDITION
        if mode == "absent":
            condition = Precondition(if_none_match="*")
        elif mode == "match":
            version = existing.version if existing else self.version + 1
            condition = Precondition(if_match=frozenset({version}))
        result, error = self.attempt(self.store.set(key, orjson.dumps(value), ttl, condition))
        if (mode == "absent" and existing) or (mode == "match" and not existing):
            assert error == "precondition_failed"
            return
        if existing is None and len(self.keys) >= MAX_ITEMS:
            assert error == "max_items"
            return
        assert error is None
        self.version += 1
        assert result.created == (existing is None)
        assert result.meta.version == self.version
        assert result.meta.expires_at == self.now + ttl
        self.keys[key] = ModelKey(value, self.version, self.now + ttl, ttl)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        item = self.run(self.store.get(key))
        expected = self.keys.get(key)
        if expected is None:
            assert item is None
        else:
            assert item is not None
            assert orjson.loads(item.value) == expected.value
            assert (item.version, item.expires_at) == (expected.version, expected.expires_at)

    @rule(key=KEYS, conditional=st.booleans())
    def delete(self, key: str, conditional: bool) -> None:
        existing = self.keys.get(key)
        condition = NO_PRECONDITION
        if conditional:
            condition = Precondition(if_match=frozenset({existing.version if existing else 1}))
        deleted, error = self.attempt(self.store.delete(key, condition))
        if conditional and existing is None:
            assert error == "precondition_failed"
            return
        assert error is None
        assert deleted == (existing is not None)
        self.keys.pop(key, None)

    @rule(key=KEYS, by=st.integers(min_value=-5, max_value=5), ttl=st.none() | TTLS)
    def incr(self, key: str, by: int, ttl: int | None) -> None:
        existing = self.keys.get(key)
        item, error = self.attempt(self.store.incr(key, by, ttl))
        if existing is None:
            if ttl is None:
                assert error == "ttl_required"
                return
            if len(self.keys) >= MAX_ITEMS:
                assert error == "max_items"
                return
        elif type(existing.value) is not int:
            assert error == "not_an_integer"
            return
        assert error is None
        self.version += 1
        current = existing.value if existing else 0
        if existing is not None and ttl is None:
            expires_at, kept_ttl = existing.expires_at, existing.ttl
        else:
            assert ttl is not None
            expires_at, kept_ttl = self.now + ttl, ttl
        self.keys[key] = ModelKey(current + by, self.version, expires_at, kept_ttl)
        assert orjson.loads(item.value) == current + by
        assert (item.version, item.expires_at) == (self.version, expires_at)

    @rule(key=KEYS, ttl=TTLS)
    def touch(self, key: str, ttl: int) -> None:
        existing = self.keys.get(key)
        meta, error = self.attempt(self.store.touch(key, ttl))
        if existing is None:
            assert error == "not_found"
            return
        assert error is None
        existing.expires_at, existing.ttl = self.now + ttl, ttl
        assert (meta.version, meta.expires_at) == (existing.version, existing.expires_at)

    @rule(prefix=st.sampled_from(["", "a", "b", "c", "z"]), limit=st.integers(1, 6))
    def list(self, prefix: str, limit: int) -> None:
        listed = self.run(self.store.list(prefix, limit))
        expected = sorted(k for k in self.keys if k.startswith(prefix))[:limit]
        assert [info.key for info in listed] == expected
        for info in listed:
            assert info.version == self.keys[info.key].version
            assert info.size == len(orjson.dumps(self.keys[info.key].value))

    # ---- leases --------------------------------------------------------------------------

    def lowest_free(self, pool: str) -> int:
        held = {lease.value for (p, _), lease in self.leases.items() if p == pool}
        value = 0
        while value in held:
            value += 1
        return value

    @rule(pool=POOLS, worker=WORKERS, ttl=TTLS, size=st.none() | st.integers(1, 3))
    def acquire(self, pool: str, worker: str, ttl: int, size: int | None) -> None:
        held = self.leases.get((pool, worker))
        grant, error = self.attempt(self.store.acquire_lease(pool, worker, ttl, size))
        if held is not None:
            assert error is None
            assert not grant.created
            assert (grant.value, grant.token) == (held.value, held.token)
            held.expires_at = self.now + ttl
            assert grant.expires_at == held.expires_at
            return
        value = self.lowest_free(pool)
        if size is not None and value >= size:
            assert error == "pool_exhausted"
            return
        if len(self.leases) >= MAX_LEASES:
            assert error == "max_leases"
            return
        assert error is None
        self.token += 1
        assert grant.created
        assert (grant.value, grant.token, grant.expires_at) == (value, self.token, self.now + ttl)
        self.leases[(pool, worker)] = ModelLease(value, self.token, self.now + ttl)

    @rule(pool=POOLS, worker=WORKERS, ttl=TTLS)
    def renew(self, pool: str, worker: str, ttl: int) -> None:
        held = self.leases.get((pool, worker))
        grant, error = self.attempt(self.store.renew_lease(pool, worker, ttl))
        if held is None:
            assert error == "lease_not_found"
            return
        assert error is None
        held.expires_at = self.now + ttl
        assert (grant.value, grant.token, grant.expires_at) == (
            held.value,
            held.token,
            held.expires_at,
        )

    @rule(pool=POOLS, worker=WORKERS, with_token=st.sampled_from([None, "right", "wrong"]))
    def release(self, pool: str, worker: str, with_token: str | None) -> None:
        held = self.leases.get((pool, worker))
        token = None
        if with_token is not None:
            token = (held.token if held else 1) + (0 if with_token == "right" else 10_000)
        released, error = self.attempt(self.store.release_lease(pool, worker, token))
        if token is not None and (held is None or token != held.token):
            # A token names one lease: releasing by it when that lease is not held is refused.
            assert error == "precondition_failed"
            return
        assert error is None
        assert released == (held is not None)
        self.leases.pop((pool, worker), None)

    @precondition(lambda self: bool(self.leases))
    @rule(worker=WORKERS)
    def release_all(self, worker: str) -> None:
        count = self.run(self.store.release_worker(worker))
        mine = [key for key in self.leases if key[1] == worker]
        assert count == len(mine)
        for key in mine:
            del self.leases[key]

    @rule()
    def sweep(self) -> None:
        self.run(self.store.sweep())

    # ---- after every step ----------------------------------------------------------------

    @invariant()
    def pools_and_counts_agree(self) -> None:
        pools = self.run(self.store.list_pools())
        seen = {
            (pool.pool, lease.worker_id): (lease.value, lease.token, lease.expires_at)
            for pool in pools
            for lease in pool.leases
        }
        expected = {k: (v.value, v.token, v.expires_at) for k, v in self.leases.items()}
        assert seen == expected
        for pool in pools:
            values = [lease.value for lease in pool.leases]
            assert values == sorted(values) and len(set(values)) == len(values)
        assert [pool.pool for pool in pools] == sorted(pool.pool for pool in pools)
        stats = self.run(self.store.stats())
        assert (stats.items, stats.leases) == (len(self.keys), len(self.leases))


class RedisStoreAgainstModel(StoreAgainstModel):
    """The same machine over a Redis store on the worker's redis-server."""

    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.store = RedisStore(MODEL_LIMITS, self.url, fresh_namespace(), self.clock)
        self.run(self.store.start())
        # Learn where the namespace's counters start: one throwaway write and lease, which
        # are gone again before the first rule runs.
        probe = self.run(self.store.set("probe", b"0", 1))
        grant = self.run(self.store.acquire_lease("probe", "probe", 1))
        self.version, self.token = probe.meta.version, grant.token
        self.clock.advance(1)
        self.run(self.store.sweep())


def test_redis_store_against_the_model(redis_url: str) -> None:
    RedisStoreAgainstModel.url = redis_url
    run_state_machine_as_test(
        RedisStoreAgainstModel,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            derandomize=True,
        ),
    )


TestStoreAgainstModel = StoreAgainstModel.TestCase
TestStoreAgainstModel.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
