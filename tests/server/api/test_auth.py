"""Auth (SPEC section 5): Bearer or HMAC signature, probes open, every failure a 401."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from ephemeral_broker.api.app import create_app
from ephemeral_broker.clock import FakeClock
from ephemeral_broker.settings import BrokerSettings
from ephemeral_broker.signing import sign, signature_headers
from tests.support.asgi import AppFactory, asgi_call
from tests.support.brokers import BROKER_EXE, BrokerFactory, BrokerProcess

SECRET = "s3cret-for-tests-0123456789abcdef"
# Large credentials that still fit the 64 KiB bound on a request's head reach auth and get
# 401; HUGE ones are refused by the HTTP layer first (431 headers_too_large). Neither is a 500.
LARGE = 20_000
HUGE = 1_000_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def signed_request(
    client: httpx.Client | httpx.AsyncClient,
    method: str,
    url: str,
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    content: bytes = b"",
    headers: dict[str, str] | None = None,
) -> httpx.Request:
    """Build a request and sign it the way a client must: over the target as it will go on
    the wire (still percent-encoded) and the body bytes as sent."""
    request = client.build_request(method, url, content=content, headers=headers)
    stamp = now_ms() if timestamp is None else timestamp
    request.headers.update(
        signature_headers(secret, stamp, method, request.url.raw_path.decode(), request.content)
    )
    return request


def assert_auth_failed(response: httpx.Response, secret: str = SECRET) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["code"] == "auth_failed"
    assert body["detail"]
    assert secret not in response.text


@pytest.fixture
def secured(start_broker: BrokerFactory) -> BrokerProcess:
    return start_broker(env={"BROKER_SECRET": SECRET})


@pytest.mark.defect(13)
def test_only_correct_credentials_pass_and_nothing_yields_500(
    secured: BrokerProcess,
) -> None:
    """Defect 13: a non-hex or odd-length HMAC crashed the Node broker's comparison.
    Every credential below is tried against a real broker; only the correct Bearer token and
    the correct signatures pass, every other one is a 401 problem, and the broker keeps
    serving."""
    body = json.dumps({"value": "v", "ttl_ms": 60000}).encode()
    with secured.client(timeout=30) as client:
        good_sig = sign(SECRET, now_ms(), "GET", "/v1/ping")
        passing = {
            "bearer": client.build_request(
                "GET", "/v1/ping", headers={"Authorization": f"Bearer {SECRET}"}
            ),
            "bearer, scheme in lower case": client.build_request(
                "GET", "/v1/ping", headers={"Authorization": f"bearer {SECRET}"}
            ),
            "hmac": signed_request(client, "GET", "/v1/ping"),
            "hmac with a body": signed_request(client, "PUT", "/v1/keys/k", content=body),
            "hmac with an escaped key and a query": signed_request(
                client, "PUT", "/v1/keys/a%2Bb?x=1", content=body
            ),
            "hmac with a listing query": signed_request(client, "GET", "/v1/keys?prefix=a"),
        }
        for name, request in passing.items():
            response = client.send(request)
            assert response.status_code in (200, 201), (name, response.text)

        stamp = now_ms()
        failing: dict[str, dict[str, str]] = {
            "nothing": {},
            "bearer, wrong secret": {"Authorization": "Bearer not-the-secret"},
            "bearer, secret as a prefix": {"Authorization": f"Bearer {SECRET}x"},
            "bearer, empty token": {"Authorization": "Bearer"},
            "basic scheme": {"Authorization": f"Basic {SECRET}"},
            "hmac, wrong secret": signature_headers("wrong", stamp, "GET", "/v1/ping"),
            "hmac, stale timestamp": signature_headers(SECRET, stamp - 31_000, "GET", "/v1/ping"),
            "hmac, future timestamp": signature_headers(SECRET, stamp + 31_000, "GET", "/v1/ping"),
            "hmac, non-hex signature": {
                "X-Broker-Timestamp": str(stamp),
                "X-Broker-Signature": "z" * 64,
            },
            "hmac, odd-length signature": {
                "X-Broker-Timestamp": str(stamp),
                "X-Broker-Signature": good_sig[:-1],
            },
            "hmac, signature too long": {
                "X-Broker-Timestamp": str(stamp),
                "X-Broker-Signature": good_sig + "00",
            },
            "hmac, missing signature": {"X-Broker-Timestamp": str(stamp)},
            "hmac, missing timestamp": {"X-Broker-Signature": good_sig},
            "hmac, timestamp not a number": {
                "X-Broker-Timestamp": "yesterday",
                "X-Broker-Signature": good_sig,
            },
            "hmac, negative timestamp": {
                "X-Broker-Timestamp": "-5",
                "X-Broker-Signature": good_sig,
            },
            "hmac, 400-digit timestamp": {
                "X-Broker-Timestamp": "9" * 400,
                "X-Broker-Signature": good_sig,
            },
            "hmac, other method": signature_headers(SECRET, stamp, "POST", "/v1/ping"),
            "hmac, other target": signature_headers(SECRET, stamp, "GET", "/v1/stats"),
            "large bearer": {"Authorization": "Bearer " + "a" * LARGE},
            "large signature": {
                "X-Broker-Timestamp": str(stamp),
                "X-Broker-Signature": "f" * LARGE,
            },
            "large timestamp": {"X-Broker-Timestamp": "1" * LARGE, "X-Broker-Signature": good_sig},
            "large everything": {
                "Authorization": "x" * LARGE,
                "X-Broker-Timestamp": "y" * LARGE,
                "X-Broker-Signature": "z" * LARGE,
            },
        }
        for name, headers in failing.items():
            response = client.get("/v1/ping", headers=headers)
            assert response.status_code == 401, name
            assert_auth_failed(response)
        for huge in (
            {"Authorization": "Bearer " + "a" * HUGE},
            {"X-Broker-Timestamp": str(stamp), "X-Broker-Signature": "f" * HUGE},
        ):
            with secured.client(timeout=30) as fresh:  # the 431 closes its connection
                response = fresh.get("/v1/ping", headers=huge)
            assert response.status_code == 431
            assert response.json()["code"] == "headers_too_large"

        # Non-ASCII bytes where ASCII is expected.
        raw = [(b"X-Broker-Timestamp", str(stamp).encode()), (b"X-Broker-Signature", b"\xff" * 64)]
        assert_auth_failed(client.get("/v1/ping", headers=raw))
        assert_auth_failed(client.get("/v1/ping", headers=[(b"Authorization", b"Bearer \xe9")]))

        # A signed body that was changed on the way is refused, and nothing is written.
        tampered = signed_request(client, "PUT", "/v1/keys/tampered", content=body)
        tampered = client.build_request(
            "PUT",
            "/v1/keys/tampered",
            content=body.replace(b'"v"', b'"w"'),
            headers=dict(tampered.headers),
        )
        assert_auth_failed(client.send(tampered))
        bearer = {"Authorization": f"Bearer {SECRET}"}
        assert client.get("/v1/keys/tampered", headers=bearer).status_code == 404

        assert client.get("/healthz").status_code == 200
    stderr = secured.stderr()
    assert "Traceback" not in stderr and "internal_error" not in stderr
    assert SECRET not in stderr


def test_probes_are_open_and_everything_else_needs_a_credential(secured: BrokerProcess) -> None:
    with secured.client(timeout=30) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}
        for path in (
            "/metrics",
            "/openapi.json",
            "/v1/stats",
            "/v1/health",
            "/v1/keys",
            "/v1/keys/k",
            "/no/such/route",
            "/healthz/",
            "/docs",
        ):
            assert_auth_failed(client.get(path))
        assert_auth_failed(client.delete("/v1/keys/k"))
        assert_auth_failed(client.post("/v1/keys/k/incr", json={"ttl_ms": 1000}))
        bearer = {"Authorization": f"Bearer {SECRET}"}
        assert client.get("/metrics", headers=bearer).status_code == 200
        assert client.get("/openapi.json", headers=bearer).status_code == 200


def test_secret_from_ephemeral_secret_turns_auth_on(start_broker: BrokerFactory) -> None:
    broker = start_broker(env={"EPHEMERAL_SECRET": SECRET})
    with broker.client(timeout=30) as client:
        assert_auth_failed(client.get("/v1/ping"))
        ok = client.get("/v1/ping", headers={"Authorization": f"Bearer {SECRET}"})
        assert ok.status_code == 200


def test_secret_file_trailing_newline_is_ignored(
    start_broker: BrokerFactory, short_tmp: Path
) -> None:
    secret_file = short_tmp / "secret"
    secret_file.write_text(SECRET + "\n")
    broker = start_broker("--secret-file", str(secret_file))
    with broker.client(timeout=30) as client:
        ok = client.get("/v1/ping", headers={"Authorization": f"Bearer {SECRET}"})
        assert ok.status_code == 200
    assert SECRET not in " ".join(broker.args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--secret", "hunter2-on-the-command-line"], "--secret is not accepted"),
        (["--secret-file", "/no/such/file"], "cannot read --secret-file"),
    ],
)
def test_secret_never_comes_from_argv(args: list[str], message: str) -> None:
    done = subprocess.run(
        [BROKER_EXE, "serve", *args], capture_output=True, text=True, check=False, timeout=30
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "hunter2" not in done.stderr


def test_empty_secret_is_refused(short_tmp: Path) -> None:
    empty = short_tmp / "empty"
    empty.write_text("\n")
    done = subprocess.run(
        [BROKER_EXE, "serve", "--secret-file", str(empty)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={**os.environ},
    )
    assert done.returncode == 2
    assert "secret" in done.stderr and "empty" in done.stderr


# ---- in process: what auth reads, and when -------------------------------------------------


class Receive:
    """An ASGI receive that records how much of the body was pulled."""

    def __init__(self, chunks: list[bytes], endless: bool = False) -> None:
        self.chunks = chunks
        self.endless = endless
        self.calls = 0
        self.bytes = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.endless:
            chunk = self.chunks[0]
            more = True
        else:
            chunk = self.chunks[self.calls - 1] if self.calls <= len(self.chunks) else b""
            more = self.calls < len(self.chunks)
        self.bytes += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": more}


async def call_app(
    app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], receive: Receive
) -> tuple[int, dict[str, str], bytes]:
    result = await asgi_call(
        app, method, path, headers=[(b"host", b"localhost"), *headers], receive=receive
    )
    return result.status, result.headers, result.body


@pytest.fixture
def secured_app(clock: FakeClock) -> Any:
    settings = BrokerSettings(secret=SecretStr(SECRET), max_request_size=4096)
    return create_app(settings, clock=clock)


@pytest.mark.anyio
async def test_a_wrong_bearer_is_refused_before_its_body_is_read(secured_app: Any) -> None:
    receive = Receive([b"x" * 1000])
    status, headers, body = await call_app(
        secured_app,
        "PUT",
        "/v1/keys/k",
        [(b"authorization", b"Bearer wrong"), (b"content-length", b"1000")],
        receive,
    )
    assert status == 401 and json.loads(body)["code"] == "auth_failed"
    assert receive.calls == 0
    assert headers["connection"] == "close"  # the unread body is not parsed as a next request


@pytest.mark.anyio
async def test_a_stale_signature_is_refused_before_its_body_is_read(
    secured_app: Any, clock: FakeClock
) -> None:
    stale = signature_headers(SECRET, clock.now_ms() - 60_000, "PUT", "/v1/keys/k", b"{}")
    receive = Receive([b"{}"])
    headers = [(k.lower().encode(), v.encode()) for k, v in stale.items()]
    status, _, body = await call_app(
        secured_app, "PUT", "/v1/keys/k", [*headers, (b"content-length", b"2")], receive
    )
    assert status == 401
    assert "60000 ms behind" in json.loads(body)["detail"]
    assert receive.calls == 0


@pytest.mark.anyio
async def test_signed_body_is_never_buffered_past_max_request_size(
    secured_app: Any, clock: FakeClock
) -> None:
    stamp = clock.now_ms()
    sig = [
        (b"x-broker-timestamp", str(stamp).encode()),
        (b"x-broker-signature", sign(SECRET, stamp, "PUT", "/v1/keys/k", b"").encode()),
    ]
    # Declared too large: refused without reading a byte.
    receive = Receive([b"x"])
    status, headers, body = await call_app(
        secured_app, "PUT", "/v1/keys/k", [*sig, (b"content-length", b"5000")], receive
    )
    assert (status, json.loads(body)["code"], receive.calls) == (413, "too_large", 0)
    assert headers["connection"] == "close"
    # Chunked and endless: refused as soon as it passes the limit.
    receive = Receive([b"y" * 1024], endless=True)
    status, _, body = await call_app(
        secured_app, "PUT", "/v1/keys/k", [*sig, (b"transfer-encoding", b"chunked")], receive
    )
    assert (status, json.loads(body)["code"]) == (413, "too_large")
    assert receive.bytes <= 4096 + 1024


@pytest.mark.anyio
async def test_signature_covers_the_body_as_sent_before_decoding(
    make_api: AppFactory, clock: FakeClock
) -> None:
    plain = json.dumps({"value": "zipped", "ttl_ms": 60000}).encode()
    packed = gzip.compress(plain)
    async with make_api(secret=SECRET) as api:

        def request(signed_body: bytes) -> httpx.Request:
            return api.build_request(
                "PUT",
                "/v1/keys/z",
                content=packed,
                headers={
                    "Content-Encoding": "gzip",
                    **signature_headers(SECRET, clock.now_ms(), "PUT", "/v1/keys/z", signed_body),
                },
            )

        assert_auth_failed(await api.send(request(plain)))  # signed what it meant, not what it sent
        assert (await api.send(request(packed))).status_code == 201
        bearer = {"Authorization": f"Bearer {SECRET}"}
        assert (await api.get("/v1/keys/z", headers=bearer)).json()["value"] == "zipped"


@pytest.mark.anyio
async def test_error_details_say_what_is_wrong_without_echoing_it(
    make_api: AppFactory, clock: FakeClock
) -> None:
    cases: list[tuple[dict[str, str], str]] = [
        ({}, "authentication required"),
        ({"Authorization": "Bearer guess-0001"}, "bearer token is not the broker's secret"),
        ({"X-Broker-Timestamp": "soon", "X-Broker-Signature": "a" * 64}, "epoch milliseconds"),
        (
            {"X-Broker-Timestamp": str(clock.now_ms()), "X-Broker-Signature": "guess-0002"},
            "64 hex digits",
        ),
        (
            {"X-Broker-Timestamp": str(clock.now_ms() + 45_000), "X-Broker-Signature": "a" * 64},
            "45000 ms ahead",
        ),
        (
            {"X-Broker-Timestamp": str(clock.now_ms()), "X-Broker-Signature": "a" * 64},
            "does not match",
        ),
    ]
    async with make_api(secret=SECRET) as api:
        for headers, expected in cases:
            response = await api.get("/v1/ping", headers=headers)
            assert_auth_failed(response)
            assert expected in response.json()["detail"]
            assert "guess-" not in response.text


@pytest.mark.anyio
async def test_without_a_secret_there_is_no_auth(api: httpx.AsyncClient) -> None:
    assert (await api.get("/v1/ping")).status_code == 200
    assert (await api.get("/metrics")).status_code == 200


@pytest.mark.anyio
async def test_clock_window_is_inclusive_at_30_seconds(
    make_api: AppFactory, clock: FakeClock
) -> None:
    async with make_api(secret=SECRET) as api:
        for skew in (-30_000, 30_000):
            request = signed_request(api, "GET", "/v1/ping", timestamp=clock.now_ms() + skew)
            assert (await api.send(request)).status_code == 200
        for skew in (-30_001, 30_001):
            request = signed_request(api, "GET", "/v1/ping", timestamp=clock.now_ms() + skew)
            assert_auth_failed(await api.send(request))
