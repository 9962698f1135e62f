"""Keys and system methods of both clients against a real broker on a real socket, and the
error classes the key operations raise, each from its real trigger."""

from __future__ import annotations

import inspect
import os
import pickle
import signal
import socket
import time
from pathlib import Path

import pytest

from ephemeral_broker_client import (
    AsyncBrokerClient,
    BrokerClient,
    BrokerError,
    BrokerTimeout,
    BrokerUnavailable,
    InvalidRequest,
    Item,
    KeyInfo,
    KeyNotFound,
    PreconditionFailed,
    StoreFull,
    TooLarge,
)
from tests.support.brokers import BrokerFactory, BrokerProcess
from tests.support.clients import Clients, each_kind

TTL = 60_000


def test_set_get_get_item_and_versions(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket)
    key = ns + "cfg"
    v1 = b.set(key, {"token": "s3cr3t", "n": [1, 2.5, None, True]}, ttl_ms=TTL)
    assert b.get(key) == {"token": "s3cr3t", "n": [1, 2.5, None, True]}
    v2 = b.set(key, "replaced", TTL)
    assert v2 > v1
    item = b.get_item(key)
    assert item == Item(key, "replaced", v2, item.expires_at)
    assert item.expires_at > time.time() * 1000
    values: list[object] = ["", 0, -7, 1.5, None, False, [], {}, "ünï©ødé ✓", 2**63 - 1, (1, 2)]
    for value in values:
        b.set(ns + "each", value, ttl_ms=TTL)
        expected = list(value) if isinstance(value, tuple) else value
        assert b.get(ns + "each") == expected
        assert type(b.get(ns + "each")) is type(expected)


def test_get_of_a_missing_key_raises_or_returns_the_default(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket)
    with pytest.raises(KeyNotFound) as caught:
        b.get(ns + "missing")
    error = caught.value
    assert isinstance(error, KeyError)  # `except KeyError` works too
    assert (error.code, error.status) == ("not_found", 404)
    assert f"'{ns}missing'" in error.detail
    assert error.request_id
    assert str(error) == f"not_found: {error.detail}"
    assert b.get(ns + "missing", None) is None
    assert b.get(ns + "missing", default=42) == 42
    with pytest.raises(KeyNotFound):
        b.get_item(ns + "missing")


def test_conditional_sets(shared_broker: BrokerProcess, clients: Clients, ns: str) -> None:
    b = clients.open(shared_broker.socket)
    key = ns + "lock"
    version = b.set(key, "me", TTL, if_absent=True)
    with pytest.raises(PreconditionFailed) as caught:
        b.set(key, "you", TTL, if_absent=True)
    assert (caught.value.code, caught.value.status) == ("precondition_failed", 412)
    assert repr(key) in caught.value.detail
    newer = b.set(key, "me again", TTL, if_version=version)
    with pytest.raises(PreconditionFailed):
        b.set(key, "stale writer", TTL, if_version=version)
    assert b.get_item(key).version == newer
    with pytest.raises(ValueError, match="exclude each other"):
        b.set(key, 1, TTL, if_absent=True, if_version=newer)


def test_delete_is_idempotent(shared_broker: BrokerProcess, clients: Clients, ns: str) -> None:
    b = clients.open(shared_broker.socket)
    b.set(ns + "gone", 1, TTL)
    assert b.delete(ns + "gone") is True
    assert b.delete(ns + "gone") is False
    assert b.get(ns + "gone", None) is None


def test_list_incr_touch(shared_broker: BrokerProcess, clients: Clients, ns: str) -> None:
    b = clients.open(shared_broker.socket)
    assert b.list(ns) == []
    b.set(ns + "user:2", "bob", TTL)
    b.set(ns + "user:1", "alice", TTL)
    b.set(ns + "other", [1, 2, 3], TTL)
    listed = b.list(ns + "user:")
    assert [info.key for info in listed] == [ns + "user:1", ns + "user:2"]
    assert all(isinstance(info, KeyInfo) for info in listed)
    assert listed[0].size == len(b'"alice"')
    assert [info.key for info in b.list(ns)] == [ns + "other", ns + "user:1", ns + "user:2"]
    assert [info.key for info in b.list(ns, limit=1)] == [ns + "other"]
    assert {info.key for info in b.list()} >= {ns + "other", ns + "user:1"}

    assert b.incr(ns + "counter", ttl_ms=TTL) == 1
    assert b.incr(ns + "counter", 10) == 11
    assert b.incr(ns + "counter", by=-20) == -9
    with pytest.raises(InvalidRequest) as caught:
        b.incr(ns + "other")
    assert caught.value.code == "not_an_integer"

    before = b.get_item(ns + "user:1")
    expires_at = b.touch(ns + "user:1", 2 * TTL)
    after = b.get_item(ns + "user:1")
    assert expires_at == after.expires_at > before.expires_at
    assert after.version == before.version
    with pytest.raises(KeyNotFound):
        b.touch(ns + "missing", 1000)


def test_names_are_percent_encoded_both_ways(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket)
    for name in ("a?b", "c#d", "50%", "ключ", "x:y@z", "a&b=c", "+plus+", "~.-_"):
        b.set(ns + name, name, TTL)
        assert b.get(ns + name) == name
    assert {info.key for info in b.list(ns + "a")} == {ns + "a?b", ns + "a&b=c"}
    # Names the broker refuses arrive as themselves and are refused by name, not re-routed.
    for bad in ("", ".", "..", "a/b", "a b", "tab\there"):
        with pytest.raises(InvalidRequest) as caught:
            b.set(bad, 1, TTL)
        assert caught.value.code == "invalid_key", bad


def test_ttl_errors_are_invalid_request(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket)
    for code, ttl in (("ttl_required", None), ("invalid_ttl", 0), ("invalid_ttl", -5)):
        with pytest.raises(InvalidRequest) as caught:
            b.set(ns + "k", 1, ttl)
        assert (caught.value.code, caught.value.status) == (code, 422)
        assert f"'{ns}k'" in caught.value.detail


def test_system_methods(shared_broker: BrokerProcess, clients: Clients, ns: str) -> None:
    b = clients.open(shared_broker.socket)
    b.set(ns + "x", 1, TTL)
    round_trip = b.ping()
    assert isinstance(round_trip, float)
    assert 0 < round_trip < 5000
    health = b.health()
    assert health["status"] == "healthy"
    assert health["capacity"]["items"] >= 1
    stats = b.stats()
    assert stats["items"] >= 1
    assert stats["requests_total"] >= 3
    assert "ephemeral_broker_items " in b.metrics()


def test_too_large_and_store_full(start_broker: BrokerFactory) -> None:
    broker = start_broker("--max-value-size", "64", "--max-items", "1")
    with each_kind() as kinds:
        for clients_of_kind in kinds:
            b = clients_of_kind.open(broker.socket)
            with pytest.raises(TooLarge) as too_large:
                b.set("big", "x" * 100, TTL)
            assert (too_large.value.code, too_large.value.status) == ("too_large", 413)
            b.set("one", 1, TTL)
            with pytest.raises(StoreFull) as full:
                b.set("two", 2, TTL)
            assert (full.value.code, full.value.status) == ("max_items", 507)
            assert b.delete("one")


def test_unavailable_when_there_is_no_socket_or_nobody_listens(
    short_tmp: Path, clients: Clients
) -> None:
    missing = clients.open(short_tmp / "missing.sock", timeout=0.2)
    with pytest.raises(BrokerUnavailable) as caught:
        missing.ping()
    assert caught.value.code == "unavailable"
    assert caught.value.status is None
    assert "missing.sock" in caught.value.detail

    # A socket file nobody listens on: connect() is refused.
    bound_only = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        bound_only.bind(str(short_tmp / "dead.sock"))
        refused = clients.open(short_tmp / "dead.sock", timeout=0.2)
        with pytest.raises(BrokerUnavailable, match="refused"):
            refused.get("k")
    finally:
        bound_only.close()


def test_no_socket_configured_is_refused_at_once(clients: Clients) -> None:
    with pytest.raises(BrokerUnavailable, match="EPHEMERAL_PIPE"):
        clients.open()
    for bad in (0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="timeout"):
            clients.open("/tmp/x.sock", timeout=bad)


def test_socket_defaults_to_ephemeral_pipe(
    shared_broker: BrokerProcess, clients: Clients, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EPHEMERAL_PIPE", str(shared_broker.socket))
    b = clients.open()
    assert b.socket == str(shared_broker.socket)
    b.set(ns + "from-env", 1, TTL)
    assert b.get(ns + "from-env") == 1


def test_timeout_when_the_broker_does_not_answer(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket, timeout=0.5)
    b.ping()  # a pooled connection; then the broker stops answering
    os.kill(shared_broker.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(BrokerTimeout) as caught:
            b.get(ns + "k")
        elapsed = time.monotonic() - started
    finally:
        os.kill(shared_broker.pid, signal.SIGCONT)
    assert caught.value.code == "timeout"
    assert f"'{ns}k'" in caught.value.detail
    assert elapsed < 0.5 + 0.5
    assert b.ping() > 0  # the client recovers once the broker answers again


def test_closed_client_refuses_calls(shared_broker: BrokerProcess, clients: Clients) -> None:
    b = clients.open(shared_broker.socket)
    b.close()
    b.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        b.ping()


def test_errors_pickle_with_their_attributes() -> None:
    error = KeyNotFound("not_found", "key 'a' does not exist", status=404, request_id="r1")
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert type(copy) is KeyNotFound
    assert (copy.code, copy.detail, copy.status, copy.request_id) == (
        "not_found",
        "key 'a' does not exist",
        404,
        "r1",
    )
    assert isinstance(copy, BrokerError)


def test_both_clients_have_the_same_methods_with_the_same_signatures() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(getattr(cls, name))
            for name in dir(cls)
            if not name.startswith("_") and callable(getattr(cls, name))
        }

    sync, asynchronous = public(BrokerClient), public(AsyncBrokerClient)
    assert set(asynchronous) - set(sync) == {"aclose"}
    for name, signature in sync.items():
        assert [*signature.parameters] == [*asynchronous[name].parameters], name
        assert getattr(BrokerClient, name).__doc__, name
        assert getattr(AsyncBrokerClient, name).__doc__, name
    assert [*sync["set"].parameters] == [
        "self",
        "key",
        "value",
        "ttl_ms",
        "if_absent",
        "if_version",
    ]
    assert sync["set"].return_annotation == "int"
    assert inspect.iscoroutinefunction(AsyncBrokerClient.set)


def test_a_forked_child_gets_its_own_connection(shared_broker: BrokerProcess, ns: str) -> None:
    """Parent and child must never share the pooled connection: their requests would
    interleave on one socket and each could read the other's answers."""
    with BrokerClient(shared_broker.socket) as b:
        b.set(ns + "parent", "P", TTL)
        b.set(ns + "child", "C", TTL)
        assert b.get(ns + "parent") == "P"  # the connection is pooled now
        pid = os.fork()
        if pid == 0:  # the child: report by exit status only
            ok = all(b.get(ns + "child") == "C" for _ in range(200))
            os._exit(0 if ok else 1)
        try:
            assert all(b.get(ns + "parent") == "P" for _ in range(200))
        finally:
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_importing_the_client_does_not_load_asyncio() -> None:
    import subprocess
    import sys

    probe = "import sys, client; print('asyncio' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout == "False\n"
