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
import random
import re
import time
import zlib
from typing import TYPE_CHECKING, Final

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ephemeral_broker.api.limits import guard_body
from ephemeral_broker.api.paths import strict_names
from ephemeral_broker.api.runtime import Runtime
from ephemeral_broker.errors import BrokerError, problem_headers, render_problem, send_problem
from ephemeral_broker.logs import access_logger, logger
from ephemeral_broker.metrics import BrokerMetrics

if TYPE_CHECKING:
    from ephemeral_broker.api.auth import Authenticator
    from ephemeral_broker.api.routing import RouteTable

_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# Probes: never need auth, never count as activity, and stay answerable while draining.
PROBE_PATHS: Final = frozenset({"/healthz", "/readyz"})
_GZIP_LEVEL: Final = 1  # a local socket makes bytes cheap; CPU is the cost that matters
# nginx's convention for "the client went away before the answer": for metrics and the log.
CLIENT_CLOSED_STATUS: Final = 499
# The request headers any step reads; all others are skipped with one set lookup each.
# Not for secrets (S311): request ids only need to be unlikely to repeat.
_new_request_id: Final = random.Random(os.urandom(32)).getrandbits  # noqa: S311
_PLAIN_RESPONSE_CALL: Final = Response.__call__
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
    ) -> None:
        self.app = app
        self.runtime = runtime
        self.metrics = metrics
        self.gzip_threshold = compression_threshold
        self.access_log = access_log
        self.limit = max_request_size
        self.auth = auth
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # One clock for the duration and the activity stamp: monotonic has nanosecond
        # resolution on Linux, as perf_counter (the same clock there).
        started = time.monotonic()
        runtime = self.runtime
        # 1. Every header a later step needs, in one pass. The last of repeated headers wins,
        # except that any Accept-Encoding naming gzip, and any Transfer-Encoding, counts.
        found: dict[bytes, bytes] = {}
        gzip_named = False
        for name, value in scope["headers"]:
            if name in _WANTED:
                if name == b"accept-encoding":
                    gzip_named = gzip_named or b"gzip" in value.lower()
                else:
                    found[name] = value
        accepts_gzip = gzip_named and self.gzip_threshold > 0

        # 2. The request id.
        incoming_id = found.get(b"x-request-id")
        if incoming_id is not None and _REQUEST_ID.fullmatch(incoming_id):
            rid_bytes = incoming_id
            rid = incoming_id.decode()
        else:
            # 64 random bits as 16 hex digits, from a generator seeded from os.urandom: a
            # correlation id, not a secret, so it skips the system call per request.
            rid = f"{_new_request_id(64):016x}"
            rid_bytes = rid.encode()
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = rid

        path: str = scope["path"]
        probe = path in PROBE_PATHS
        runtime.requests_total += 1
        if not probe:
            runtime.last_activity = started
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
            # 3. The drain gate.
            if runtime.draining and not probe:
                await send_problem(
                    scope,
                    send_wrapper,
                    BrokerError("draining", "the broker is shutting down; retry on a new broker"),
                )
                return
            # 4. Auth sees the body as sent on the wire, which a signature covers.
            length = found.get(b"content-length")
            chunked = b"transfer-encoding" in found
            if self.auth is not None and not probe:
                admitted = await self.auth.admit(
                    scope,
                    receive,
                    send_wrapper,
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
            if (
                length is not None
                or chunked
                or b"%" in (scope.get("raw_path") or b"")
                or b"%" in scope["query_string"]
            ):
                screened = _screen(scope, receive, self.limit, found, length, chunked)
                if isinstance(screened, BrokerError):
                    await send_problem(scope, send_wrapper, screened)
                    return
                scope, receive = screened
            # 7. The route: one of the broker's own, straight from the route table, or else
            # FastAPI's router (404, 405, /openapi.json) with its exception handlers.
            routes = self.routes
            target = routes.find(scope) if routes is not None else None
            if routes is None or target is None:
                await self.app(scope, receive, send_wrapper)
                return
            try:
                response = await routes.enter(scope, target).call(scope, receive)
            except BrokerError as error:
                # The route's refusal, answered as its exception handler would.
                problem = render_problem(scope, error)
                response = Response(problem, error.status)
                response.raw_headers = problem_headers(error, problem)
            if type(response).__call__ is not _PLAIN_RESPONSE_CALL:
                await response(scope, receive, send_wrapper)  # one that sends itself (streams...)
                return
            # What Response.__call__ would send, with what send_wrapper would add, sent from
            # here (two fewer hops per message).
            status = response.status_code
            response_started = True
            start: Message = {
                "type": "http.response.start",
                "status": status,
                "headers": [*response.raw_headers, (b"x-request-id", rid_bytes)],
            }
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
            if not runtime.draining or response_started:
                raise
            await send_problem(
                scope,
                send_wrapper,
                BrokerError(
                    "draining",
                    "the broker shut down before this request completed (drain_timeout passed)",
                    headers={"Connection": "close"},
                ),
            )
        except Exception:
            # A bug. The body names nothing; the log has the traceback and the request id.
            logger.exception(
                "unhandled error while serving a request",
                extra={"fields": {"request_id": rid, "method": scope["method"], "path": path}},
            )
            if not response_started:
                await send_problem(
                    scope,
                    send_wrapper,
                    BrokerError("internal_error", f"internal error; see the broker log for {rid}"),
                )
        finally:
            runtime.in_flight -= 1
            ended = time.monotonic()
            if not probe:
                # Idle time counts from the end of the last request: a long waiting read is
                # activity for as long as it waits.
                runtime.last_activity = ended
            elapsed = ended - started
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
