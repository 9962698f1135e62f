"""Every row of SPEC's error table that the keys and system API can produce, and the rule that
no input, however malformed, yields a 500 or stops the broker."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson
import pytest

from ephemeral_broker.api.app import create_app
from ephemeral_broker.clock import FakeClock
from ephemeral_broker.settings import BrokerSettings
from ephemeral_broker.store import MemoryStore, StoreLimits
from tests.support.asgi import AppFactory, asgi_call
from tests.support.responses import assert_problem

pytestmark = pytest.mark.anyio


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def test_400_invalid_json(api: httpx.AsyncClient) -> None:
    bodies = [
        b"{not json",
        b'{"value": NaN, "ttl_ms": 100}',
        b'{"value": Infinity, "ttl_ms": 100}',
        b'{"value": -Infinity, "ttl_ms": 100}',
        b'{"value": 1, "ttl_ms": 100} trailing',
        b'{"value": "\xff\xfe", "ttl_ms": 100}',  # not UTF-8
        b'{"value": 18446744073709551616, "ttl_ms": 100}',  # beyond 64 bits
        b"",
        b"   ",
        ("{" + '"value": ' + nested(10_000) + ', "ttl_ms": 100}').encode(),
        ('{"value": ' + nested(64) + ', "ttl_ms": 100}').encode(),  # 65 levels with the body
    ]
    for body in bodies:
        problem = assert_problem(await api.put("/v1/keys/k", content=body), 400, "invalid_json")
        assert "JSON" in problem["detail"] or "json" in problem["detail"]


async def test_nesting_up_to_64_levels_is_fine(api: httpx.AsyncClient) -> None:
    body = ('{"value": ' + nested(63) + ', "ttl_ms": 100}').encode()
    assert (await api.put("/v1/keys/k", content=body)).status_code == 201
    wide = orjson.dumps({"value": [[1]] * 1000 + [{"a": [{}]}] * 100, "ttl_ms": 100})
    assert (await api.put("/v1/keys/wide", content=wide)).status_code == 201


async def test_404_not_found_names_the_key(api: httpx.AsyncClient) -> None:
    problem = assert_problem(await api.get("/v1/keys/ghost"), 404, "not_found")
    assert "'ghost'" in problem["detail"]


async def test_404_route_not_found_and_405(api: httpx.AsyncClient) -> None:
    problem = assert_problem(await api.get("/v2/keys/x"), 404, "route_not_found")
    assert "/v2/keys/x" in problem["detail"]
    response = await api.post("/v1/keys/x", json={})
    problem = assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "DELETE, GET, PUT"
    assert "DELETE, GET, PUT" in problem["detail"]
    assert_problem(await api.patch("/v1/health"), 405, "method_not_allowed")


async def test_409_not_an_integer(api: httpx.AsyncClient) -> None:
    await api.put("/v1/keys/f", json={"value": 1.5, "ttl_ms": 100})
    assert_problem(await api.post("/v1/keys/f/incr", json={}), 409, "not_an_integer")


async def test_412_precondition_failed(api: httpx.AsyncClient) -> None:
    await api.put("/v1/keys/p", json={"value": 1, "ttl_ms": 100})
    response = await api.put(
        "/v1/keys/p", json={"value": 2, "ttl_ms": 100}, headers={"If-None-Match": "*"}
    )
    problem = assert_problem(response, 412, "precondition_failed")
    assert "'p'" in problem["detail"]


async def test_413_value_one_byte_over_max_value_size(make_api: AppFactory) -> None:
    async with make_api(max_value_size=12) as api:
        # "ü" is 2 bytes of UTF-8: "üüüüü" is 10 bytes + 2 quotes = 12, the limit exactly.
        ok = await api.put("/v1/keys/u", json={"value": "üüüüü", "ttl_ms": 100})
        assert ok.status_code == 201
        over = await api.put("/v1/keys/u", json={"value": "üüüüüx", "ttl_ms": 100})
        problem = assert_problem(over, 413, "too_large")
        assert "13 bytes" in problem["detail"] and "max_value_size of 12" in problem["detail"]
        assert (await api.get("/v1/keys/u")).json()["value"] == "üüüüü"  # nothing lost


async def test_413_body_over_max_request_size(make_api: AppFactory) -> None:
    async with make_api(max_request_size=100) as api:
        body = orjson.dumps({"value": "x" * 200, "ttl_ms": 100})
        response = await api.put("/v1/keys/big", content=body)
        problem = assert_problem(response, 413, "too_large")
        assert "max_request_size of 100 bytes" in problem["detail"]
        assert response.headers["connection"] == "close"


async def test_415_unsupported_encoding(api: httpx.AsyncClient) -> None:
    for encoding in ("br", "compress", "gzip, br", "zstd"):
        response = await api.put(
            "/v1/keys/e", content=b'{"value":1}', headers={"Content-Encoding": encoding}
        )
        problem = assert_problem(response, 415, "unsupported_encoding")
        assert encoding in problem["detail"]


async def test_corrupt_gzip_body_is_400_not_500(api: httpx.AsyncClient) -> None:
    for body in (b"\x1f\x8b\x08\x00garbage", b"not gzip at all"):
        response = await api.put("/v1/keys/e", content=body, headers={"Content-Encoding": "gzip"})
        assert_problem(response, 400, "invalid_json")
    import gzip

    truncated = gzip.compress(b'{"value": 1, "ttl_ms": 100}')[:-6]
    response = await api.put("/v1/keys/e", content=truncated, headers={"Content-Encoding": "gzip"})
    assert "truncated" in assert_problem(response, 400, "invalid_json")["detail"]


async def test_422_ttl_required(api: httpx.AsyncClient) -> None:
    problem = assert_problem(await api.put("/v1/keys/t", json={"value": 1}), 422, "ttl_required")
    assert "'t'" in problem["detail"]
    assert_problem(await api.post("/v1/keys/n/incr", json={}), 422, "ttl_required")
    assert_problem(await api.post("/v1/keys/n/touch", json={}), 422, "ttl_required")


@pytest.mark.parametrize("ttl", ["100", True, False, 1.5, 0, -1, 86_400_001, [1], {"ms": 1}])
async def test_422_invalid_ttl(api: httpx.AsyncClient, ttl: Any) -> None:
    await api.put("/v1/keys/t", json={"value": 1, "ttl_ms": 1000})
    for method, url, body in [
        ("PUT", "/v1/keys/t", {"value": 2, "ttl_ms": ttl}),
        ("POST", "/v1/keys/t/touch", {"ttl_ms": ttl}),
        ("POST", "/v1/keys/t/incr", {"ttl_ms": ttl}),
    ]:
        problem = assert_problem(await api.request(method, url, json=body), 422, "invalid_ttl")
        assert "ttl_ms" in problem["detail"]
    assert (await api.get("/v1/keys/t")).json()["value"] == 1  # nothing changed


async def test_ttl_null_means_not_given(api: httpx.AsyncClient) -> None:
    # null is "no ttl_ms": required for a set (ttl_required), optional for incr of a live key.
    await api.put("/v1/keys/t", json={"value": 1, "ttl_ms": 1000})
    response = await api.put("/v1/keys/t", json={"value": 2, "ttl_ms": None})
    assert_problem(response, 422, "ttl_required")
    assert (await api.post("/v1/keys/t/incr", json={"ttl_ms": None})).json()["value"] == 2
    assert_problem(await api.post("/v1/keys/t/touch", json={"ttl_ms": None}), 422, "invalid_ttl")


@pytest.mark.parametrize(
    "key",
    [
        "x" * 513,
        "é" * 257,
        "with%20space",
        "tab%09",
        "nl%0A",
        "nul%00",
        "del%7F",
        "c1%C2%85",
        "nbsp%C2%A0",
        "a%2Fb",
        "",
    ],
)
async def test_422_invalid_key(api: httpx.AsyncClient, key: str) -> None:
    for method, url in [
        ("PUT", f"/v1/keys/{key}"),
        ("GET", f"/v1/keys/{key}"),
        ("DELETE", f"/v1/keys/{key}"),
    ]:
        response = await api.request(method, url, json={"value": 1, "ttl_ms": 100})
        assert_problem(response, 422, "invalid_key")


async def test_a_name_is_one_path_segment(api: httpx.AsyncClient) -> None:
    # A literal '/' separates segments: /v1/keys/a/b is no endpoint, never the key "a/b".
    for method in ("PUT", "GET", "DELETE"):
        response = await api.request(method, "/v1/keys/a/b", json={"value": 1, "ttl_ms": 100})
        assert_problem(response, 404, "route_not_found")


async def test_dot_keys_and_trailing_newlines_are_refused_at_the_asgi_level() -> None:
    # httpx (like browsers) resolves "/v1/keys/.." to "/v1/" before sending; curl
    # --path-as-is and raw sockets do not. Call the app with the exact paths.
    app = create_app(BrokerSettings())
    for path in (
        "/v1/keys/.",
        "/v1/keys/..",
        "/v1/keys/%2E",
        "/v1/keys/%2E%2E",
        "/v1/keys/a%0A",
        "/v1/keys/a%0A/incr",
    ):
        for method, body in [
            ("GET", b""),
            ("PUT", b'{"value": 1, "ttl_ms": 100}'),
            ("DELETE", b""),
            ("POST", b'{"ttl_ms": 100}'),
        ]:
            result = await asgi_call(
                app, method, path, chunks=(body,), headers=(("content-length", str(len(body))),)
            )
            if result.status == 405:
                continue  # e.g. POST on a plain key path
            assert (result.status, result.json()["code"]) == (422, "invalid_key"), (method, path)


async def test_invalid_prefix_is_invalid_key(api: httpx.AsyncClient) -> None:
    assert_problem(await api.get("/v1/keys", params={"prefix": "a b"}), 422, "invalid_key")


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("PUT", "/v1/keys/k", {"value": 1, "ttl_ms": 100, "extra": True}),
        ("PUT", "/v1/keys/k", {"ttl_ms": 100}),
        ("PUT", "/v1/keys/k", [1, 2]),
        ("PUT", "/v1/keys/k", "just a string"),
        ("PUT", "/v1/keys/k", None),
        ("POST", "/v1/keys/k/incr", {"by": "1", "ttl_ms": 100}),
        ("POST", "/v1/keys/k/incr", {"by": 1.5, "ttl_ms": 100}),
        ("POST", "/v1/keys/k/incr", {"by": True, "ttl_ms": 100}),
        ("POST", "/v1/keys/k/incr", {"ttl_ms": 100, "step": 2}),
        ("POST", "/v1/keys/k/touch", {"ttl_ms": 100, "value": 1}),
    ],
)
async def test_422_validation_error_for_body_fields(
    api: httpx.AsyncClient, method: str, url: str, body: Any
) -> None:
    response = await api.request(method, url, content=orjson.dumps(body))
    problem = assert_problem(response, 422, "validation_error")
    assert "errors" in problem or "JSON object" in problem["detail"]


@pytest.mark.parametrize("query", ["limit=0", "limit=10001", "limit=abc", "limit=1.5"])
async def test_422_validation_error_for_query_parameters(
    api: httpx.AsyncClient, query: str
) -> None:
    problem = assert_problem(await api.get(f"/v1/keys?{query}"), 422, "validation_error")
    assert problem["errors"][0]["loc"] == ["query", "limit"]


async def test_validation_errors_never_echo_the_value(api: httpx.AsyncClient) -> None:
    response = await api.put(
        "/v1/keys/k", json={"value": "TOP-SECRET-VALUE", "ttl_ms": "soon", "bogus": 1}
    )
    assert response.status_code == 422
    assert b"TOP-SECRET-VALUE" not in response.content


async def test_503_draining(api: httpx.AsyncClient) -> None:
    runtime = api._transport.app.state.runtime  # type: ignore[attr-defined]
    runtime.begin_drain()
    response = await api.get("/v1/keys/k")
    assert_problem(response, 503, "draining")
    assert response.headers["retry-after"] == "1"
    assert_problem(await api.get("/readyz"), 503, "draining")
    assert (await api.get("/healthz")).status_code == 200
    assert (await api.get("/v1/health")).status_code == 503


async def test_507_max_items(make_api: AppFactory) -> None:
    async with make_api(max_items=2) as api:
        for key in ("a", "b"):
            await api.put(f"/v1/keys/{key}", json={"value": 1, "ttl_ms": 100})
        response = await api.put("/v1/keys/c", json={"value": 1, "ttl_ms": 100})
        problem = assert_problem(response, 507, "max_items")
        assert "'c'" in problem["detail"] and "max_items" in problem["detail"]
        assert_problem(await api.post("/v1/keys/d/incr", json={"ttl_ms": 100}), 507, "max_items")
        replaced = await api.put("/v1/keys/a", json={"value": 2, "ttl_ms": 100})
        assert replaced.status_code == 200


class _ExplodingStore(MemoryStore):
    async def get(self, key: str) -> Any:
        raise RuntimeError(f"bug while reading {key}: internal state SECRET-INTERNAL")


async def test_500_internal_error_has_no_traceback_and_is_logged_with_the_request_id(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    settings = BrokerSettings()
    app = create_app(settings, store=_ExplodingStore(StoreLimits.from_settings(settings), clock))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as api:
        with caplog.at_level(logging.ERROR, logger="ephemeral_broker"):
            response = await api.get("/v1/keys/k", headers={"X-Request-ID": "trace-me"})
        problem = assert_problem(response, 500, "internal_error")
        assert "SECRET-INTERNAL" not in response.text
        assert "Traceback" not in response.text
        assert "trace-me" in problem["detail"]
        logged = [r for r in caplog.records if getattr(r, "fields", {}).get("request_id")]
        assert logged and logged[0].fields["request_id"] == "trace-me"  # type: ignore[attr-defined]
        # The broker keeps serving after a bug in one request.
        assert (await api.get("/v1/ping")).status_code == 200


async def test_no_malformed_input_yields_a_500(api: httpx.AsyncClient) -> None:
    urls = ["/v1/keys/k", "/v1/keys/k/incr", "/v1/keys/k/touch", "/v1/keys", "/v1/health"]
    bodies: list[bytes] = [
        b"",
        b"null",
        b"[]",
        b"{}",
        b'{"value":',
        b"\x00\x01\x02",
        b'{"value": 1, "ttl_ms": 1e400}',
        b'{"value": 1, "ttl_ms": 100, "ttl_ms": -5}',
        b'{"by": 99999999999999999999}',
        b'{"by": -9223372036854775808, "ttl_ms": 100}',
        b'{"value": "\\ud800", "ttl_ms": 100}',
        orjson.dumps({"value": {"k" * 1000: "v"}, "ttl_ms": 100}),
        b"{" * 100_000,
    ]
    for url in urls:
        for method in ("GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"):
            for body in bodies:
                response = await api.request(method, url, content=body)
                assert response.status_code < 500, (method, url, body[:40], response.text)
    assert (await api.get("/healthz")).json() == {"status": "ok"}
