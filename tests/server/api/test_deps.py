"""The response helpers' tables (api/deps.py) give exactly what formatting would, on both sides
of where the tables end, and `JSONBytesResponse.of` builds the same answer as its constructor."""

from __future__ import annotations

import pytest
from starlette.responses import Response

from ephemeral_broker.api.deps import JSONBytesResponse, content_length, etag, etag_header

EDGES = (0, 1, 9, 10, 99, 1022, 1023, 1024, 1025, 65_536, 2**63 - 1)


@pytest.mark.parametrize("size", EDGES)
def test_content_length_header_is_the_size_written_out(size: int) -> None:
    assert content_length(size) == (b"content-length", str(size).encode())


@pytest.mark.parametrize("version", EDGES)
def test_etag_header_is_the_quoted_version(version: int) -> None:
    assert etag_header(version) == (b"etag", etag(version).encode())


@pytest.mark.parametrize("status", [200, 201, 409])
@pytest.mark.parametrize("version", [None, 1, 1023, 1024, 2**63 - 1])
@pytest.mark.parametrize("size", [0, 2, 1023, 1024, 5000])
def test_of_builds_what_the_constructor_builds(status: int, version: int | None, size: int) -> None:
    body = b"x" * size
    quick = JSONBytesResponse.of(body, status, version)
    built = JSONBytesResponse(body, status, version=version)
    expected = Response(body, status, media_type="application/json")
    if version is not None:
        expected.raw_headers.insert(0, (b"etag", b'"%d"' % version))
    for response in (quick, built):
        assert type(response) is JSONBytesResponse
        assert (response.status_code, response.body, response.background) == (status, body, None)
        assert response.raw_headers == expected.raw_headers
