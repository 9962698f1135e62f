"""Broker errors and their RFC 9457 problem+json rendering.

Every failure the broker reports is a `BrokerError` with a stable `code`; the HTTP status and
title follow from the code, so the table below is the single place they are defined.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson

if TYPE_CHECKING:  # the clients import this module: it must not load the server stack
    from starlette.types import Scope, Send

ErrorCode = Literal[
    "bad_request",
    "headers_too_large",
    "invalid_json",
    "auth_failed",
    "not_found",
    "lease_not_found",
    "route_not_found",
    "method_not_allowed",
    "pool_exhausted",
    "not_an_integer",
    "precondition_failed",
    "too_large",
    "unsupported_encoding",
    "ttl_required",
    "invalid_ttl",
    "invalid_key",
    "validation_error",
    "draining",
    "too_many_connections",
    "request_timeout",
    "max_items",
    "max_leases",
    "internal_error",
    "store_unavailable",
]

# code -> (status, title)
ERRORS: Final[Mapping[str, tuple[int, str]]] = {
    # Beyond the API's own errors: a request the HTTP parser itself refuses (bad request line or
    # headers, a body that overruns its Content-Length into garbage).
    "bad_request": (400, "Malformed HTTP request"),
    "invalid_json": (400, "Invalid JSON"),
    # Also beyond them: the request line and headers passed MAX_HEAD_BYTES.
    "headers_too_large": (431, "Request Header Fields Too Large"),
    "auth_failed": (401, "Authentication failed"),
    "not_found": (404, "Key not found"),
    "lease_not_found": (404, "Lease not found"),
    "route_not_found": (404, "No such endpoint"),
    "method_not_allowed": (405, "Method not allowed"),
    "pool_exhausted": (409, "Pool exhausted"),
    "not_an_integer": (409, "Value is not an integer"),
    "precondition_failed": (412, "Precondition failed"),
    "too_large": (413, "Too large"),
    "unsupported_encoding": (415, "Unsupported Content-Encoding"),
    "ttl_required": (422, "TTL required"),
    "invalid_ttl": (422, "Invalid TTL"),
    "invalid_key": (422, "Invalid key"),
    "validation_error": (422, "Validation error"),
    "draining": (503, "Broker is draining"),
    # Connection hygiene (http_protocol.py): answered before any app code runs.
    "too_many_connections": (503, "Too many connections"),
    "request_timeout": (408, "Request timeout"),
    "max_items": (507, "Store is full"),
    "max_leases": (507, "Lease table is full"),
    "internal_error": (500, "Internal error"),
    # The shared store (Redis) did not answer in time or refused the connection: the request
    # may or may not have been applied, and the broker did not retry it.
    "store_unavailable": (503, "Store unavailable"),
}

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
_PROBLEM_CONTENT_TYPE_BYTES: Final = PROBLEM_CONTENT_TYPE.encode()
RETRY_AFTER_SECONDS: Final = "1"


class BrokerError(Exception):
    """A failure with a stable code; raised by the store and the request layer alike."""

    def __init__(
        self,
        code: ErrorCode,
        detail: str,
        *,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        more_errors: int = 0,
    ) -> None:
        super().__init__(detail)
        self.code: ErrorCode = code
        self.status, self.title = ERRORS[code]
        self.detail = detail
        self.errors = list(errors) if errors is not None else None
        # How many failures `errors` leaves out (it holds a bounded number).
        self.more_errors = more_errors
        self.headers = dict(headers) if headers is not None else {}
        if self.status == 503:
            self.headers.setdefault("Retry-After", RETRY_AFTER_SECONDS)


def problem_body(
    code: str,
    detail: str,
    request_id: str,
    errors: Sequence[Mapping[str, Any]] | None = None,
    more_errors: int = 0,
) -> bytes:
    status, title = ERRORS[code]
    body: dict[str, Any] = {
        "type": f"urn:ephemeral-broker:error:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id,
    }
    if errors is not None:
        body["errors"] = list(errors)
        if more_errors:
            body["more_errors"] = more_errors
    # default=str: an error entry may carry a non-JSON object (a pydantic ctx); never fail here.
    return orjson.dumps(body, default=str)


def quote_name(name: str, limit: int = 80) -> str:
    """A key or pool name as it appears in an error sentence: quoted, shortened, escapes visible."""
    shown = name if len(name) <= limit else name[:limit] + "…"
    return repr(shown)


def request_id_of(scope: Scope) -> str:
    """The request id BrokerMiddleware gave this request ("-" before it did). The state keeps
    it as the bytes of its X-Request-ID header (ASCII, checked): most requests never need it
    as text."""
    state = scope.get("state")
    if isinstance(state, dict):
        rid = state.get("request_id")
        if isinstance(rid, bytes):
            return rid.decode()
    return "-"


def problem_headers(error: BrokerError, body: bytes) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", _PROBLEM_CONTENT_TYPE_BYTES),
        (b"content-length", b"%d" % len(body)),
    ]
    headers.extend((k.lower().encode(), v.encode()) for k, v in error.headers.items())
    return headers


def render_problem(scope: Scope, error: BrokerError) -> bytes:
    """The problem+json body for `error`; records its code for the metrics and the log."""
    scope.setdefault("state", {})["error_code"] = error.code
    return problem_body(
        error.code, error.detail, request_id_of(scope), error.errors, error.more_errors
    )


async def send_problem(scope: Scope, send: Send, error: BrokerError) -> None:
    """Answer with `error` as problem+json, straight over ASGI."""
    body = render_problem(scope, error)
    headers = problem_headers(error, body)
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
