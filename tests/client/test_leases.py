"""Leases, keepalive and waiting reads through both clients, against a real broker; and the
error classes only leases and waits can trigger (PoolExhausted, LeaseNotFound, StoreFull for
leases, BrokerUnavailable for a broker that starts draining)."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ephemeral_broker_client import (
    BrokerClient,
    BrokerError,
    BrokerUnavailable,
    InvalidRequest,
    KeyNotFound,
    LeaseNotFound,
    NotModified,
    PoolExhausted,
    PreconditionFailed,
    StoreFull,
)
from ephemeral_broker_client import _operations as operations
from tests.support.brokers import BrokerFactory, BrokerProcess, uds_client
from tests.support.clients import KINDS, Clients, each_kind
from tests.support.raw_server import RawServer, http_answer
from tests.support.waiting import wait_until

TTL = 60_000


def holders(broker: BrokerProcess, pool: str) -> list[dict[str, Any]]:
    """The pool's live leases, read over plain HTTP (not through the client under test)."""
    with uds_client(broker.socket) as http:
        leases: list[dict[str, Any]] = http.get(f"/v1/leases/{pool}").json()["leases"]
    return leases


def test_lease_hands_out_the_lowest_free_value(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket)
    pool = ns + "slots"
    first = b.lease(pool, "w0", ttl_ms=TTL)
    second = b.lease(pool, "w1", ttl_ms=TTL)
    assert (first.value, second.value) == (0, 1)
    assert (first.pool, first.worker_id, first.ttl_ms) == (pool, "w0", TTL)
    assert second.token > first.token
    assert first.expires_at > time.time() * 1000
    assert first.lost is None
    again = b.lease(pool, "w0", ttl_ms=TTL)  # the same worker gets its lease back
    assert (again.value, again.token) == (first.value, first.token)
    assert first.release() is True
    assert first.release() is False
    assert b.lease(pool, "w2", ttl_ms=TTL).value == 0  # released values are reused
    assert "held" in repr(second) and "released" in repr(first)


def test_worker_id_defaults_to_the_xdist_worker(
    shared_broker: BrokerProcess, clients: Clients, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw7")
    b = clients.open(shared_broker.socket)
    assert b.lease(ns + "p", ttl_ms=TTL).worker_id == "gw7"
    assert b.release(ns + "p") is True
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert b.lease(ns + "p", ttl_ms=TTL).worker_id.endswith(f":{os.getpid()}")


def test_renew_and_lease_not_found(shared_broker: BrokerProcess, clients: Clients, ns: str) -> None:
    b = clients.open(shared_broker.socket)
    lease = b.lease(ns + "p", "w", ttl_ms=TTL)
    before = lease.expires_at
    lease.renew(2 * TTL)
    assert lease.expires_at > before
    assert lease.ttl_ms == 2 * TTL
    assert b.release(ns + "p", "w") is True
    with pytest.raises(LeaseNotFound) as caught:
        lease.renew()
    assert (caught.value.code, caught.value.status) == ("lease_not_found", 404)
    assert f"'{ns}p'" in caught.value.detail


def test_context_manager_releases_on_exit(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket)
    with b.lease(ns + "p", "w", ttl_ms=TTL) as lease:
        assert [h["worker_id"] for h in holders(shared_broker, ns + "p")] == ["w"]
        assert lease.value == 0
    assert holders(shared_broker, ns + "p") == []
    with pytest.raises(RuntimeError), b.lease(ns + "p", "w", ttl_ms=TTL):
        raise RuntimeError("the body failed")
    assert holders(shared_broker, ns + "p") == []  # released on the way out of an error too


def test_a_failed_release_does_not_hide_the_error_of_the_block(
    short_tmp: Path, clients: Clients
) -> None:
    grant = b'{"pool":"p","worker_id":"w","value":0,"token":1,"expires_at":1,"ttl_ms":60000}'

    def respond(request: bytes) -> bytes | None:
        # The lease is granted; then the broker goes away (connections close unanswered).
        return http_answer(201, grant) if request.startswith(b"POST /v1/leases/p ") else None

    server = RawServer(short_tmp / "flaky.sock", respond)
    try:
        b = clients.open(server.path, timeout=0.3)
        with pytest.raises(ValueError, match="the body's own error"), b.lease("p", "w"):
            raise ValueError("the body's own error")
        assert any(r.startswith(b"DELETE /v1/leases/p/w?token=1 ") for r in server.requests)
    finally:
        server.close()


def test_release_is_fenced_by_token(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket)
    old = b.lease(ns + "p", "w", ttl_ms=TTL)
    b.release(ns + "p", "w")
    new = b.lease(ns + "p", "w", ttl_ms=TTL)  # a new grant for the same worker
    with pytest.raises(PreconditionFailed):
        b.release(ns + "p", "w", token=old.token)
    assert old.release() is False  # the stale Lease leaves the new grant alone
    assert holders(shared_broker, ns + "p")[0]["token"] == new.token
    b.lease(ns + "q", "w", ttl_ms=TTL)
    assert b.release_all("w") == 2
    assert b.release_all("w") == 0


def test_pool_exhausted_now_and_after_waiting(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket)
    b.lease(ns + "one", "holder", ttl_ms=TTL, size=1)
    with pytest.raises(PoolExhausted) as caught:
        b.lease(ns + "one", "other", ttl_ms=TTL, size=1)
    assert (caught.value.code, caught.value.status) == ("pool_exhausted", 409)
    started = time.monotonic()
    with pytest.raises(PoolExhausted):
        b.lease(ns + "one", "other", ttl_ms=TTL, size=1, wait_ms=300)
    assert time.monotonic() - started >= 0.25


def test_a_lease_wait_is_served_when_a_value_is_released(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket, timeout=2)
    with BrokerClient(shared_broker.socket) as other:
        other.lease(ns + "one", "holder", ttl_ms=TTL, size=1)
        releaser = threading.Timer(0.3, other.release, (ns + "one", "holder"))
        releaser.start()
        # The wait (10 s) is far longer than the client's timeout (2 s): the budget grows by it.
        lease = b.lease(ns + "one", "waiter", ttl_ms=TTL, size=1, wait_ms=10_000)
        releaser.join()
    assert lease.value == 0


def test_keepalive_holds_a_300ms_lease_for_2s(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket)
    with b.lease(ns + "kept", "w", ttl_ms=300, keepalive=True) as lease:
        clients.pause(2.0)
        listed = clients.blocking(lambda: holders(shared_broker, ns + "kept"))
        assert [h["token"] for h in listed] == [lease.token]
        assert lease.lost is None
        assert lease.expires_at > time.time() * 1000  # renewals were recorded
    assert holders(shared_broker, ns + "kept") == []


def test_without_keepalive_the_300ms_lease_is_gone_after_2s(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket)
    lease = b.lease(ns + "lapsed", "w", ttl_ms=300)
    clients.pause(2.0)
    assert holders(shared_broker, ns + "lapsed") == []
    with pytest.raises(LeaseNotFound):
        lease.renew()


def test_keepalive_reports_a_lost_lease_instead_of_reacquiring(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket)
    with (
        pytest.raises(LeaseNotFound) as caught,
        b.lease(ns + "p", "w", ttl_ms=300, keepalive=True) as lease,
    ):
        b.release(ns + "p", "w")  # someone ends it behind the keepalive's back
        deadline = time.monotonic() + 5
        while lease.lost is None and time.monotonic() < deadline:
            clients.pause(0.05)
        assert isinstance(lease.lost, LeaseNotFound)
        clients.pause(0.5)
        assert holders(shared_broker, ns + "p") == []  # not re-acquired
        with pytest.raises(LeaseNotFound):
            lease.raise_if_lost()
    assert caught.value is lease.lost  # and leaving the block reports it


def test_an_unexpected_failure_stops_keepalive_and_is_reported(
    shared_broker: BrokerProcess, clients: Clients, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = clients.open(shared_broker.socket)
    lease = b.lease(ns + "p", "w", ttl_ms=300, keepalive=True)

    def broken(*args: object) -> object:
        raise ZeroDivisionError("a bug in the renewal")

    monkeypatch.setattr(operations, "renew", broken)
    deadline = time.monotonic() + 5
    while lease.lost is None and time.monotonic() < deadline:
        clients.pause(0.05)
    assert lease.lost is not None
    assert lease.lost.code == "internal_error"
    assert "ZeroDivisionError" in lease.lost.detail


def test_closing_the_client_stops_keepalive(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket)
    b.lease(ns + "p", "w", ttl_ms=300, keepalive=True)
    b.close()
    clients.pause(1.0)
    assert holders(shared_broker, ns + "p") == []  # no renewal after close


def test_store_full_for_leases(start_broker: BrokerFactory) -> None:
    broker = start_broker("--max-leases", "1")
    with each_kind() as kinds:
        for clients_of_kind in kinds:
            b = clients_of_kind.open(broker.socket)
            lease = b.lease("a", "w", ttl_ms=TTL)
            with pytest.raises(StoreFull) as caught:
                b.lease("b", "w", ttl_ms=TTL)
            assert (caught.value.code, caught.value.status) == ("max_leases", 507)
            assert lease.release()


# ---- waiting reads -------------------------------------------------------------------------


def test_a_waiting_get_returns_as_soon_as_the_key_is_written(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket, timeout=2)
    with BrokerClient(shared_broker.socket) as writer:
        publish = threading.Timer(0.3, writer.set, (ns + "token", "abc", TTL))
        publish.start()
        started = time.monotonic()
        assert b.get(ns + "token", wait_ms=20_000) == "abc"
        waited = time.monotonic() - started
        publish.join()
    assert 0.2 < waited < 10  # woken by the write, not by the end of the wait
    assert b.get_item(ns + "token", wait_ms=1000).value == "abc"  # present: at once


def test_a_waiting_get_of_a_key_that_never_comes(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    # The wait (1 s) is longer than the client's timeout (0.5 s): not a BrokerTimeout.
    b = clients.open(shared_broker.socket, timeout=0.5)
    with pytest.raises(KeyNotFound, match="wait_ms"):
        b.get(ns + "never", wait_ms=1000)
    assert b.get(ns + "never", "fallback", wait_ms=100) == "fallback"


def test_a_watch_returns_a_newer_version_or_raises_not_modified(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket, timeout=2)
    key = ns + "cfg"
    v1 = b.set(key, "one", TTL)
    assert b.get(key, after_version=v1 - 1) == "one"  # already newer: at once
    # No wait_ms: a conditional read, answered at once.
    with pytest.raises(NotModified) as caught:
        b.get(key, "default is for a missing key only", after_version=v1)
    error = caught.value
    assert (error.code, error.status, error.version) == ("not_modified", 304, v1)
    assert error.detail == (
        f"get of key '{key}' after version {v1}: no newer version came (the key is at version {v1})"
    )
    assert isinstance(error, BrokerError) and error.request_id
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (type(copy), copy.version, copy.detail) == (NotModified, v1, error.detail)
    # With wait_ms: woken by the next write, with the new version.
    with BrokerClient(shared_broker.socket) as writer:
        publish = threading.Timer(0.3, writer.set, (key, "two", TTL))
        publish.start()
        started = time.monotonic()
        item = b.get_item(key, wait_ms=20_000, after_version=v1)
        waited = time.monotonic() - started
        publish.join()
    assert (item.value, item.version > v1) == ("two", True)
    assert 0.2 < waited < 10
    # Nothing newer within the wait (longer than the client's timeout: not a BrokerTimeout).
    with pytest.raises(NotModified) as caught:
        b.get_item(key, wait_ms=200, after_version=item.version)
    assert caught.value.version == item.version
    # A missing key is still KeyNotFound (or the default), and a bad version the broker's 422.
    assert b.get(ns + "absent", None, wait_ms=50, after_version=3) is None
    with pytest.raises(InvalidRequest) as refused:
        b.get(key, after_version=-1)
    assert refused.value.code == "validation_error"


def test_a_draining_broker_is_unavailable(start_broker: BrokerFactory) -> None:
    broker = start_broker()
    outcomes: dict[str, BaseException] = {}

    def wait_forever(clients_of_kind: Clients) -> None:
        b = clients_of_kind.open(broker.socket, timeout=5)
        try:
            b.get("never", wait_ms=60_000)
        except BrokerUnavailable as exc:
            outcomes[clients_of_kind.name] = exc

    with each_kind() as kinds:
        waiters = [threading.Thread(target=wait_forever, args=(k,)) for k in kinds]
        for waiter in waiters:
            waiter.start()
        # Every kind's wait, and the scrape that counts them.
        waits = len(KINDS) + 1
        wait_until(lambda: _in_flight(broker) >= waits, 30, "every wait to begin")
        os.kill(broker.pid, signal.SIGTERM)
        for waiter in waiters:
            waiter.join(timeout=60)
    assert broker.proc.wait(timeout=30) == 0
    assert set(outcomes) == set(KINDS)
    for error in outcomes.values():
        assert isinstance(error, BrokerUnavailable)
        assert (error.code, error.status) == ("draining", 503)


def _in_flight(broker: BrokerProcess) -> float:
    """Requests the broker is serving, this scrape included."""
    with uds_client(broker.socket) as http:
        text = http.get("/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("ephemeral_broker_requests_in_flight"))
    return float(line.split()[-1])
