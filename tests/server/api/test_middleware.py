"""Request limits and encodings (SPEC section 4) at the ASGI level, where we can count exactly
how much of a body the broker asked for."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import orjson
import pytest

from ephemeral_broker.api.app import create_app
from ephemeral_broker.settings import BrokerSettings
from tests.support.asgi import asgi_call, http_scope

pytestmark = pytest.mark.anyio

LIMIT = 1_048_576


def app_with(**settings: int) -> object:
    return create_app(BrokerSettings(**settings))  # type: ignore[arg-type]


async def test_content_length_over_the_limit_is_refused_before_reading() -> None:
    result = await asgi_call(
        app_with(),
        "PUT",
        "/v1/keys/k",
        chunks=(b"x" * 10,),
        headers=(("content-length", str(LIMIT + 1)),),
    )
    assert (result.status, result.json()["code"]) == (413, "too_large")
    assert result.receive_calls == 0  # not one byte of the body was read
    assert result.headers["connection"] == "close"
    assert f"{LIMIT + 1} bytes" in result.json()["detail"]


@pytest.mark.defect(14)
async def test_chunked_body_is_refused_the_moment_it_passes_the_limit() -> None:
    """Defect 14: the Node broker buffered a connection's data without bound; here a
    body without Content-Length is counted as it streams and refused as soon as it passes."""
    chunk = b" " * 65_536
    chunks = (b'{"value": "', *([chunk] * 40), b'", "ttl_ms": 100}')  # about 2.6 MB
    result = await asgi_call(
        app_with(), "PUT", "/v1/keys/k", chunks=chunks, headers=(("transfer-encoding", "chunked"),)
    )
    assert (result.status, result.json()["code"]) == (413, "too_large")
    # 1 MiB is 16 chunks of 64 KiB: the 17th pushes it over, and nothing after it is read.
    assert result.receive_calls == 1 + 16
    assert "while streaming" in result.json()["detail"]


async def test_chunked_body_within_the_limit_is_accepted() -> None:
    body = orjson.dumps({"value": "v" * 5000, "ttl_ms": 100})
    chunks = tuple(body[i : i + 1000] for i in range(0, len(body), 1000))
    result = await asgi_call(
        app_with(), "PUT", "/v1/keys/k", chunks=chunks, headers=(("transfer-encoding", "chunked"),)
    )
    assert result.status == 201


async def test_gzip_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b"\0" * 10_000_000, compresslevel=9)
    assert len(bomb) < 20_000
    tracemalloc.start()
    try:
        result = await asgi_call(
            app_with(),
            "PUT",
            "/v1/keys/k",
            chunks=(bomb,),
            headers=(("content-length", str(len(bomb))), ("content-encoding", "gzip")),
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (result.status, result.json()["code"]) == (413, "too_large")
    assert "decoded request body" in result.json()["detail"]
    # At most the limit (+1 byte) is ever inflated, never the 10 MB.
    assert peak < 3 * LIMIT


async def test_decoded_size_counts_against_the_limit() -> None:
    body = orjson.dumps({"value": "a" * 2000, "ttl_ms": 100})
    packed = zlib.compress(body)
    headers = (("content-length", str(len(packed))), ("content-encoding", "deflate"))
    small = await asgi_call(
        app_with(max_request_size=1000), "PUT", "/v1/keys/k", chunks=(packed,), headers=headers
    )
    assert len(packed) < 1000 < len(body)
    assert (small.status, small.json()["code"]) == (413, "too_large")
    ok = await asgi_call(app_with(), "PUT", "/v1/keys/k", chunks=(packed,), headers=headers)
    assert ok.status == 201


async def test_gzip_body_in_many_chunks() -> None:
    body = orjson.dumps({"value": list(range(3000)), "ttl_ms": 100})
    packed = gzip.compress(body)
    chunks = tuple(packed[i : i + 100] for i in range(0, len(packed), 100))
    result = await asgi_call(
        app_with(),
        "PUT",
        "/v1/keys/k",
        chunks=chunks,
        headers=(("transfer-encoding", "chunked"), ("content-encoding", "gzip")),
    )
    assert result.status == 201


async def test_trailing_garbage_after_gzip_is_refused() -> None:
    packed = gzip.compress(b'{"value": 1, "ttl_ms": 100}') + b"junk"
    result = await asgi_call(
        app_with(),
        "PUT",
        "/v1/keys/k",
        chunks=(packed,),
        headers=(("content-length", str(len(packed))), ("content-encoding", "gzip")),
    )
    assert (result.status, result.json()["code"]) == (400, "invalid_json")
    assert "after the end" in result.json()["detail"]


async def test_non_numeric_content_length_is_a_clear_error() -> None:
    result = await asgi_call(
        app_with(), "PUT", "/v1/keys/k", chunks=(b"{}",), headers=(("content-length", "ten"),)
    )
    assert (result.status, result.json()["code"]) == (400, "invalid_json")
    assert result.receive_calls == 0


async def test_client_disconnect_mid_body_is_not_an_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = app_with()
    calls = 0

    async def receive() -> dict[str, object]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b'{"value": ', "more_body": True}
        return {"type": "http.disconnect"}

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = http_scope("PUT", "/v1/keys/k", [("content-length", "100")])
    await app(scope, receive, send)  # type: ignore[operator]
    assert sent == []  # nobody to answer
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
