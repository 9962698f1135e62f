"""Pure-ASGI middleware (never BaseHTTPMiddleware: it is slow and breaks streaming).

Order, outermost first:
  BrokerMiddleware     request id, drain gate, in-flight/activity accounting, metrics, access
                       log, gzip responses, and the last line of defence: any exception becomes a
                       500 problem with no traceback in the body.
  AuthMiddleware       (auth.py, only when a secret is set) Bearer or HMAC signature.
  BodyLimitMiddleware  Content-Length checked before reading, chunked bodies counted as they
                       stream, gzip/deflate request bodies decoded with the decoded size capped.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import zlib
from collections.abc import Mapping
from typing import Any, Final

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ephemeral_broker.errors import PROBLEM_CONTENT_TYPE, BrokerError, ErrorCode, problem_body
from ephemeral_broker.logs import access_logger, logger
from ephemeral_broker.metrics import BrokerMetrics
from ephemeral_broker.runtime import Runtime

_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# Probes: never need auth, never count as activity, and stay answerable while draining.
PROBE_PATHS: Final = frozenset({"/healthz", "/readyz"})
_GZIP_LEVEL: Final = 1  # a local socket makes bytes cheap; CPU is the cost that matters
# nginx's convention for "the client went away before the answer": for metrics and the log.
CLIENT_CLOSED_STATUS: Final = 499


def request_id_of(scope: Scope) -> str:
    state = scope.get("state")
    if isinstance(state, dict):
        rid = state.get("request_id")
        if isinstance(rid, str):
            return rid
    return "-"


async def send_problem(scope: Scope, send: Send, error: BrokerError) -> None:
    """Answer with a problem+json body from middleware, before or instead of the app."""
    state = scope.setdefault("state", {})
    state["error_code"] = error.code
    body = problem_body(
        error.code, error.detail, request_id_of(scope), error.errors, error.more_errors
    )
    headers = [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    headers.extend((k.lower().encode(), v.encode()) for k, v in error.headers.items())
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BrokerMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        runtime: Runtime,
        metrics: BrokerMetrics,
        compression_threshold: int,
        access_log: bool,
    ) -> None:
        self.app = app
        self.runtime = runtime
        self.metrics = metrics
        self.gzip_threshold = compression_threshold
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        runtime = self.runtime
        incoming_id: bytes | None = None
        accepts_gzip = False
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming_id = value
            elif name == b"accept-encoding" and b"gzip" in value.lower():
                accepts_gzip = self.gzip_threshold > 0
        if incoming_id is not None and _REQUEST_ID.fullmatch(incoming_id):
            rid_bytes = incoming_id
        else:
            rid_bytes = os.urandom(8).hex().encode()
        rid = rid_bytes.decode()
        state = scope.setdefault("state", {})
        state["request_id"] = rid

        path: str = scope["path"]
        probe = path in PROBE_PATHS
        runtime.requests_total += 1
        if not probe:
            runtime.last_activity = time.monotonic()
        status = 500
        response_started = False
        held_start: Message | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started, held_start
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message = {
                    **message,
                    "headers": [*message["headers"], (b"x-request-id", rid_bytes)],
                }
                if accepts_gzip:
                    held_start = message  # wait for the body to decide on compression
                    return
            elif held_start is not None and message["type"] == "http.response.body":
                start, held_start = held_start, None
                start, message = self._maybe_gzip(start, message)
                await send(start)
            await send(message)

        runtime.in_flight += 1
        try:
            if runtime.draining and not probe:
                await send_problem(
                    scope, send_wrapper,
                    BrokerError("draining", "the broker is shutting down; retry on a new broker"),
                )  # fmt: skip
            else:
                await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            # The client hung up while sending its body: nobody to answer, and not a bug.
            status = CLIENT_CLOSED_STATUS
            state["error_code"] = None
            state["result"] = "client_closed"
        except asyncio.CancelledError:
            # The drain deadline passed with this request unanswered and uvicorn cancelled it:
            # the client gets `503 draining` (retry elsewhere), not uvicorn's plain-text 500.
            if not runtime.draining or response_started:
                raise
            await send_problem(
                scope, send_wrapper,
                BrokerError(
                    "draining",
                    "the broker shut down before this request completed (drain_timeout passed)",
                    headers={"Connection": "close"},
                ),
            )  # fmt: skip
        except Exception:
            # A bug. The body names nothing; the log has the traceback and the request id.
            logger.exception(
                "unhandled error while serving a request",
                extra={"fields": {"request_id": rid, "method": scope["method"], "path": path}},
            )
            if not response_started:
                await send_problem(
                    scope, send_wrapper,
                    BrokerError("internal_error", f"internal error; see the broker log for {rid}"),
                )  # fmt: skip
        finally:
            runtime.in_flight -= 1
            if not probe:
                # Idle time counts from the end of the last request: a long waiting read is
                # activity for as long as it waits.
                runtime.last_activity = time.monotonic()
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            operation = getattr(route, "name", None) or "unrouted"
            error_code = state.get("error_code")
            result = state.get("result") or (error_code if status >= 400 else "ok")
            self.metrics.observe(operation, str(result), error_code, elapsed)
            if self.access_log:
                access_logger.info(
                    "request",
                    extra={
                        "fields": {
                            "method": scope["method"],
                            "path": path,
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 3),
                            "request_id": rid,
                        }
                    },
                )

    def _maybe_gzip(self, start: Message, message: Message) -> tuple[Message, Message]:
        body: bytes = message.get("body", b"")
        headers: list[tuple[bytes, bytes]] = start["headers"]
        if (
            message.get("more_body")
            or len(body) < self.gzip_threshold
            or any(name == b"content-encoding" for name, _ in headers)
        ):
            return start, message
        packed = zlib.compress(body, _GZIP_LEVEL, wbits=31)  # wbits 31: gzip framing
        headers = [(n, v) for n, v in headers if n != b"content-length"]
        headers += [
            (b"content-encoding", b"gzip"),
            (b"content-length", str(len(packed)).encode()),
            (b"vary", b"Accept-Encoding"),
        ]
        return {**start, "headers": headers}, {**message, "body": packed}


_CODINGS: Final[Mapping[bytes, str]] = {
    b"": "identity",
    b"identity": "identity",
    b"gzip": "gzip",
    b"x-gzip": "gzip",
    b"deflate": "deflate",
}


def _closing(code: ErrorCode, detail: str) -> BrokerError:
    # The rest of the body may still be on its way: close the connection after answering,
    # instead of reading (or parsing as a next request) what the client still sends.
    return BrokerError(code, detail, headers={"Connection": "close"})


def declared_too_large(declared: int, limit: int) -> BrokerError:
    """A Content-Length over max_request_size (here, and in auth before it reads a body)."""
    return _closing(
        "too_large",
        f"request body of {declared} bytes (Content-Length) is over max_request_size of "
        f"{limit} bytes",
    )


def streamed_too_large(limit: int) -> BrokerError:
    """A body that passed max_request_size while it streamed (here, and in auth)."""
    return _closing(
        "too_large", f"request body passed max_request_size of {limit} bytes while streaming"
    )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_request_size: int) -> None:
        self.app = app
        self.limit = max_request_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: bytes | None = None
        encoding = b""
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-encoding":
                encoding = value.strip().lower()
            elif name == b"transfer-encoding":
                chunked = True
        declared = 0
        if length is not None:
            # uvicorn's HTTP parser refuses a malformed Content-Length before we run; this guards
            # other ASGI servers and in-process transports.
            declared = int(length) if length.isdigit() else -1
            if declared < 0:
                await send_problem(scope, send, _closing(
                    "invalid_json", "the Content-Length header is not a non-negative integer"
                ))  # fmt: skip
                return
            if declared > self.limit:
                await send_problem(scope, send, declared_too_large(declared, self.limit))
                return
        if declared == 0 and not chunked:
            await self.app(scope, receive, send)  # no body: nothing to guard
            return
        coding = _CODINGS.get(encoding)
        if coding is None:
            await send_problem(scope, send, _closing(
                "unsupported_encoding",
                f"Content-Encoding {encoding.decode('latin-1')!r} is not supported; send "
                "identity, gzip or deflate",
            ))  # fmt: skip
            return
        if coding == "identity":
            await self.app(scope, _CountingReceive(receive, self.limit), send)
            return
        headers = [
            (n, v) for n, v in scope["headers"] if n not in (b"content-encoding", b"content-length")
        ]
        decoded_scope = {**scope, "headers": headers}
        await self.app(decoded_scope, _DecodingReceive(receive, self.limit, coding), send)


class _CountingReceive:
    """Passes body chunks through, refusing the request once they pass the limit."""

    __slots__ = ("_limit", "_receive", "_seen")

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self._seen = 0

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self._seen += len(message.get("body", b""))
            if self._seen > self._limit:
                raise streamed_too_large(self._limit)
        return message


class _DecodingReceive:
    """Inflates a gzip or deflate body chunk by chunk, never past the limit.

    `decompress(data, max_length)` never produces more than `max_length` bytes, so a small
    compressed bomb costs at most `limit + 1` bytes of memory before it is refused.
    """

    __slots__ = ("_coding", "_decoder", "_limit", "_out", "_raw", "_receive")

    def __init__(self, receive: Receive, limit: int, coding: str) -> None:
        self._receive = receive
        self._limit = limit
        self._coding = coding
        self._decoder: Any = None
        self._raw = 0
        self._out = 0

    def _invalid(self, why: str) -> BrokerError:
        return _closing(
            "invalid_json",
            f"the request body is not valid {self._coding} data (Content-Encoding: "
            f"{self._coding}): {why}",
        )

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request":
            return message
        chunk: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        self._raw += len(chunk)
        if self._raw > self._limit:
            raise _closing(
                "too_large",
                f"compressed request body passed max_request_size of {self._limit} bytes",
            )
        if self._decoder is None and chunk:
            self._decoder = zlib.decompressobj(self._wbits(chunk))
        out = b""
        if self._decoder is not None and chunk:
            room = self._limit - self._out
            try:
                out = self._decoder.decompress(chunk, room + 1)
            except zlib.error as exc:
                raise self._invalid(str(exc)) from None
            if len(out) > room:
                raise _closing(
                    "too_large",
                    f"decoded request body passed max_request_size of {self._limit} bytes",
                )
            self._out += len(out)
        if not more:
            if self._decoder is None or not self._decoder.eof:
                raise self._invalid("the compressed stream is truncated")
            if self._decoder.unused_data:
                raise self._invalid("there is data after the end of the compressed stream")
        return {"type": "http.request", "body": out, "more_body": more}

    def _wbits(self, first: bytes) -> int:
        if self._coding == "gzip":
            return 16 + zlib.MAX_WBITS
        # HTTP "deflate" is the zlib format, but many clients send a raw deflate stream:
        # a zlib stream starts with a header whose 16-bit value is a multiple of 31.
        if len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0:
            return zlib.MAX_WBITS
        return -zlib.MAX_WBITS
