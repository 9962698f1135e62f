"""Names are strict UTF-8 and one path segment: invalid escapes never collapse into U+FFFD,
an encoded '/' never splits or joins a name, and every path answers 405 with the right `Allow`
for a method it does not serve."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from ephemeral_broker.api.app import create_app
from ephemeral_broker.settings import BrokerSettings
from tests.support.asgi import asgi_call
from tests.support.brokers import BrokerProcess
from tests.support.responses import split_response

pytestmark = pytest.mark.anyio

BAD_UTF8 = {
    "%FF": "FF",
    "%FE": "FE",
    "%80": "80",  # a lone continuation byte
    "%C0": "C0",  # a lead byte with nothing after it
    "%C0%AF": "C0",  # an overlong '/'
    "%ED%A0%80": "ED",  # a UTF-8-encoded surrogate
    "%E2%82": "E2 82",  # a truncated sequence
    "ok%FFok": "FF",
}


@pytest.fixture
def app() -> Any:
    return create_app(BrokerSettings(require_ttl=False))


@pytest.mark.parametrize("escape", list(BAD_UTF8))
@pytest.mark.parametrize(
    ("method", "template", "body"),
    [
        ("PUT", "/v1/keys/{}", b'{"value": 1}'),
        ("GET", "/v1/keys/{}", b""),
        ("DELETE", "/v1/keys/{}", b""),
        ("POST", "/v1/keys/{}/incr", b"{}"),
        ("POST", "/v1/leases/{}", b'{"worker_id": "w"}'),
        ("POST", "/v1/leases/p/{}/renew", b"{}"),
        ("DELETE", "/v1/leases/p/{}", b""),
        ("GET", "/v1/leases/{}", b""),
        ("GET", "/v1/keys?prefix={}", b""),
        ("DELETE", "/v1/leases?worker_id={}", b""),
    ],
)
async def test_invalid_utf8_in_a_name_is_invalid_key(
    app: Any, method: str, template: str, body: bytes, escape: str
) -> None:
    result = await asgi_call(app, method, template.format(escape), chunks=(body,) if body else ())
    assert result.status == 422, result.body
    problem = result.json()
    assert problem["code"] == "invalid_key"
    assert f"is not valid UTF-8 (bytes {BAD_UTF8[escape]})" in problem["detail"]


async def test_the_replacement_character_is_a_name_of_its_own(app: Any) -> None:
    put = await asgi_call(app, "PUT", "/v1/keys/%EF%BF%BD", chunks=(b'{"value": "fffd"}',))
    assert put.status == 201, put.body
    for alias in ("%FF", "%C0", "%80"):
        assert (await asgi_call(app, "GET", f"/v1/keys/{alias}")).status == 422
    got = await asgi_call(app, "GET", "/v1/keys/%EF%BF%BD")
    assert got.json()["key"] == "\ufffd" and got.json()["value"] == "fffd"
    accented = await asgi_call(app, "PUT", "/v1/keys/%C3%A9t%C3%A9", chunks=(b'{"value": 1}',))
    assert accented.status == 201 and accented.json()["key"] == "été"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/keys/a%2Fb"),
        ("GET", "/v1/keys/a%2fb"),
        ("POST", "/v1/leases/p%2Fq"),
        ("DELETE", "/v1/leases/p/w%2F1"),
        ("GET", "/v1/keys?prefix=a%2Fb"),
    ],
)
async def test_an_encoded_slash_is_refused_as_part_of_a_name(
    app: Any, method: str, path: str
) -> None:
    result = await asgi_call(app, method, path, chunks=(b'{"value": 1, "worker_id": "w"}',))
    assert result.status == 422, result.body
    assert result.json()["code"] == "invalid_key"
    assert "contains '/' (sent as %2F)" in result.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/keys/0/touch", "POST"),
        ("GET", "/v1/keys/0/incr", "POST"),
        ("OPTIONS", "/v1/keys/0/incr", "POST"),
        ("OPTIONS", "/v1/keys/0", "DELETE, GET, PUT"),
        ("POST", "/v1/keys/0", "DELETE, GET, PUT"),
        ("DELETE", "/v1/leases/p/w/renew", "POST"),
        ("PUT", "/v1/leases/p/w", "DELETE"),
        ("PUT", "/v1/leases/p", "GET, POST"),
        ("PUT", "/v1/leases", "DELETE, GET"),
        ("POST", "/v1/keys", "GET"),
    ],
)
async def test_every_path_answers_405_with_exactly_its_methods(
    app: Any, method: str, path: str, allow: str
) -> None:
    result = await asgi_call(app, method, path)
    assert result.status == 405, result.body
    assert result.json()["code"] == "method_not_allowed"
    assert result.headers["allow"] == allow


@pytest.mark.parametrize("path", ["/v1/keys/a/b", "/v1/keys/a/b/c", "/v1/leases/p/w/x/renew"])
async def test_a_path_with_more_segments_is_no_endpoint(app: Any, path: str) -> None:
    result = await asgi_call(app, "GET", path)
    assert result.status == 404
    assert result.json()["code"] == "route_not_found"


def test_over_a_real_socket_ff_and_c0_never_reach_the_same_key(broker: BrokerProcess) -> None:
    def raw(request: bytes) -> tuple[int, bytes]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(20)
            sock.connect(str(broker.socket))
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        status, _, body = split_response(data)
        return status, body

    body = b'{"value": "secret", "ttl_ms": 60000}'
    put = (
        b"PUT /v1/keys/%%FF HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    )
    status, answer = raw(put % len(body) + body)
    assert status == 422 and b"invalid_key" in answer
    status, answer = raw(b"GET /v1/keys/%C0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 422 and b"secret" not in answer
