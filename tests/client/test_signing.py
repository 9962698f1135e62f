"""Request signing (SPEC section 5): with a secret, every request carries an HMAC over the
exact request target and the exact body bytes that went over the socket."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemeral_broker.errors import PROBLEM_CONTENT_TYPE, problem_body
from ephemeral_broker.signing import verify
from ephemeral_broker_client import AuthFailed, BrokerClient
from tests.support.clients import Clients
from tests.support.raw_server import RawServer, http_answer

SECRET = "correct horse battery staple"

ANSWERS = {
    b"PUT": http_answer(201, b'{"key":"k","version":1,"expires_at":1,"ttl_ms":1000}'),
    b"GET": http_answer(200, b'{"key":"k","value":1,"version":1,"expires_at":1,"keys":[]}'),
    b"DELETE": http_answer(200, b'{"deleted":true,"released":true}'),
    b"POST": http_answer(200, b'{"key":"k","value":2,"version":2,"expires_at":1}'),
}


def _parse(raw: bytes) -> tuple[str, str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, target, _ = request_line.split(" ")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers, body


@pytest.fixture
def recorder(short_tmp: Path) -> Iterator[RawServer]:
    server = RawServer(short_tmp / "rec.sock", lambda request: ANSWERS[request.split(b" ")[0]])
    yield server
    server.close()


def _exercise(client: BrokerClient) -> None:
    client.set("plain", {"v": [1, "ü"]}, 1000)
    client.get("a?b#c %d/é")
    client.list("pre fix&x=1")
    client.delete("x:y@z")
    client.incr("n", 2, 1000)
    client.release("pool", "w 1", token=7)


def test_every_request_is_signed_over_the_target_and_body_as_sent(
    recorder: RawServer, clients: Clients
) -> None:
    b = clients.open(recorder.path, secret=SECRET)
    _exercise(b)
    assert len(recorder.requests) == 6
    now = time.time_ns() // 1_000_000
    targets = []
    for raw in recorder.requests:
        method, target, headers, body = _parse(raw)
        targets.append(target)
        digest = hashlib.sha256(body).hexdigest()
        assert verify(
            SECRET,
            headers["x-broker-timestamp"],
            headers["x-broker-signature"],
            method,
            target,
            digest,
            now,
        ), raw
        # The canonical string of SPEC section 5, written out by hand.
        canonical = f"{headers['x-broker-timestamp']}\n{method}\n{target}\n{digest}".encode()
        expected = hmac.new(SECRET.encode(), canonical, hashlib.sha256).hexdigest()
        assert headers["x-broker-signature"] == expected
        # Compression is never offered: the broker answers uncompressed unless asked.
        assert "accept-encoding" not in headers
        assert "authorization" not in headers  # the secret itself never travels
    assert targets == [
        "/v1/keys/plain",
        "/v1/keys/a%3Fb%23c%20%25d%2F%C3%A9",
        "/v1/keys?prefix=pre%20fix%26x%3D1&limit=1000",
        "/v1/keys/x:y@z",
        "/v1/keys/n/incr",
        "/v1/leases/pool/w%201?token=7",
    ]


def test_a_wrong_secret_does_not_verify(recorder: RawServer, clients: Clients) -> None:
    b = clients.open(recorder.path, secret="not the secret")
    b.get("k")
    method, target, headers, body = _parse(recorder.requests[0])
    assert not verify(
        SECRET,
        headers["x-broker-timestamp"],
        headers["x-broker-signature"],
        method,
        target,
        hashlib.sha256(body).hexdigest(),
        time.time_ns() // 1_000_000,
    )


def test_the_secret_defaults_to_ephemeral_secret(
    recorder: RawServer, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EPHEMERAL_SECRET", SECRET)
    b = clients.open(recorder.path)
    assert "signed" in repr(b) and SECRET not in repr(b)
    b.get("k")
    method, target, headers, body = _parse(recorder.requests[0])
    assert verify(
        SECRET,
        headers["x-broker-timestamp"],
        headers["x-broker-signature"],
        method,
        target,
        hashlib.sha256(body).hexdigest(),
        time.time_ns() // 1_000_000,
    )


def test_without_a_secret_nothing_is_signed(recorder: RawServer, clients: Clients) -> None:
    b = clients.open(recorder.path)
    b.get("k")
    _, _, headers, _ = _parse(recorder.requests[0])
    assert "x-broker-signature" not in headers
    assert "x-broker-timestamp" not in headers


def test_a_401_problem_is_auth_failed(short_tmp: Path, clients: Clients) -> None:
    """The broker's refusal, as its auth layer sends it: problem+json with a challenge, and
    the connection closed after it."""
    body = problem_body("auth_failed", "no credential: send a signature", "rid-401")
    refusal = http_answer(
        401,
        body,
        PROBLEM_CONTENT_TYPE,
        'www-authenticate: Bearer realm="ephemeral-broker"',
        "connection: close",
    )
    server = RawServer(short_tmp / "guarded.sock", lambda _: refusal)
    try:
        b = clients.open(server.path)
        for _ in range(2):  # and again on a new connection, since that one was closed
            with pytest.raises(AuthFailed) as caught:
                b.set("k", 1, 1000)
            error = caught.value
            assert (error.code, error.status, error.request_id) == ("auth_failed", 401, "rid-401")
            assert error.detail == "no credential: send a signature"
        assert len(server.requests) == 2  # a refusal is an answer: never retried
    finally:
        server.close()
