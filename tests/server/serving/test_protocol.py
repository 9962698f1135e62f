"""What one connection may cost: the head limit on every read and every request, timeouts for
idle connections, slow heads and stalled bodies (answered 408), a drain that does not wait on
a stalled body, and a maximum number of connections, also under a low open-file limit."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import time

import pytest

from ephemeral_broker.serving.protocol import MAX_HEAD_BYTES
from tests.support.brokers import BrokerFactory, BrokerProcess, uds_client
from tests.support.responses import split_response
from tests.support.waiting import wait_until


def raw(broker: BrokerProcess) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(20)
    sock.connect(str(broker.socket))
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response from a raw connection: the head, then Content-Length bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    status, headers, body = split_response(data)
    while len(body) < int(headers.get("content-length", "0")):
        body += sock.recv(65536)
    return status, headers, body


def assert_closed(sock: socket.socket) -> None:
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(65536) == b""


def problem_code(body: bytes) -> str:
    code: str = json.loads(body)["code"]
    return code


def oversized_put(size: int, key: str = "big-head") -> bytes:
    filler = "a" * size
    body = b'{"value": 1, "ttl_ms": 9000}'
    head = f"PUT /v1/keys/{key} HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n"
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


def send_in_pieces(sock: socket.socket, data: bytes, piece: int) -> None:
    for start in range(0, len(data), piece):
        try:
            sock.sendall(data[start : start + piece])
        except (BrokenPipeError, ConnectionResetError):
            return  # refused and closed mid-head: what we want to see


@pytest.mark.parametrize("size", [70_000, 200_000, 300_000])
@pytest.mark.parametrize("how", ["one write", "1 KiB writes", "second request"])
def test_the_head_limit_holds_however_the_head_arrives(
    broker: BrokerProcess, size: int, how: str
) -> None:
    request = oversized_put(size)
    with raw(broker) as sock:
        if how == "one write":
            sock.sendall(request)
        elif how == "1 KiB writes":
            send_in_pieces(sock, request, 1024)
        else:
            sock.sendall(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[0] == 200
            sock.sendall(request)
        status, headers, body = read_response(sock)
        assert status == 431
        assert problem_code(body) == "headers_too_large"
        assert f"passed {MAX_HEAD_BYTES} bytes" in json.loads(body)["detail"]
        assert headers["connection"] == "close"
        assert_closed(sock)
    with broker.client(timeout=10) as client:
        assert client.get("/v1/keys/big-head").status_code == 404  # never dispatched


def test_a_head_just_under_the_limit_is_served(broker: BrokerProcess) -> None:
    with raw(broker) as sock:
        sock.sendall(oversized_put(MAX_HEAD_BYTES - 200, key="fits"))
        assert read_response(sock)[0] == 201


def test_an_idle_connection_is_closed_from_the_moment_it_opens(
    start_broker: BrokerFactory,
) -> None:
    broker = start_broker("--keep-alive-timeout", "300")
    with raw(broker) as sock:
        opened = time.monotonic()
        assert_closed(sock)  # closed silently: no request was ever started
        assert time.monotonic() - opened < 15


@pytest.mark.parametrize("trickle", [False, True], ids=["stops", "slowloris"])
def test_a_head_that_does_not_complete_in_time_gets_408(
    start_broker: BrokerFactory, trickle: bool
) -> None:
    broker = start_broker("--head-timeout", "400")
    with raw(broker) as sock:
        sock.sendall(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n")
        if trickle:  # bytes keep coming, the head never ends: no reset of the timer
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    sock.sendall(b"X")
                except (BrokenPipeError, ConnectionResetError):
                    break
                time.sleep(0.05)
        status, headers, body = read_response(sock)
        assert status == 408
        assert problem_code(body) == "request_timeout"
        assert "the request head did not arrive within 0.4 s" in json.loads(body)["detail"]
        assert headers["connection"] == "close"


def test_deadlines_hold_on_a_connection_that_served_requests_for_longer_than_them(
    start_broker: BrokerFactory,
) -> None:
    """The deadlines share one timer that is re-armed lazily: one set for an earlier deadline
    fires, finds the deadline moved on, and waits again. So after a second of requests (longer
    than either timeout), an idle connection lives its whole keep-alive, no less, and then
    closes; and a later request's stalled head still gets its 408 on time."""
    broker = start_broker("--keep-alive-timeout", "700", "--head-timeout", "400")
    ping = b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n"
    with raw(broker) as sock:
        busy_until = time.monotonic() + 1.2
        while time.monotonic() < busy_until:
            sock.sendall(ping)
            assert read_response(sock)[0] == 200
            time.sleep(0.02)
        answered = time.monotonic()
        assert_closed(sock)
        idle = time.monotonic() - answered
        assert 0.6 <= idle < 10, idle
    with raw(broker) as sock:
        busy_until = time.monotonic() + 1.2
        while time.monotonic() < busy_until:
            sock.sendall(ping)
            assert read_response(sock)[0] == 200
            time.sleep(0.02)
        sock.sendall(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n")  # and the head stops here
        stalled = time.monotonic()
        status, _headers, body = read_response(sock)
        assert status == 408 and problem_code(body) == "request_timeout"
        assert 0.3 <= time.monotonic() - stalled < 10


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_that_stops_gets_408_and_stops_counting_as_in_flight(
    start_broker: BrokerFactory, framing: str
) -> None:
    broker = start_broker("--body-timeout", "400")
    with raw(broker) as sock:
        if framing == "chunked":
            head = b"PUT /v1/keys/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            sock.sendall(head + b"1\r\n{\r\n")
        else:
            sock.sendall(b"PUT /v1/keys/k HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        status, _, body = read_response(sock)
        assert status == 408
        assert problem_code(body) == "request_timeout"
        assert "the request body stopped arriving" in json.loads(body)["detail"]
        assert_closed(sock)
    with broker.client(timeout=10) as client:
        wait_until(
            lambda: client.get("/v1/health").json()["connections"]["in_flight"] == 1,
            what="the stalled request to end",
        )
        assert client.get("/v1/keys/k").status_code == 404


def test_a_moving_body_is_not_timed_out(start_broker: BrokerFactory) -> None:
    broker = start_broker("--body-timeout", "500")
    body = b'{"value": "slow but steady", "ttl_ms": 60000}'
    with raw(broker) as sock:
        sock.sendall(
            b"PUT /v1/keys/steady HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        for byte in body:  # ~2 s in all, never more than 0.05 s between reads
            sock.sendall(bytes([byte]))
            time.sleep(0.05)
        assert read_response(sock)[0] == 201


def test_a_drain_does_not_wait_on_a_body_that_stopped(start_broker: BrokerFactory) -> None:
    """The body timeout is long and the drain timeout longer still; once the drain has begun,
    a body that does not move gets a short grace, so the broker exits long before either."""
    broker = start_broker("--body-timeout", "60000", "--drain-timeout", "60000")
    with raw(broker) as sock:
        sock.sendall(b"PUT /v1/keys/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        with broker.client(timeout=10) as client:
            wait_until(
                lambda: client.get("/v1/health").json()["connections"]["in_flight"] >= 2,
                what="the upload to count as in flight",
            )
        signalled = time.monotonic()
        os.kill(broker.pid, signal.SIGTERM)
        status, _, body = read_response(sock)
        assert status == 408
        assert problem_code(body) == "request_timeout"
        assert broker.proc.wait(timeout=30) == 0
        assert time.monotonic() - signalled < 20
    assert not broker.socket.exists()


def test_one_connection_over_the_maximum_is_refused_with_503(
    start_broker: BrokerFactory,
) -> None:
    broker = start_broker("--max-connections", "4", "--log-level", "warning")
    held = [raw(broker) for _ in range(4)]
    try:
        with raw(broker) as extra:
            status, headers, body = read_response(extra)
            assert status == 503
            assert problem_code(body) == "too_many_connections"
            assert "already serves 4 connections (max_connections)" in json.loads(body)["detail"]
            assert headers["retry-after"] == "1"
            assert_closed(extra)
        with raw(broker) as another:
            assert read_response(another)[0] == 503
        wait_until(lambda: "too many connections" in broker.stderr(), what="the log line")
        # At most one line per interval, however many were refused.
        assert broker.stderr().count("too many connections") == 1
        held.pop().close()
        wait_until(lambda: _ping(broker) == 200, what="a free connection slot")
    finally:
        for sock in held:
            sock.close()


def _ping(broker: BrokerProcess) -> int:
    with raw(broker) as sock:
        sock.sendall(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
        return read_response(sock)[0]


def test_a_low_open_file_limit_lowers_max_connections_and_still_serves(
    start_broker: BrokerFactory,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Soft and hard both 256 in the broker: it cannot raise them.
    broker = start_broker(
        "--log-level",
        "warning",
        preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)),
    )
    assert "max_connections lowered to fit the open-file limit" in broker.stderr()
    assert "max_connections=192" in broker.stderr()
    held: list[socket.socket] = []
    try:
        refused = 0
        for _ in range(300):
            sock = raw(broker)
            held.append(sock)
        for sock in held[192:]:
            status, _, body = read_response(sock)
            assert status == 503 and problem_code(body) == "too_many_connections"
            refused += 1
        assert refused == 108
        assert "too many connections" in broker.stderr()
        for sock in held[:10]:
            sock.close()
        wait_until(lambda: _ping(broker) == 200, what="a slot once connections closed")
    finally:
        for sock in held:
            sock.close()
    with uds_client(broker.socket, timeout=10) as client:
        assert client.get("/v1/ping").status_code == 200
    assert (soft, hard) == resource.getrlimit(resource.RLIMIT_NOFILE)
