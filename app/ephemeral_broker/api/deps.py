"""Small helpers every router uses: where the app's parts live, conditional headers, JSON out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson
from fastapi import Request, Response

from ephemeral_broker.api.runtime import Runtime
from ephemeral_broker.errors import BrokerError
from ephemeral_broker.metrics import BrokerMetrics
from ephemeral_broker.store import Store
from ephemeral_broker.store.base import VersionMatch

JSON: Final = "application/json"
_new_object: Final = object.__new__
_CONTENT_TYPE_HEADER: Final = (b"content-type", JSON.encode())
# The Content-Length header of every body under 1 KiB, made once (about 90 KiB): formatting an
# int as bytes costs about as much as all the rest of building a small response.
_SMALL_BODY: Final = 1024
_LENGTH_HEADERS: Final = tuple((b"content-length", b"%d" % n) for n in range(_SMALL_BODY))


# The ETag header of the first versions, for the same reason (about 90 KiB): a key written a
# few times (a token, a shared setting) is read at one of these.
_EARLY_VERSIONS: Final = 1024
_ETAG_HEADERS: Final = tuple((b"etag", b'"%d"' % version) for version in range(_EARLY_VERSIONS))


def content_length(size: int) -> tuple[bytes, bytes]:
    """The Content-Length header for a body of `size` bytes."""
    return _LENGTH_HEADERS[size] if size < _SMALL_BODY else (b"content-length", b"%d" % size)


def etag_header(version: int) -> tuple[bytes, bytes]:
    """The ETag header of a key at `version` (a strong tag: `"<version>"`)."""
    return _ETAG_HEADERS[version] if version < _EARLY_VERSIONS else (b"etag", b'"%d"' % version)


# The parts are read from the app's attributes (BrokerAPI.store, .runtime, .metrics; the same
# objects as in `app.state`) through the scope: `request.app` is a property and State's item
# lookup a Python method, two calls that cost more than a GET's store lookup.


def store_of(request: Request) -> Store:
    store: Store = request.scope["app"].store
    return store


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.scope["app"].runtime
    return runtime


def metrics_of(request: Request) -> BrokerMetrics:
    metrics: BrokerMetrics = request.scope["app"].metrics
    return metrics


def set_result(request: Request, result: str) -> None:
    """Name the outcome for ephemeral_broker_operations_total{result=...} (hit, miss, created…)."""
    # Straight into the scope's state dict (what `request.state` wraps), set by BrokerMiddleware.
    request.scope["state"]["result"] = result


class JSONBytesResponse(Response):
    """JSON already encoded to bytes, with the headers Starlette's Response would give it
    (the route's own first, then Content-Length and Content-Type), built in one step."""

    media_type = JSON

    def __init__(
        self,
        body: bytes,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        *,
        version: int | None = None,
    ) -> None:
        """`version`: the key's version, sent as its ETag (`"<version>"`)."""
        self.status_code = status_code
        self.body = body
        self.background = None
        raw: list[tuple[bytes, bytes]] = (
            [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
            if headers
            else []
        )
        if version is not None:
            raw.append(etag_header(version))
        if status_code >= 200 and status_code not in (204, 304):
            raw.append(content_length(len(body)))
        raw.append(_CONTENT_TYPE_HEADER)
        self.raw_headers = raw

    @classmethod
    def of(cls, body: bytes, status_code: int = 200, version: int | None = None) -> Response:
        """The same response as `JSONBytesResponse(body, status_code, version=version)` for a
        status with a body and no headers of the route's own: the broker's common answers,
        built for a third less than through `__init__` (a class call with a keyword argument
        goes through a slower path in CPython than a method call does)."""
        response = _new_object(cls)
        response.status_code = status_code
        response.body = body
        response.background = None
        # content_length() and etag_header(), written out: this is nearly every answer's path.
        size = len(body)
        length = _LENGTH_HEADERS[size] if size < _SMALL_BODY else (b"content-length", b"%d" % size)
        if version is None:
            response.raw_headers = [length, _CONTENT_TYPE_HEADER]
        elif version < _EARLY_VERSIONS:
            response.raw_headers = [_ETAG_HEADERS[version], length, _CONTENT_TYPE_HEADER]
        else:
            response.raw_headers = [(b"etag", b'"%d"' % version), length, _CONTENT_TYPE_HEADER]
        return response


def json_response(body: Any, status: int = 200) -> Response:
    """`body` as JSON, for a status that has a body (200, 201, ...)."""
    return JSONBytesResponse.of(orjson.dumps(body), status)


def etag(version: int) -> str:
    return f'"{version}"'


def parse_etags(header: str | None, name: str, *, weak: bool = True) -> VersionMatch | None:
    """Parse If-Match / If-None-Match: `*`, or a list of `"<version>"` entity tags.

    Entity tags are quoted (RFC 9110 section 8.8.3): an unquoted `7` is refused (422
    validation_error), never guessed at. A weak tag `W/"7"` is well-formed, but only the weak
    comparison of If-None-Match matches it (`weak=True`); If-Match compares strongly (RFC 9110
    section 13.1.1, `weak=False`), so there a weak tag matches no version: a write guarded by
    `If-Match: W/"7"` alone always fails with 412. The broker itself only sends strong tags.
    """
    if header is None:
        return None
    text = header.strip()
    if not text:
        return None  # an empty list of entity tags: the same as no header
    if text == "*":
        return "*"
    versions: set[int] = set()
    for part in text.split(","):
        tag = part.strip()
        is_weak = tag.startswith("W/")
        quoted = tag.removeprefix("W/")
        # Exactly one pair of double quotes around the digits, as the broker sends them.
        digits = quoted[1:-1] if len(quoted) >= 2 and quoted[0] == quoted[-1] == '"' else ""
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 20):
            raise BrokerError(
                "validation_error",
                f'{name} must be * or a list of quoted versions such as "7", as the broker '
                f"sends them in ETag, not {header[:80]!r}",
            )
        if weak or not is_weak:
            versions.add(int(digits))
    return frozenset(versions)
