"""The keys API in-process (httpx ASGITransport, fake clock): success paths and edge cases."""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import orjson
import pytest

from ephemeral_broker.clock import FakeClock
from tests.support.asgi import AppFactory
from tests.support.responses import assert_problem

pytestmark = pytest.mark.anyio


async def put(
    api: httpx.AsyncClient, key: str, value: Any, ttl_ms: int | None = 60_000, **kwargs: Any
) -> httpx.Response:
    body: dict[str, Any] = {"value": value}
    if ttl_ms is not None:
        body["ttl_ms"] = ttl_ms
    return await api.put(f"/v1/keys/{key}", json=body, **kwargs)


async def test_put_creates_201_then_replaces_200_with_etags(
    api: httpx.AsyncClient, clock: FakeClock
) -> None:
    created = await put(api, "token", {"a": 1})
    assert created.status_code == 201
    body = created.json()
    assert body == {
        "key": "token",
        "version": body["version"],
        "expires_at": clock.now_ms() + 60_000,
        "ttl_ms": 60_000,
    }
    assert created.headers["etag"] == f'"{body["version"]}"'
    replaced = await put(api, "token", {"a": 2})
    assert replaced.status_code == 200
    assert replaced.json()["version"] > body["version"]


@pytest.mark.parametrize(
    "value",
    [
        {"nested": {"list": [1, 2.5, -3, None, True, False, "ü✓🔥"]}},
        [],
        {},
        "",
        "plain string",
        0,
        -1.25e-7,
        9_223_372_036_854_775_807,
        None,
        True,
        False,
    ],
)
async def test_get_returns_an_equal_value(api: httpx.AsyncClient, value: Any) -> None:
    await put(api, "v", value)
    got = await api.get("/v1/keys/v")
    assert got.status_code == 200
    assert got.json()["value"] == value
    assert got.headers["content-type"] == "application/json"


async def test_get_splices_the_stored_bytes_without_reencoding(api: httpx.AsyncClient) -> None:
    # Key order and float spelling survive exactly as orjson canonicalised them at PUT.
    await api.put("/v1/keys/k", content=b'{"value": {"z": 1, "a": 2, "f": 1.5}, "ttl_ms": 100}')
    raw = (await api.get("/v1/keys/k")).content
    assert b'"value":{"z":1,"a":2,"f":1.5}' in raw


async def test_key_expires_on_the_fake_clock(api: httpx.AsyncClient, clock: FakeClock) -> None:
    await put(api, "short", 1, ttl_ms=50)
    clock.advance(49)
    assert (await api.get("/v1/keys/short")).status_code == 200
    clock.advance(1)
    missing = await api.get("/v1/keys/short")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    assert (await api.get("/v1/keys")).json() == {"keys": []}


async def test_conditional_requests(api: httpx.AsyncClient) -> None:
    version = (await put(api, "c", 1)).json()["version"]
    refused = await put(api, "c", 2, headers={"If-None-Match": "*"})
    assert refused.status_code == 412
    assert refused.json()["code"] == "precondition_failed"
    stale = await put(api, "c", 2, headers={"If-Match": f'"{version + 1}"'})
    assert stale.status_code == 412
    ok = await put(api, "c", 2, headers={"If-Match": f'"{version}"'})
    assert ok.status_code == 200
    new_version = ok.json()["version"]
    # If-Match compares strongly (RFC 9110): a weak tag never matches, even the current version.
    weak = await put(api, "c", 3, headers={"If-Match": f'W/"{new_version}"'})
    assert weak.status_code == 412
    weak_list = await put(api, "c", 3, headers={"If-Match": f'W/"1", "{new_version}"'})
    assert weak_list.status_code == 200
    # Conditional GET: the current ETag answers 304 with no body.
    etag = weak_list.headers["etag"]
    not_modified = await api.get("/v1/keys/c", headers={"If-None-Match": etag})
    assert (not_modified.status_code, not_modified.content) == (304, b"")
    assert not_modified.headers["etag"] == etag
    # If-None-Match compares weakly: W/"<version>" names the current version as well.
    weak_get = await api.get("/v1/keys/c", headers={"If-None-Match": "W/" + etag})
    assert weak_get.status_code == 304
    weak_create = await put(api, "c", 4, headers={"If-None-Match": "W/" + etag})
    assert weak_create.status_code == 412
    # A weak tag in a conditional delete never matches either.
    assert (await api.delete("/v1/keys/c", headers={"If-Match": "W/" + etag})).status_code == 412
    # Delete guarded by If-Match.
    wrong = await api.delete("/v1/keys/c", headers={"If-Match": '"1"'})
    assert wrong.status_code == 412
    assert (await api.delete("/v1/keys/c", headers={"If-Match": etag})).json() == {"deleted": True}


async def test_malformed_conditional_header_is_a_validation_error(api: httpx.AsyncClient) -> None:
    response = await put(api, "c", 1, headers={"If-Match": "version-7"})
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "validation_error"
    assert problem["detail"] == (
        'If-Match must be * or a list of quoted versions such as "7", as the broker sends them '
        "in ETag, not 'version-7'"
    )


async def test_delete_is_idempotent(api: httpx.AsyncClient) -> None:
    await put(api, "d", 1)
    assert (await api.delete("/v1/keys/d")).json() == {"deleted": True}
    second = await api.delete("/v1/keys/d")
    assert (second.status_code, second.json()) == (200, {"deleted": False})


async def test_list_by_prefix_with_limit_and_no_values(api: httpx.AsyncClient) -> None:
    for key in ["job-2", "job-1", "other", "job-10"]:
        await put(api, key, {"secret": key})
    listed = (await api.get("/v1/keys", params={"prefix": "job-", "limit": 2})).json()
    assert [k["key"] for k in listed["keys"]] == ["job-1", "job-10"]
    assert set(listed["keys"][0]) == {"key", "version", "expires_at", "size"}
    everything = (await api.get("/v1/keys")).json()["keys"]
    assert [k["key"] for k in everything] == ["job-1", "job-10", "job-2", "other"]
    assert b"secret" not in (await api.get("/v1/keys")).content


async def test_incr_and_touch(api: httpx.AsyncClient, clock: FakeClock) -> None:
    first = await api.post("/v1/keys/n/incr", json={"ttl_ms": 1000})
    assert first.json()["value"] == 1
    assert (await api.post("/v1/keys/n/incr", json={"by": 41})).json()["value"] == 42
    assert (await api.post("/v1/keys/n/incr", json={"by": -50})).json()["value"] == -8
    touched = await api.post("/v1/keys/n/touch", json={"ttl_ms": 5000})
    assert touched.json()["expires_at"] == clock.now_ms() + 5000
    assert (await api.get("/v1/keys/n")).json()["value"] == -8


async def test_incr_with_an_empty_body_adds_one(make_api: AppFactory) -> None:
    async with make_api(require_ttl=False) as api:
        assert (await api.post("/v1/keys/n/incr")).json()["value"] == 1
        assert (await api.post("/v1/keys/n/incr", content=b"")).json()["value"] == 2


async def test_incr_on_a_non_integer_is_409(api: httpx.AsyncClient) -> None:
    await put(api, "s", "7")
    response = await api.post("/v1/keys/s/incr", json={})
    assert response.status_code == 409
    problem = response.json()
    assert problem["code"] == "not_an_integer"
    assert "'s'" in problem["detail"] and "string" in problem["detail"]


async def test_touch_of_a_missing_key_is_404(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/keys/none/touch", json={"ttl_ms": 10})
    assert (response.status_code, response.json()["code"]) == (404, "not_found")


async def test_body_is_json_whatever_the_content_type(api: httpx.AsyncClient) -> None:
    for content_type in ("application/x-www-form-urlencoded", "text/plain", "nonsense/x"):
        response = await api.put(
            "/v1/keys/ct",
            content=b'{"value": "ok", "ttl_ms": 1000}',
            headers={"Content-Type": content_type},
        )
        assert response.status_code in (200, 201), content_type


async def test_percent_encoded_unicode_keys(api: httpx.AsyncClient) -> None:
    assert (await put(api, "%C3%BC-%E2%9C%93", 1)).status_code == 201
    assert (await api.get("/v1/keys/ü-✓")).json()["key"] == "ü-✓"


async def test_gzip_response_when_asked_and_large_enough(api: httpx.AsyncClient) -> None:
    await put(api, "big", "x" * 5000)
    await put(api, "small", "x")
    big = await api.get("/v1/keys/big", headers={"Accept-Encoding": "gzip"})
    assert big.headers["content-encoding"] == "gzip"
    assert int(big.headers["content-length"]) < 1000
    assert big.json()["value"] == "x" * 5000  # httpx decodes it
    small = await api.get("/v1/keys/small", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers
    plain = await api.get("/v1/keys/big", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers


async def test_gzip_responses_are_off_when_the_threshold_is_zero(make_api: AppFactory) -> None:
    async with make_api(compression_threshold=0) as api:
        await put(api, "big", "x" * 5000)
        response = await api.get("/v1/keys/big", headers={"Accept-Encoding": "gzip"})
        assert "content-encoding" not in response.headers


async def test_gzip_and_deflate_request_bodies_are_decoded(api: httpx.AsyncClient) -> None:
    body = orjson.dumps({"value": "y" * 3000, "ttl_ms": 1000})
    zipped = await api.put(
        "/v1/keys/gz", content=gzip.compress(body), headers={"Content-Encoding": "gzip"}
    )
    assert zipped.status_code == 201
    import zlib

    for packed in (zlib.compress(body), zlib.compress(body)[2:-4]):  # zlib and raw deflate
        response = await api.put(
            "/v1/keys/df", content=packed, headers={"Content-Encoding": "deflate"}
        )
        assert response.status_code in (200, 201)
    assert (await api.get("/v1/keys/df")).json()["value"] == "y" * 3000


@pytest.mark.defect(27)
async def test_request_id_is_echoed_when_valid_and_replaced_when_not(
    api: httpx.AsyncClient,
) -> None:
    """Defect 27: the Node broker generated correlation ids but never returned them."""
    ok = await api.get("/v1/ping", headers={"X-Request-ID": "ci-step-7:worker.3"})
    assert ok.headers["x-request-id"] == "ci-step-7:worker.3"
    for bad in ("", "has space", "x" * 129, "semi;colon", "ü"):
        response = await api.get("/v1/ping", headers=[(b"X-Request-ID", bad.encode("utf-8"))])
        new_id = response.headers["x-request-id"]
        assert new_id != bad and 1 <= len(new_id) <= 128
    generated = {(await api.get("/v1/ping")).headers["x-request-id"] for _ in range(20)}
    assert len(generated) == 20


@pytest.mark.defect(10)
async def test_a_put_serialises_the_value_exactly_once(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 10: objects were serialised once to check their size and again to store.
    The keys route encodes the value once; the store sizes, compresses and keeps those bytes."""
    from ephemeral_broker.api.routes import keys as keys_module

    calls: list[object] = []
    real = orjson.dumps

    class CountingOrjson:
        JSONDecodeError = orjson.JSONDecodeError

        @staticmethod
        def dumps(value: Any, *args: Any, **kwargs: Any) -> bytes:
            calls.append(value)
            return real(value, *args, **kwargs)

        loads = staticmethod(orjson.loads)

    monkeypatch.setattr(keys_module, "orjson", CountingOrjson)
    value = {"rows": [{"id": i, "name": f"row {i}"} for i in range(2000)]}
    response = await put(api, "big", value)
    assert response.status_code == 201
    assert [c for c in calls if c == value] == [value]


@pytest.mark.parametrize("header", ["7", "W/7", '"7', '7"', '""', '"7"x', '"7",8'])
async def test_an_etag_must_be_quoted_as_the_broker_sends_it(
    api: httpx.AsyncClient, header: str
) -> None:
    await put(api, "q", 1)
    for method in ("PUT", "DELETE"):
        response = await api.request(
            method, "/v1/keys/q", json={"value": 2, "ttl_ms": 1000}, headers={"If-Match": header}
        )
        assert_problem(response, 422, "validation_error")
    got = await api.get("/v1/keys/q", headers={"If-None-Match": header})
    assert_problem(got, 422, "validation_error")


async def test_a_json_number_without_a_fraction_is_an_integer(api: httpx.AsyncClient) -> None:
    # JSON has one number type, and JSON Schema's "integer" admits 100.0: so does the broker.
    created = await api.put("/v1/keys/n", json={"value": 0, "ttl_ms": 100.0})
    assert created.status_code == 201 and created.json()["ttl_ms"] == 100
    incr = await api.post("/v1/keys/n/incr", json={"by": 2.0, "ttl_ms": 5e3})
    assert incr.json()["value"] == 2
    lease = await api.post("/v1/leases/p", json={"worker_id": "w", "size": 8.0, "wait_ms": 0.0})
    assert lease.status_code == 201
    assert_problem(
        await api.put("/v1/keys/n", json={"value": 0, "ttl_ms": 1.5}), 422, "invalid_ttl"
    )
    # 1e20 is the integer 10^20, beyond 64 bits: refused as its digits would be, wherever it
    # is in the body (a value included), before any field is looked at.
    huge = await api.post("/v1/keys/n/incr", json={"by": 1e20})
    assert "outside the 64-bit range" in assert_problem(huge, 400, "invalid_json")["detail"]
    big_value = await api.put("/v1/keys/n", content=b'{"value": 6.6e271, "ttl_ms": 100}')
    assert_problem(big_value, 400, "invalid_json")
    small = await api.put("/v1/keys/n", content=b'{"value": [1e18, 1.5, 1e-5], "ttl_ms": 100}')
    assert small.status_code == 200, small.text
    token = await api.delete("/v1/leases/p/w", params={"token": str(2**63)})
    assert "query parameter 'token'" in assert_problem(token, 422, "validation_error")["detail"]


async def test_an_empty_conditional_header_is_no_condition(api: httpx.AsyncClient) -> None:
    # An empty list of entity tags: the same as sending no header (as the document says).
    created = await api.put(
        "/v1/keys/e", json={"value": 1, "ttl_ms": 1000}, headers={"If-Match": ""}
    )
    assert created.status_code == 201
    got = await api.get("/v1/keys/e", headers={"If-None-Match": ""})
    assert got.status_code == 200


async def test_an_integer_just_below_64_bits_is_refused_not_rounded(
    api: httpx.AsyncClient,
) -> None:
    # -2^63 - 1 has only 19 digits; orjson would read it as a float and lose the last digit.
    body = b'{"value": -9223372036854775809, "ttl_ms": 1000}'
    assert_problem(await api.put("/v1/keys/big", content=body), 400, "invalid_json")
    incr = b'{"by": -9223372036854775809, "ttl_ms": 1000}'
    assert_problem(await api.post("/v1/keys/big/incr", content=incr), 400, "invalid_json")
    edge = b'{"value": -9223372036854775808, "ttl_ms": 1000}'
    assert (await api.put("/v1/keys/big", content=edge)).status_code == 201
    assert (await api.get("/v1/keys/big")).json()["value"] == -(2**63)
