"""BrokerMiddleware: the one pure-ASGI middleware every request passes through.

Never BaseHTTPMiddleware (it is slow and breaks streaming), and one middleware rather than a
stack of them: each layer of a stack is another coroutine, another pass over the headers and
another `send` wrapper per request, and on a request that costs a few tens of microseconds in
all, those add up. In order, for each HTTP request:

  1. one pass over the headers picks out everything the steps below need;
  2. the request id (the client's X-Request-ID when it is valid, else a new one);
  3. the drain gate: once shutdown has begun, everything but the probes gets 503 draining;
  4. auth (auth.py, only when a secret is set; not for the probes): Bearer or HMAC signature;
  5. body limits and Content-Encoding (limits.py), before and while the body is read;
  6. dispatch: a request for one of the broker's routes goes straight to that route
     (api/routing.py's RouteTable: the route Starlette's router would pick, without walking
     the router); anything else (no such route, wrong method, /openapi.json) goes on to the
     FastAPI app, whose router and exception handlers answer it;
  and around all of it: in-flight and activity accounting, gzip of large responses, metrics,
  the access log, and the last line of defence: any exception becomes a 500 problem with no
  traceback in the body.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ephemeral_broker.api.limits import guard_body
from ephemeral_broker.api.paths import PERCENT, strict_names
from ephemeral_broker.api.runtime import Runtime
from ephemeral_broker.errors import BrokerError, problem_headers, render_problem, send_problem
from ephemeral_broker.logs import access_logger, logger
from ephemeral_broker.metrics import BrokerMetrics, OperationSeries

if TYPE_CHECKING:
    from ephemeral_broker.api.auth import Authenticator
    from ephemeral_broker.api.routing import RouteTable

_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# Probes: never need auth, never count as activity, and stay answerable while draining.
PROBE_PATHS: Final = frozenset({"/healthz", "/readyz"})
_GZIP_LEVEL: Final = 1  # a local socket makes bytes cheap; CPU is the cost that matters
# nginx's convention for "the client went away before the answer": for metrics and the log.
CLIENT_CLOSED_STATUS: Final = 499
# Request ids: 16 hex digits of a counter that starts at a random 64-bit number. Unique
# within a broker and unlikely to repeat across brokers; a correlation id, not a secret, so a
# counter rather than random bits per request. They are made 256 at a time, each ready as its
# response header, so a request takes the next one from an iterator. The scope's state keeps
# the id as bytes; it becomes text only where it is written out (an error, a log line).
_LOW_DIGITS: Final = tuple(b"%02x" % low for low in range(256))
_HIGH_MASK: Final = 2**56 - 1


def _request_ids(first_batch: int) -> Iterator[tuple[bytes, bytes]]:
    """The X-Request-ID header of every id from batch `first_batch` on (batch n: the ids 256n
    to 256n + 255), endlessly."""
    batch = first_batch
    while True:
        high = b"%014x" % (batch & _HIGH_MASK)
        for low in _LOW_DIGITS:
            yield b"x-request-id", high + low
        batch += 1


_monotonic: Final = time.monotonic
_PLAIN_RESPONSE_CALL: Final = Response.__call__
# The request headers any step reads; all others are skipped with one set lookup each.
_WANTED: Final = frozenset(
    {
        b"x-request-id",
        b"accept-encoding",
        b"content-length",
        b"content-encoding",
        b"transfer-encoding",
        b"authorization",
        b"x-broker-timestamp",
        b"x-broker-signature",
    }
)


class BrokerMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        runtime: Runtime,
        metrics: BrokerMetrics,
        compression_threshold: int,
        access_log: bool,
        max_request_size: int,
        auth: Authenticator | None = None,
        routes: RouteTable | None = None,
        outer: ASGIApp | None = None,
    ) -> None:
        self.app = app
        # The FastAPI app this middleware fronts, when the server calls the middleware itself
        # (see api/app.py's asgi_entry): it is then the scope's `app`, and what is not HTTP
        # (lifespan) goes to it, the way the server would have called it.
        self.outer = outer
        self._next_request_id = _request_ids(int.from_bytes(os.urandom(7), "big")).__next__
        self.runtime = runtime
        self.metrics = metrics
        self._series: dict[int, OperationSeries] = {}
        self._routes_seen: list[object] = []
        self.gzip_threshold = compression_threshold
        self.access_log = access_log
        self.limit = max_request_size
        self.auth = auth
        self.routes = routes
        # The routes' header parameters are picked out in the same pass (see RouteTable.dispatch).
        self._wanted = _WANTED | routes.header_names if routes is not None else _WANTED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if "app" not in scope and self.outer is not None:
                await self.outer(scope, receive, send)  # from the server: the app's own way
            else:
                await self.app(scope, receive, send)
            return
        if self.outer is not None:
            scope["app"] = self.outer
        # One clock for the duration and the activity stamp: monotonic has nanosecond
        # resolution on Linux, as perf_counter (the same clock there).
        started = _monotonic()
        runtime = self.runtime
        # 1. Every header a later step needs, in one pass. The last of repeated headers wins,
        # except that any Accept-Encoding naming gzip, and any Transfer-Encoding, counts.
        found: dict[bytes, bytes] = {}
        gzip_named = False
        wanted = self._wanted
        for name, value in scope["headers"]:
            if name in wanted:
                if name == b"accept-encoding":
                    gzip_named = gzip_named or b"gzip" in value.lower()
                else:
                    found[name] = value
        accepts_gzip = gzip_named and self.gzip_threshold > 0

        # 2. The request id.
        incoming_id = found.get(b"x-request-id") if found else None
        if incoming_id is not None and _REQUEST_ID.fullmatch(incoming_id):
            rid_header = (b"x-request-id", incoming_id)
        else:
            rid_header = self._next_request_id()
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = rid_header[1]  # bytes: see errors.request_id_of

        path: str = scope["path"]
        probe = path in PROBE_PATHS
        runtime.requests_total += 1
        status = 500
        sent = False  # a response start sent by this method itself
        # The send for every answer not sent below by this method itself (refusals, FastAPI's
        # router, responses that send themselves): made only when one is needed.
        reply: _Reply | None = None
        runtime.in_flight += 1
        try:
            # 3. The drain gate.
            if runtime.draining and not probe:
                reply = _Reply(self, send, rid_header, accepts_gzip)
                await send_problem(
                    scope,
                    reply,
                    BrokerError("draining", "the broker is shutting down; retry on a new broker"),
                )
                return
            # 4. Auth sees the body as sent on the wire, which a signature covers.
            if found:
                length = found.get(b"content-length")
                chunked = b"transfer-encoding" in found
            else:
                length, chunked = None, False
            if self.auth is not None and not probe:
                reply = _Reply(self, send, rid_header, accepts_gzip)
                admitted = await self.auth.admit(
                    scope,
                    receive,
                    reply,
                    found.get(b"authorization"),
                    found.get(b"x-broker-timestamp"),
                    found.get(b"x-broker-signature"),
                    length,
                    chunked,
                )
                if admitted is None:
                    return  # answered already
                receive = admitted
            # 5 and 6. Names in the path and query; body limits and Content-Encoding. Only a
            # request with a body, or a target with a percent-escape, has anything to check.
            query: bytes = scope["query_string"]
            if (
                length is not None
                or chunked
                or PERCENT in (scope.get("raw_path") or b"")
                or (query and PERCENT in query)
            ):
                screened = _screen(scope, receive, self.limit, found, length, chunked)
                if isinstance(screened, BrokerError):
                    if reply is None:
                        reply = _Reply(self, send, rid_header, accepts_gzip)
                    await send_problem(scope, reply, screened)
                    return
                scope, receive = screened
            # 7. The route: one of the broker's own, straight from the route table, or else
            # FastAPI's router (404, 405, /openapi.json) with its exception handlers.
            routes = self.routes
            response: Response | None = None
            try:
                call = routes.dispatch(scope, receive, found) if routes is not None else None
                if call is not None:
                    response = await call
            except BrokerError as error:
                # The route's refusal, answered as its exception handler would.
                problem = render_problem(scope, error)
                response = Response(problem, error.status)
                response.raw_headers = problem_headers(error, problem)
            if response is None or type(response).__call__ is not _PLAIN_RESPONSE_CALL:
                if reply is None:
                    reply = _Reply(self, send, rid_header, accepts_gzip)
                if response is None:
                    await self.app(scope, receive, reply)
                else:
                    await response(scope, receive, reply)  # one that sends itself (streams...)
                return
            # What Response.__call__ would send, with what _Reply would add, sent from here
            # (two fewer hops per message).
            status = response.status_code
            sent = True
            # The response's header list is its own, made with it: extended where it is.
            headers = response.raw_headers
            headers.append(rid_header)
            start: Message = {"type": "http.response.start", "status": status, "headers": headers}
            body: Message = {"type": "http.response.body", "body": response.body}
            if accepts_gzip:
                start, body = self._maybe_gzip(start, body)
            await send(start)
            await send(body)
            if response.background is not None:
                await response.background()
        except ClientDisconnect:
            # The client hung up while sending its body: nobody to answer, and not a bug.
            status = CLIENT_CLOSED_STATUS
            state["error_code"] = None
            state["result"] = "client_closed"
        except asyncio.CancelledError:
            # The drain deadline passed with this request unanswered and uvicorn cancelled it:
            # the client gets `503 draining` (retry elsewhere), not uvicorn's plain-text 500.
            if not runtime.draining or sent or (reply is not None and reply.started):
                raise
            reply = reply or _Reply(self, send, rid_header, accepts_gzip)
            await send_problem(
                scope,
                reply,
                BrokerError(
                    "draining",
                    "the broker shut down before this request completed (drain_timeout passed)",
                    headers={"Connection": "close"},
                ),
            )
        except Exception:
            # A bug. The body names nothing; the log has the traceback and the request id.
            rid = rid_header[1].decode()
            logger.exception(
                "unhandled error while serving a request",
                extra={"fields": {"request_id": rid, "method": scope["method"], "path": path}},
            )
            if not sent and (reply is None or not reply.started):
                reply = reply or _Reply(self, send, rid_header, accepts_gzip)
                await send_problem(
                    scope,
                    reply,
                    BrokerError("internal_error", f"internal error; see the broker log for {rid}"),
                )
        finally:
            runtime.in_flight -= 1
            ended = _monotonic()
            if not probe:
                # Idle time counts from the end of the last request (while one is in flight
                # the broker is not idle): a long waiting read is activity while it waits.
                runtime.last_activity = ended
            if status == 500 and reply is not None and reply.started:
                status = reply.status  # what _Reply sent (not a disconnect: that set 499)
            elapsed = ended - started
            route = scope.get("route")
            series = self._series.get(id(route))
            if series is None:
                series = self._series_of(route)
            # An error code is only ever recorded with a problem, whose status is 4xx or 5xx.
            if status < 400:
                result = state.get("result") or "ok"
            else:
                error_code = state.get("error_code")
                result = state.get("result") or error_code or "error"
                if error_code is not None:
                    self.metrics.count_error(error_code)
            series.observe(result, elapsed)
            if self.access_log:
                access_logger.info(
                    "request",
                    extra={
                        "fields": {
                            "method": scope["method"],
                            "path": path,
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 3),
                            "request_id": rid_header[1].decode(),
                        }
                    },
                )

    def _series_of(self, route: object) -> OperationSeries:
        """The metric series of a route (the scope's `route`, None when nothing routed it),
        kept by the route's id so that a request finds its series with one lookup (Starlette's
        routes compare by value, so they are not hashable)."""
        # Every route the broker declares has a name; others (FastAPI's own) may not.
        operation = getattr(route, "name", None) or "unrouted"
        series = self._series[id(route)] = self.metrics.series(operation)
        self._routes_seen.append(route)  # alive as long as its id is a key here
        return series

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


class _Reply:
    """The send for answers BrokerMiddleware does not send itself: it adds X-Request-ID to the
    response start, gzips a large body when the client accepts it, and notes the status."""

    __slots__ = ("_gzip", "_held", "_middleware", "_rid_header", "_send", "started", "status")

    def __init__(
        self,
        middleware: BrokerMiddleware,
        send: Send,
        rid_header: tuple[bytes, bytes],
        accepts_gzip: bool,
    ) -> None:
        self._middleware = middleware
        self._send = send
        self._rid_header = rid_header
        self._gzip = accepts_gzip
        self._held: Message | None = None
        self.started = False
        self.status = 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.started = True
            message = {**message, "headers": [*message["headers"], self._rid_header]}
            if self._gzip:
                self._held = message  # wait for the body to decide on compression
                return
        elif self._held is not None and message["type"] == "http.response.body":
            start, self._held = self._held, None
            start, message = self._middleware._maybe_gzip(start, message)
            await self._send(start)
        await self._send(message)


def _screen(
    scope: Scope,
    receive: Receive,
    limit: int,
    found: dict[bytes, bytes],
    length: bytes | None,
    chunked: bool,
) -> tuple[Scope, Receive] | BrokerError:
    """Steps 5 and 6: the scope and receive the route gets, or why the request is refused."""
    # 5. Names in the path and query: strict UTF-8, one segment each (api/paths.py).
    refused = strict_names(scope)
    if refused is not None:
        return refused
    # 6. Body limits and Content-Encoding (nothing to do without a body).
    if length is None and not chunked:
        return scope, receive
    return guard_body(scope, receive, limit, length, found.get(b"content-encoding", b""), chunked)
