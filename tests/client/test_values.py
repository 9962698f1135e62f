"""What the clients refuse to send (defect 2) and what they cannot read back (defect
6): both are reported by an error that names the key."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ephemeral_broker_client import BrokerError, InvalidResponse
from tests.support.clients import Clients
from tests.support.raw_server import RawServer, http_answer


def _circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


UNENCODABLE: dict[str, Any] = {
    "object": object(),
    "set": {1, 2},
    "bytes": b"raw",
    "circular": _circular(),
    "nan": math.nan,
    "infinity": {"deep": [1, {"x": -math.inf}]},
    "int-key": {1: "one"},
    "huge-int": 2**64,
    "lone-surrogate": "\ud800",
}


@pytest.mark.defect(2)
@pytest.mark.parametrize("case", sorted(UNENCODABLE))
def test_unencodable_values_raise_type_error_naming_the_key_before_any_io(
    short_tmp: Path, clients: Clients, case: str
) -> None:
    """Defect 2: a circular or non-serialisable value crashed the Node client with a
    message that named neither the key nor the operation."""
    transport = clients.uds_transport(short_tmp / "never-used.sock")
    b = clients.open(short_tmp / "never-used.sock", transport=transport)
    key = f"value-{case}"
    with pytest.raises(TypeError) as caught:
        b.set(key, UNENCODABLE[case], 1000)
    message = str(caught.value)
    assert f"key '{key}'" in message
    assert "cannot be encoded as JSON" in message
    assert transport.requests == []  # nothing was sent


@pytest.mark.defect(2)
def test_nan_is_refused_not_silently_stored_as_null(short_tmp: Path, clients: Clients) -> None:
    transport = clients.uds_transport(short_tmp / "never-used.sock")
    b = clients.open(short_tmp / "never-used.sock", transport=transport)
    with pytest.raises(TypeError, match=r"value\['a'\]\[1\] is NaN or infinite"):
        b.set("k", {"a": [None, math.nan]}, 1000)
    with pytest.raises(TypeError, match=r"the incr of key 'k' .* by is NaN or infinite"):
        b.incr("k", math.inf)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"the lease request for pool 'p' .* object"):
        b.lease("p", "w", ttl_ms=object())  # type: ignore[arg-type]
    assert transport.requests == []


# ---- answers that cannot be decoded --------------------------------------------------------

GARBLED: dict[str, bytes] = {
    "not-json": http_answer(200, b"<html>surprise</html>", "text/html"),
    "not-an-object": http_answer(200, b"[1, 2, 3]"),
    "no-value": http_answer(200, b'{"key": "k", "version": 1, "expires_at": 1}'),
    "version-not-int": http_answer(200, b'{"key":"k","value":1,"version":"1","expires_at":1}'),
    "corrupt-gzip": http_answer(
        200, b"\x1f\x8b\x08\x00garbage", "application/json", "content-encoding: gzip"
    ),
    "truncated-json": http_answer(200, b'{"key": "k", "value": [1, 2'),
    "error-not-problem-json": http_answer(500, b"<h1>Internal Server Error</h1>", "text/html"),
}


@pytest.fixture
def garbled(short_tmp: Path, request: pytest.FixtureRequest) -> Iterator[RawServer]:
    answer = GARBLED[request.param]
    server = RawServer(short_tmp / "garbled.sock", lambda _: answer)
    yield server
    server.close()


@pytest.mark.defect(6)
@pytest.mark.parametrize("garbled", sorted(GARBLED), indirect=True)
def test_an_answer_that_cannot_be_decoded_names_the_key(
    garbled: RawServer, clients: Clients
) -> None:
    """Defect 6: a corrupt compressed value failed with an opaque "invalid input" that
    named no key."""
    b = clients.open(garbled.path, timeout=2)
    with pytest.raises(InvalidResponse) as caught:
        b.get_item("the-key")
    error = caught.value
    assert isinstance(error, BrokerError)
    assert error.code == "invalid_response"
    assert "get of key 'the-key'" in error.detail
    assert len(garbled.requests) == 1  # a bad answer is not a reason to ask again


@pytest.mark.defect(6)
def test_malformed_list_and_lease_answers(short_tmp: Path, clients: Clients) -> None:
    def respond(request: bytes) -> bytes:
        if request.startswith(b"GET /v1/keys?"):
            return http_answer(200, b'{"keys": [{"key": "a", "version": 1}]}')
        return http_answer(201, b'{"pool": "p", "value": 0}')

    server = RawServer(short_tmp / "garbled.sock", respond)
    try:
        b = clients.open(server.path, timeout=2)
        with pytest.raises(InvalidResponse, match=r"list of keys with prefix 'pre'.*'expires_at'"):
            b.list("pre")
        with pytest.raises(InvalidResponse, match="lease in pool 'gpu'"):
            b.lease("gpu", "w1")
    finally:
        server.close()
