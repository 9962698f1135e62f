"""Connection retries: capped backoff, every attempt inside the call's one timeout (defect
15), a broker that starts late is reached, and a request that may have reached the broker is
re-sent only when the operation is idempotent."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from ephemeral_broker_client import BrokerTimeout, BrokerUnavailable
from ephemeral_broker_client._protocol import (
    BACKOFF_CAP_S,
    Attempt,
    Call,
    Plan,
    Sleep,
    exchange,
    resolve_wire,
)
from tests.support.brokers import BrokerFactory
from tests.support.clients import Clients
from tests.support.raw_server import RawServer, http_answer

# The brief's "small margin": scheduling noise on a loaded two-core machine, not a retry.
MARGIN_S = 0.3


@pytest.mark.defect(15)
def test_retries_stay_within_the_one_timeout(short_tmp: Path, clients: Clients) -> None:
    """Defect 15: the Node client gave each of 6 attempts its own 5 s timeout (30 s)."""
    transport = clients.uds_transport(short_tmp / "missing.sock")
    b = clients.open(short_tmp / "missing.sock", timeout=0.5, transport=transport)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as caught:
        b.get("k")
    elapsed = time.monotonic() - started
    assert elapsed < 0.5 + MARGIN_S
    # It kept trying until the budget was nearly spent, with backoff, not one attempt.
    assert elapsed > 0.5 - BACKOFF_CAP_S
    attempts = len(transport.requests)
    assert 5 <= attempts <= 30, attempts
    assert f"{attempts} attempts" in caught.value.detail
    assert "No such file" in caught.value.detail


def test_a_broker_started_200ms_after_the_first_call_is_reached(
    start_broker: BrokerFactory, short_tmp: Path, clients: Clients
) -> None:
    path = short_tmp / "late.sock"
    transport = clients.uds_transport(path)
    # The budget covers the broker's own start-up, which takes seconds on a loaded machine.
    b = clients.open(path, timeout=30, transport=transport)
    ready_at: list[float] = []

    def start_late() -> None:
        time.sleep(0.2)
        start_broker(socket=path)
        ready_at.append(time.monotonic())

    starter = threading.Timer(0, start_late)
    starter.start()
    try:
        assert b.ping() > 0
        answered_at = time.monotonic()
    finally:
        starter.join()
    assert len(transport.requests) > 1  # it was not there at first
    # Reached as soon as it listens: at most one capped backoff after the ready line (which is
    # printed once the broker already answers), plus scheduling noise.
    assert answered_at - ready_at[0] < BACKOFF_CAP_S + 1.0


def _close_unanswered_once(path: Path) -> RawServer:
    """A broker that drops the first request's connection unanswered, then answers."""

    def respond(request: bytes) -> bytes | None:
        if len(server.requests) == 1:
            return None
        if request.startswith(b"GET /v1/keys/k"):
            return http_answer(200, b'{"key":"k","value":7,"version":3,"expires_at":1}')
        return http_answer(200, b'{"key":"k","value":8,"version":4,"expires_at":1}')

    server = RawServer(path, respond)
    return server


def test_an_idempotent_call_is_resent_after_the_connection_broke(
    short_tmp: Path, clients: Clients
) -> None:
    server = _close_unanswered_once(short_tmp / "flaky.sock")
    try:
        b = clients.open(server.path, timeout=2)
        assert b.get("k") == 7
        assert len(server.requests) == 2
    finally:
        server.close()


def test_a_non_idempotent_call_is_never_resent_once_it_may_have_arrived(
    short_tmp: Path, clients: Clients
) -> None:
    server = _close_unanswered_once(short_tmp / "flaky.sock")
    try:
        b = clients.open(server.path, timeout=2)
        with pytest.raises(BrokerUnavailable, match="may or may not have been applied"):
            b.incr("k")
        assert len(server.requests) == 1
        server.requests.clear()
        with pytest.raises(BrokerUnavailable, match="may or may not have been applied"):
            b.set("k", 1, 1000, if_absent=True)
        assert len(server.requests) == 1
    finally:
        server.close()


@pytest.mark.defect(23)
def test_both_constructors_fail_the_same_way_at_once(
    monkeypatch: pytest.MonkeyPatch, short_tmp: Path, clients: Clients
) -> None:
    """Defect 23: the Node client's constructor threw synchronously while its methods
    rejected asynchronously, with different errors. Here both clients refuse a missing socket
    setting at construction with the same class a method raises for an unreachable broker."""
    from ephemeral_broker_client import AsyncBrokerClient, BrokerClient

    monkeypatch.delenv("EPHEMERAL_PIPE", raising=False)
    messages = []
    for cls in (BrokerClient, AsyncBrokerClient):
        with pytest.raises(BrokerUnavailable) as caught:
            cls()
        messages.append(caught.value.detail)
    assert messages[0] == messages[1]
    assert "EPHEMERAL_PIPE" in messages[0]
    b = clients.open(short_tmp / "missing.sock", timeout=0.2)
    with pytest.raises(BrokerUnavailable):
        b.ping()


@pytest.mark.defect(26)
def test_a_dead_broker_costs_each_call_its_budget_and_no_more(
    short_tmp: Path, clients: Clients, start_broker: BrokerFactory
) -> None:
    """Defect 26 asked for a circuit breaker because retries went on without bound. Here
    every call is bounded by its own timeout, so repeated calls to a dead broker fail fast and
    predictably, and nothing stays 'open': the first call after the broker is back succeeds."""
    path = short_tmp / "later.sock"
    b = clients.open(path, timeout=0.3)
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            b.ping()
        assert time.monotonic() - started < 0.3 + MARGIN_S
    start_broker(socket=path)
    assert b.ping() >= 0


class SteppedClock:
    """time.monotonic for the retry plan, moved by hand: the test decides how long a pause
    'took', as a stalled machine would."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ping_plan(socket: Path, timeout: float) -> Plan[int]:
    wire = resolve_wire(socket, None, timeout)
    return exchange(wire, Call("GET", "/v1/ping", lambda reply: reply.status, "ping"))


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("[Errno 2] No such file or directory"),
        # An idempotent call whose connection broke after sending is retried too.
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
    ids=["not-connected", "connection-broke"],
)
def test_a_pause_that_oversleeps_the_budget_ends_the_call_with_the_last_failure(
    failure: httpx.RequestError, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by CI on a loaded machine: the pause before a retry ended after the deadline and
    the next attempt was given a negative timeout, which httpcore refuses with ValueError. The
    call must end as 'cannot reach the broker', like any other spent budget."""
    clock = SteppedClock()
    monkeypatch.setattr(time, "monotonic", clock)
    plan = _ping_plan(short_tmp / "missing.sock", 0.3)
    first = next(plan)
    assert isinstance(first, Attempt)
    assert first.timeout_s == pytest.approx(0.3)
    pause = plan.send(failure)
    assert isinstance(pause, Sleep)
    assert 0 < pause.seconds < 0.3
    clock.now += 0.3 + 0.05  # the pause overslept the whole budget
    with pytest.raises(BrokerUnavailable) as caught:
        plan.send(None)
    assert caught.value.code == "unavailable"
    assert "cannot reach the broker" in caught.value.detail
    assert "for ping" in caught.value.detail
    assert f"{failure} (1 attempts in 0.35 s)" in caught.value.detail
    assert caught.value.__cause__ is failure


def test_a_budget_spent_before_the_first_attempt_is_a_timeout_not_a_crash(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny timeout can run out between the call starting and its first request being built;
    the answer is BrokerTimeout naming the call, never a request with a negative timeout."""
    ticks = iter([1000.0, 1000.002])
    monkeypatch.setattr(time, "monotonic", lambda: next(ticks))
    plan = _ping_plan(short_tmp / "missing.sock", 0.001)
    with pytest.raises(BrokerTimeout) as caught:
        next(plan)
    assert caught.value.code == "timeout"
    assert caught.value.detail == (
        f"the 0.001 s budget for ping ran out before the request could be sent to the broker "
        f"at {short_tmp / 'missing.sock'}"
    )
