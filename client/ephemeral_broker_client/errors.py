"""The exceptions the clients raise, all subclasses of `BrokerError`.

The broker names every failure with a stable `code` in its problem+json body;
`error_class(code)` is the one mapping from those codes to exception classes. Failures the
client itself detects have codes of their own: `unavailable`, `timeout`, `invalid_response`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final


class BrokerError(Exception):
    """A failed broker call.

    Attributes:
        code: the stable error code (`not_found`, `pool_exhausted`, … or one of the client's
            own: `unavailable`, `timeout`, `invalid_response`).
        status: the HTTP status the broker answered with; None when there was no answer.
        detail: a sentence naming the key, pool or limit involved.
        request_id: the broker's `X-Request-ID` for this request (find it in the broker's log);
            None when there was no answer.
    """

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.status = status
        self.detail = detail
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only attributes survive pickling (errors cross process pools and xdist).
        return (_rebuild, (type(self), self.code, self.detail, self.status, self.request_id))


def _rebuild(
    cls: type[BrokerError], code: str, detail: str, status: int | None, request_id: str | None
) -> BrokerError:
    return cls(code, detail, status=status, request_id=request_id)


class KeyNotFound(BrokerError, KeyError):
    """The key does not exist or has expired (`not_found`, `expired`)."""

    def __str__(self) -> str:
        # KeyError would render the message with quotes around it.
        return BrokerError.__str__(self)


class PreconditionFailed(BrokerError):
    """`if_absent`, `if_version` or a lease token did not hold (`precondition_failed`)."""


class NotModified(BrokerError):
    """A watch (`get(..., after_version=v)`) ended without a version newer than `v`
    (`not_modified`, HTTP 304). `version` is the key's current version (None if the broker did
    not say)."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        version: int | None = None,
    ) -> None:
        super().__init__(code, detail, status=status, request_id=request_id)
        self.version = version

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_not_modified,
            (self.code, self.detail, self.status, self.request_id, self.version),
        )


def _rebuild_not_modified(
    code: str, detail: str, status: int | None, request_id: str | None, version: int | None
) -> NotModified:
    return NotModified(code, detail, status=status, request_id=request_id, version=version)


class PoolExhausted(BrokerError):
    """No free value below the pool's `size`, even after `wait_ms` (`pool_exhausted`)."""


class LeaseNotFound(BrokerError):
    """The lease is not held any more: it expired or was released (`lease_not_found`)."""


class TooLarge(BrokerError):
    """The value or the request body is over the broker's limit (`too_large`)."""


class StoreFull(BrokerError):
    """The broker holds as many keys or leases as it may (`max_items`, `max_leases`)."""


class AuthFailed(BrokerError):
    """The broker needs a secret and this client has none, or the wrong one (`auth_failed`)."""


class InvalidRequest(BrokerError):
    """The broker refused the request itself: a bad key, TTL, field or value type
    (`invalid_key`, `invalid_ttl`, `ttl_required`, `validation_error`, `invalid_json`,
    `bad_request`, `not_an_integer`, …)."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached (`unavailable`: no socket, nobody listening, connection
    lost), or it is shutting down (`draining`)."""


class BrokerTimeout(BrokerError):
    """The call's `timeout` ran out while waiting for the broker's answer (`timeout`)."""


class InvalidResponse(BrokerError):
    """The broker's answer could not be decoded (`invalid_response`): a corrupt body, or a
    broker of another version. The detail names the key the call was about."""


_BY_CODE: Final[Mapping[str, type[BrokerError]]] = {
    "not_found": KeyNotFound,
    "expired": KeyNotFound,
    "precondition_failed": PreconditionFailed,
    "pool_exhausted": PoolExhausted,
    "not_modified": NotModified,
    "lease_not_found": LeaseNotFound,
    "too_large": TooLarge,
    "max_items": StoreFull,
    "max_leases": StoreFull,
    "auth_failed": AuthFailed,
    "invalid_json": InvalidRequest,
    "bad_request": InvalidRequest,
    "invalid_key": InvalidRequest,
    "invalid_ttl": InvalidRequest,
    "ttl_required": InvalidRequest,
    "validation_error": InvalidRequest,
    "not_an_integer": InvalidRequest,
    "unsupported_encoding": InvalidRequest,
    "route_not_found": InvalidRequest,
    "method_not_allowed": InvalidRequest,
    "draining": BrokerUnavailable,
    "unavailable": BrokerUnavailable,
    "timeout": BrokerTimeout,
    "invalid_response": InvalidResponse,
}


def error_class(code: str, status: int | None = None) -> type[BrokerError]:
    """The exception class for a broker error code (an unknown code maps by its status)."""
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls
    if status == 503:
        return BrokerUnavailable
    return BrokerError
