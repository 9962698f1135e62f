"""The one request builder, retry policy and response/error mapper, shared by both clients.

Everything here is sans-I/O: an operation is a generator (a *plan*) that yields the I/O it
needs — an `Attempt` to send, a `Sleep`, a `RunFactory` — and receives the outcome.
`BrokerClient` and `AsyncBrokerClient` are thin executors that perform those steps with
blocking or asyncio I/O. So every operation, its retries and its error mapping are written
exactly once, and the two clients cannot drift apart.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import socket as socket_module
import stat
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeAlias, TypeVar
from urllib.parse import quote

import httpx
import orjson

from ephemeral_broker.signing import signature_headers
from ephemeral_broker_client._transport import RawResponse, ResponseTooLarge
from ephemeral_broker_client.errors import (
    BrokerError,
    BrokerTimeout,
    BrokerUnavailable,
    InvalidResponse,
    NotModified,
    error_class,
)

T = TypeVar("T")

logger = logging.getLogger("ephemeral_broker.client")

DEFAULT_TIMEOUT: Final = 5.0
# Connection retries: the first after 5 ms, doubling up to 100 ms. A local socket answers in
# microseconds, so a broker that is starting up is reached within ~100 ms of listening.
BACKOFF_FIRST_S: Final = 0.005
BACKOFF_CAP_S: Final = 0.1
# An attempt needs at least this much of the budget left to be worth making.
MIN_ATTEMPT_S: Final = 0.01

# Keep ':' and '@' readable (worker ids are `host:pid`); everything else outside the
# unreserved set is percent-encoded, so httpx sends the target exactly as built here.
_NAME_SAFE: Final = ":@"


# ---- steps a plan yields -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """Send `call` once, within `timeout_s`; the plan receives a `Reply` or the
    `httpx.RequestError` the transport raised."""

    call: Call[Any]
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(slots=True)
class RunFactory:
    """Run the caller's factory (awaited if it returns an awaitable) while `renewal` keeps a
    lock alive in the background; the plan receives the factory's result."""

    factory: Callable[[], Any]
    renewal: Renewal


Step: TypeAlias = "Attempt | Sleep | RunFactory"
Plan: TypeAlias = Generator[Step, Any, T]


@dataclass(slots=True)
class Reply:
    """A broker answer, read in full (the body decoded from any content-encoding)."""

    status: int
    content: bytes
    request_id: str | None
    etag: str | None = None
    elapsed_s: float = 0.0


# ---- configuration -------------------------------------------------------------------------


def default_worker_id() -> str:
    """`$PYTEST_XDIST_WORKER` when set (gw0, gw1 …), else `<hostname>:<pid>`."""
    return os.environ.get("PYTEST_XDIST_WORKER") or f"{socket_module.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Wire:
    """What every request of one client shares: where, how long, and how to sign."""

    socket: str
    secret: str | None
    timeout: float
    headers: tuple[tuple[bytes, bytes], ...]
    # The same headers as they go on the wire, each line ending in CRLF.
    head: bytes


def resolve_wire(socket: str | os.PathLike[str] | None, secret: str | None, timeout: float) -> Wire:
    """Socket from the argument or `$EPHEMERAL_PIPE`, secret from the argument or
    `$EPHEMERAL_SECRET`; a missing socket or a bad timeout is refused at once."""
    path = os.fspath(socket) if socket is not None else os.environ.get("EPHEMERAL_PIPE", "")
    if not path:
        raise BrokerUnavailable(
            "unavailable",
            "no broker socket: pass socket=... or set EPHEMERAL_PIPE (ephemeral-broker run "
            "sets it for the command it runs)",
        )
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout < math.inf
    ):
        raise ValueError(f"timeout must be a positive, finite number of seconds, not {timeout!r}")
    if secret is None:
        secret = os.environ.get("EPHEMERAL_SECRET") or None
    # Host alone: HTTP/1.1 requires it, and every other header costs the broker's parser and
    # middleware a little on each request. No Accept-Encoding, because the broker gzips an
    # answer only when asked to: over a local socket that would cost CPU on both sides for
    # nothing. (A gzip answer from another server is still decoded.) No User-Agent, which
    # the broker does not read.
    headers = ((b"host", b"localhost"),)
    head = b"".join(b"%s: %s\r\n" % pair for pair in headers)
    return Wire(path, secret or None, float(timeout), headers, head)


# ---- names and values ----------------------------------------------------------------------


def quote_name(name: str) -> str:
    """A key, pool or worker id as one percent-encoded path segment.

    `.` and `..` are encoded too: as literal dot segments httpx would normalise them away and
    the request would reach another route instead of being refused as an invalid name.
    """
    if name in (".", ".."):
        return name.replace(".", "%2E")
    return quote(name, safe=_NAME_SAFE)


def _non_finite_path(payload: dict[str, Any]) -> str | None:
    """Where a NaN or an infinity hides in a body (orjson would silently write null), as
    `member[...]...`."""
    stack: list[tuple[Any, str]] = [(child, name) for name, child in payload.items()]
    while stack:
        node, where = stack.pop()
        if isinstance(node, float):
            if not math.isfinite(node):
                return where
        elif isinstance(node, dict):
            stack.extend((child, f"{where}[{k!r}]") for k, child in node.items())
        elif isinstance(node, list | tuple):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(node))
    return None


def encode_json(payload: dict[str, Any], subject: str) -> bytes:
    """Encode a request body made of a caller's arguments, before any I/O.

    Raises TypeError naming `subject` ("the value for key 'a'") when it is not JSON (defect
    2 of the design notes): an unsupported type, a circular or too-deep structure, a non-str
    dict key, an integer beyond 64 bits, a lone surrogate — and NaN or an infinity, which
    orjson would quietly turn into null, so that what GET returns would differ from what was
    set.
    """
    try:
        body = orjson.dumps(payload)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise TypeError(f"{subject} cannot be encoded as JSON: {exc}") from exc
    # A non-finite float can only be there if "null" is; the walk runs only then.
    if b"null" in body:
        where = _non_finite_path(payload)
        if where is not None:
            raise TypeError(
                f"{subject} cannot be encoded as JSON: {where} is NaN or infinite, which JSON "
                "cannot represent"
            )
    return body


# ---- one call ------------------------------------------------------------------------------


class Malformed(Exception):
    """A success answer that does not have the documented shape."""


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One HTTP exchange with the broker, described once for both clients.

    `subject` names what the call is about ("get of key 'a'") in every error it raises;
    `idempotent` allows a retry after a connection broke with the request possibly delivered;
    `wait_s` is how long the broker may legitimately hold the request (`wait_ms`), added to
    the call's timeout.
    """

    method: str
    target: str
    parse: Callable[[Reply], T]
    subject: str
    body: bytes = b""
    idempotent: bool = True
    wait_s: float = 0.0
    headers: tuple[tuple[bytes, bytes], ...] = ()


@functools.lru_cache(maxsize=4096)
def _url(target: str) -> httpx.URL:
    # Parsing a URL is the largest part of building a request; workers tend to use the same
    # few keys over and over, and URLs are immutable.
    return httpx.URL("http://localhost" + target)


_EMPTY: Final = httpx.ByteStream(b"")
_JSON_TYPE: Final = (b"content-type", b"application/json")


def build_request(wire: Wire, call: Call[Any], timeout_s: float) -> httpx.Request:
    """The request for one attempt: per-attempt timeout, fresh timestamp and signature.

    Built in httpx's `stream=` form with every header spelled out (Host, Content-Length),
    which skips httpx's content encoding and header defaulting: the request is sent exactly as
    written here.
    """
    url = _url(call.target)
    headers = [*wire.headers, *call.headers]
    body = call.body
    if body:
        headers += (_JSON_TYPE, (b"content-length", b"%d" % len(body)))
    elif call.method in ("POST", "PUT"):
        headers.append((b"content-length", b"0"))
    if wire.secret is not None:
        # Sign the request target exactly as it goes on the request line, and the exact body.
        target = url.raw_path.decode("ascii")
        timestamp = time.time_ns() // 1_000_000
        signed = signature_headers(wire.secret, timestamp, call.method, target, body)
        headers += ((k.encode(), v.encode()) for k, v in signed.items())
    return httpx.Request(
        call.method,
        url,
        headers=headers,
        stream=httpx.ByteStream(body) if body else _EMPTY,
        extensions={
            "timeout": {
                "connect": timeout_s,
                "read": timeout_s,
                "write": timeout_s,
                "pool": timeout_s,
            }
        },
    )


def request_head(wire: Wire, call: Call[Any]) -> bytes:
    """The head of the request for one attempt, as it goes on the wire (fresh timestamp and
    signature when signing). The same request as `build_request`'s, without httpx."""
    if wire.secret is None and not call.headers and not call.body:
        return _plain_head(call.method, call.target, wire.head)
    target = call.target
    lines = [b"%s %s HTTP/1.1\r\n" % (call.method.encode(), target.encode("ascii")), wire.head]
    lines.extend(b"%s: %s\r\n" % pair for pair in call.headers)
    body = call.body
    if body:
        lines.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
    elif call.method in ("POST", "PUT"):
        lines.append(b"content-length: 0\r\n")
    if wire.secret is not None:
        timestamp = time.time_ns() // 1_000_000
        signed = signature_headers(wire.secret, timestamp, call.method, target, body)
        lines.extend(f"{k}: {v}\r\n".encode() for k, v in signed.items())
    lines.append(b"\r\n")
    return b"".join(lines)


@functools.lru_cache(maxsize=4096)
def _plain_head(method: str, target: str, wire_head: bytes) -> bytes:
    # An unsigned request without a body or headers of its own (a GET, a DELETE) is the same
    # bytes every time: workers read the same few keys over and over.
    head = b"%s %s HTTP/1.1\r\n%s" % (method.encode(), target.encode("ascii"), wire_head)
    if method in ("POST", "PUT"):
        head += b"content-length: 0\r\n"
    return head + b"\r\n"


def reply_from_raw(raw: RawResponse, limit: int) -> Reply:
    """A `Reply` from a `UnixTransport` response; a gzip body (the client asks for none, but
    a proxy or another server may send one) is decoded, to at most `limit` bytes."""
    content = raw.body
    request_id = etag = None
    for name, value in raw.headers:
        lowered = name.lower()
        if lowered == b"x-request-id":
            request_id = value.decode("latin-1")
        elif lowered == b"etag":
            etag = value.decode("latin-1")
        elif lowered == b"content-encoding":
            content = _decoded(content, value.strip().lower(), limit)
    return Reply(raw.status, content, request_id, etag)


def _decoded(content: bytes, encoding: bytes, limit: int) -> bytes:
    if encoding in (b"", b"identity"):
        return content
    if encoding not in (b"gzip", b"x-gzip", b"deflate"):
        raise httpx.DecodingError(f"unsupported content-encoding {encoding.decode('latin-1')!r}")
    # deflate as servers send it is zlib-wrapped; wbits 47 accepts zlib or gzip alike.
    decoder = zlib.decompressobj(47)
    try:
        decoded = decoder.decompress(content, limit + 1)
    except zlib.error as exc:
        raise httpx.DecodingError(f"the {encoding.decode()} body is corrupt: {exc}") from None
    if len(decoded) > limit:
        raise ResponseTooLarge(
            f"the response decompresses to more than the transport's limit of {limit} bytes "
            "(max_response_bytes)"
        )
    if not decoder.eof:
        raise httpx.DecodingError(f"the {encoding.decode()} body is truncated")
    return decoded


def reply_from_response(response: httpx.Response, content: bytes) -> Reply:
    """A `Reply` from any httpx transport's response (its body read and decoded by httpx)."""
    headers = response.headers
    return Reply(response.status_code, content, headers.get("x-request-id"), headers.get("etag"))


def exchange(wire: Wire, call: Call[T]) -> Plan[T]:
    """Send `call`, retrying connection failures within the call's one time budget.

    All attempts and the pauses between them fit in `timeout` (+ the call's `wait_s`): each
    attempt's httpx timeout is what is left of it, so the call never takes longer (defect
    15 of the design notes). Only failures where the request certainly did not reach the broker are
    retried, unless the call is idempotent.
    """
    budget = wire.timeout + call.wait_s
    started = time.monotonic()
    deadline = started + budget
    attempt = 0
    refused: httpx.ConnectError | None = None
    retried: httpx.RequestError | None = None  # the failure the pause before this attempt followed
    stale_refusals = 0  # refusals in a row on a socket file that exists
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            # A pause that overslept on a loaded machine, or a budget too small to build the
            # first request in: no transport can use a non-positive timeout (httpcore raises
            # ValueError for one).
            if retried is not None:
                raise _unreachable(wire, call, retried, attempt - 1, started) from retried
            raise BrokerTimeout(
                "timeout",
                f"the {budget:g} s budget for {call.subject} ran out before the request "
                f"could be sent to the broker at {wire.socket}",
            )
        sent_at = time.perf_counter()
        outcome: Reply | httpx.RequestError = yield Attempt(call, remaining)
        if isinstance(outcome, Reply):
            outcome.elapsed_s = time.perf_counter() - sent_at
            return finish(call, outcome)
        if isinstance(outcome, httpx.ConnectError):
            refused = outcome
            unusable = _unusable_socket(wire.socket)
            stale_refusals = stale_refusals + 1 if unusable is not None else 0
            # A missing socket is a broker that may still be starting: wait for it. A socket
            # file nobody listens on is refused twice, STALE_RECHECK_S apart (a broker between
            # its bind and its listen refuses too, for microseconds), then given up at once;
            # a path that cannot be a socket at all, at once.
            if unusable is not None and (stale_refusals >= 2 or unusable.final):
                raise BrokerUnavailable(
                    "unavailable", f"{unusable.reason} (for {call.subject}: {_describe(outcome)})"
                ) from outcome
            if unusable is not None:
                retried = outcome
                yield Sleep(min(STALE_RECHECK_S, max(0.0, deadline - time.monotonic())))
                continue
        elif refused is not None and isinstance(outcome, _NOT_SENT_TIMEOUTS):
            # The last sliver of the budget ran out while connecting to a broker that was
            # not there a moment ago: still "cannot reach", not "no answer".
            outcome = refused
        delay = _retry_delay(wire, call, outcome, attempt, started, deadline, budget)
        retried = outcome
        yield Sleep(delay)


STALE_RECHECK_S: Final = 0.02


@dataclass(frozen=True, slots=True)
class _Unusable:
    reason: str
    final: bool  # nothing about it can change by waiting (a file, a directory, no permission)


def _unusable_socket(path: str) -> _Unusable | None:
    """Why the socket path cannot be a broker that is still starting, or None when it may be
    (nothing there yet)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return _Unusable(f"cannot use the socket path {path}: {exc.strerror}", final=True)
    if not stat.S_ISSOCK(info.st_mode):
        return _Unusable(f"{path} is not a socket", final=True)
    return _Unusable(f"no broker is listening on {path}: stale socket?", final=False)


# Timeouts before anything was sent.
_NOT_SENT_TIMEOUTS: Final = (httpx.ConnectTimeout, httpx.PoolTimeout)


def _retry_delay(
    wire: Wire,
    call: Call[Any],
    error: httpx.RequestError,
    attempt: int,
    started: float,
    deadline: float,
    budget: float,
) -> float:
    """How long to pause before the next attempt, or raise the error to report."""
    remaining = deadline - time.monotonic()
    if isinstance(error, httpx.TimeoutException):
        raise BrokerTimeout(
            "timeout",
            f"no answer from the broker at {wire.socket} to {call.subject} within "
            f"{budget:g} s ({type(error).__name__})",
        ) from error
    if isinstance(error, ResponseTooLarge):
        raise InvalidResponse(
            "invalid_response", f"the broker's answer to {call.subject} is too large: {error}"
        ) from error
    if isinstance(error, httpx.DecodingError):
        raise InvalidResponse(
            "invalid_response",
            f"the broker's answer to {call.subject} could not be decoded: {error}",
        ) from error
    delivered = not isinstance(error, httpx.ConnectError)
    if delivered and not call.idempotent:
        raise BrokerUnavailable(
            "unavailable",
            f"the connection to the broker at {wire.socket} broke after {call.subject} was "
            f"sent, so it may or may not have been applied; not retried ({_describe(error)})",
        ) from error
    if remaining < MIN_ATTEMPT_S:
        raise _unreachable(wire, call, error, attempt, started) from error
    backoff = min(BACKOFF_FIRST_S * (1 << min(attempt - 1, 16)), BACKOFF_CAP_S)
    # Jitter spreads the retries of many workers that started together.
    backoff *= 0.5 + random.random() / 2  # noqa: S311 - jitter, not a secret
    return min(backoff, remaining - MIN_ATTEMPT_S)


def _unreachable(
    wire: Wire, call: Call[Any], error: httpx.RequestError, attempts: int, started: float
) -> BrokerUnavailable:
    return BrokerUnavailable(
        "unavailable",
        f"cannot reach the broker at {wire.socket} for {call.subject}: "
        f"{_describe(error)} ({attempts} attempts in {time.monotonic() - started:.2f} s)",
    )


def _describe(error: Exception) -> str:
    return str(error) or type(error).__name__


def finish(call: Call[T], reply: Reply) -> T:
    """The call's result, or the typed error its answer stands for."""
    if reply.status < 300:
        try:
            return call.parse(reply)
        except (orjson.JSONDecodeError, Malformed, UnicodeDecodeError) as exc:
            raise InvalidResponse(
                "invalid_response",
                f"the broker's answer to {call.subject} could not be decoded: {exc} "
                f"(status {reply.status}, {len(reply.content)} bytes)",
                status=reply.status,
                request_id=reply.request_id,
            ) from None
    if reply.status == 304:
        raise _not_modified(call, reply)
    raise problem(call, reply)


def _not_modified(call: Call[Any], reply: Reply) -> NotModified:
    """A watch (`after_version`) that saw no newer version: the ETag names the current one."""
    etag = (reply.etag or "").strip().removeprefix("W/").strip('"')
    version = int(etag) if etag.isascii() and etag.isdigit() else None
    now = f" (the key is at version {version})" if version is not None else ""
    return NotModified(
        "not_modified",
        f"{call.subject}: no newer version came{now}",
        status=304,
        request_id=reply.request_id,
        version=version,
    )


def problem(call: Call[Any], reply: Reply) -> BrokerError:
    """Map a problem+json answer to its exception class by the stable `code`."""
    request_id = reply.request_id
    try:
        body = orjson.loads(reply.content)
        code, detail = body["code"], body["detail"]
        if not (isinstance(code, str) and isinstance(detail, str)):
            raise Malformed
        request_id = body.get("request_id", request_id)
    except (orjson.JSONDecodeError, Malformed, KeyError, TypeError):
        code = "invalid_response"
        detail = (
            f"{call.subject} failed with HTTP {reply.status} and an answer that is not "
            "problem+json; is something other than ephemeral-broker listening there?"
        )
        if reply.status == 503:
            code = "unavailable"
    return error_class(code, reply.status)(code, detail, status=reply.status, request_id=request_id)


# ---- decoding success answers --------------------------------------------------------------


def json_object(reply: Reply) -> dict[str, Any]:
    data = orjson.loads(reply.content)
    if not isinstance(data, dict):
        raise Malformed(f"expected a JSON object, got a JSON {type(data).__name__}")
    return data


def member(data: dict[str, Any], name: str, kind: type[T]) -> T:
    value = data.get(name)
    # bool is an int in Python; a JSON true is never a count or a version.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Malformed(f"member {name!r} is missing or not a {kind.__name__}")
    return value


def member_value(data: dict[str, Any]) -> Any:
    if "value" not in data:
        raise Malformed("member 'value' is missing")
    return data["value"]


# ---- renewals (lease keepalive, the `once` lock) -------------------------------------------


class Renewal(ABC):
    """Something renewed in the background every `interval_s` until stopped or lost.

    `renew()` is a plan that renews once. A renewal the broker refuses because the thing is
    gone (expired, released, taken over) marks it `lost` and stops: it is reported, never
    silently re-acquired. Any other failure (broker briefly unreachable) is retried next time.
    """

    lost_errors: tuple[type[BrokerError], ...] = ()

    def __init__(self, interval_s: float, what: str) -> None:
        self.interval_s = interval_s
        self.what = what
        self.lost: BrokerError | None = None

    @abstractmethod
    def renew(self) -> Plan[None]:
        """A plan that renews once and records the new state."""

    def tick(self) -> Plan[bool]:
        """Renew once; True to go on, False once lost."""
        try:
            yield from self.renew()
        except self.lost_errors as exc:
            self.lost = exc
            logger.warning("%s was lost and is not renewed any more: %s", self.what, exc)
            return False
        except BrokerError as exc:
            logger.warning(
                "renewing %s failed; retrying in %.3f s: %s", self.what, self.interval_s, exc
            )
        except Exception as exc:
            # A bug, not a broker answer: stop renewing, and say so where the owner looks,
            # instead of letting the background thread or task die unnoticed.
            logger.exception(
                "renewing %s failed unexpectedly; it is not renewed any more", self.what
            )
            self.lost = BrokerError(
                "internal_error", f"renewing {self.what} failed unexpectedly: {exc!r}"
            )
            return False
        return True
