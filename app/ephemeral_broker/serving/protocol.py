"""The broker's HTTP/1.1 connection: uvicorn's httptools protocol with the broker's limits on
what one connection may cost, enforced before any app code runs.

- A request the parser cannot read is answered with problem+json (`bad_request`), not
  uvicorn's plain-text 400: every error of ours has a stable code.
- The request line and headers together are bounded by `max_head_bytes` (`431
  headers_too_large`) on every request of a connection, however the head is split into reads.
  Two counts do it: the parser's callbacks add up the URL and each header exactly, checked
  when the head is complete and before the request is dispatched (a head that arrives in one
  read is refused just the same); and the raw bytes received while a head is incomplete are
  counted too, because httptools holds a header value until it is complete, so memory spent
  on a head never passes the bound by more than one read from the socket.
- Time: a connection that sends nothing is closed after `keep_alive` from the moment it
  opens (uvicorn arms its keep-alive timer only after a first response); a head must be
  complete within `head_timeout` of its first byte, and a body must keep moving, no gap longer
  than `body_timeout` between its reads. A request that stops is answered `408
  request_timeout` and its connection closed; an app waiting for the body sees a disconnect,
  so the request no longer counts as in flight and a drain does not wait for it. Once a drain
  has begun, a body in progress gets at most `DRAIN_BODY_GRACE` between reads.
- All of these deadlines share one timer per connection, re-armed lazily: arming a deadline
  is two attribute writes, and the timer, when it fires early (its deadline moved on since),
  sets itself for the current one. A request costs no timer call of its own; uvicorn's
  keep-alive timer after each response is folded into the same one.
- At most `max_connections` connections at once: one more is answered `503
  too_many_connections` at once and closed, and a warning is logged at most once per
  `REFUSAL_LOG_INTERVAL` with the count refused since the last one.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ephemeral_broker.errors import (
    ERRORS,
    PROBLEM_CONTENT_TYPE,
    RETRY_AFTER_SECONDS,
    ErrorCode,
    problem_body,
)
from ephemeral_broker.logs import logger

# Request line plus headers. The broker's own headers are small (a signature is ~200 bytes);
# 64 KiB leaves room for any client while bounding what one connection can make us hold.
MAX_HEAD_BYTES: Final = 64 * 1024
# ": " and CRLF around each header, as they were on the wire.
_HEADER_OVERHEAD: Final = 4
DRAIN_BODY_GRACE: Final = 1.0
REFUSAL_LOG_INTERVAL: Final = 10.0


class _RequestRefused(Exception):
    """Raised from a parser callback to stop parsing a request that has been answered."""


@dataclass
class ConnectionLimits:
    """What one server's connections may cost; seconds for the timeouts."""

    keep_alive: float = 30.0
    head_timeout: float = 10.0
    body_timeout: float = 10.0
    max_connections: int = 1000
    max_head_bytes: int = MAX_HEAD_BYTES
    # Shared by the server's connections: when the last refusal was logged, and how many
    # refusals since.
    refusals: list[float] = field(default_factory=lambda: [0.0, 0.0])


class BrokerHttpProtocol(HttpToolsProtocol):
    """See the module docstring. `limits` is set per server by `protocol_class()`."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    draining: ClassVar[list[bool]] = [False]

    _head_complete = True
    _head_bytes = 0  # counted by the parser callbacks: exact, per request
    _raw_head_bytes = 0  # counted as bytes arrive while a head is incomplete
    _body_in_progress = False
    # The one deadline in force (loop time) and what to do when it passes (None: none).
    _deadline = 0.0
    _on_deadline: Callable[[], None] | None = None
    # The loop timer behind it, and when that timer fires: at or before `_deadline`.
    _timer: asyncio.TimerHandle | None = None
    _timer_at = 0.0

    # ---- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse_connection()
            return
        self._arm(self.limits.keep_alive, self._close_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._head_complete:
            self._raw_head_bytes += len(data)
        super().data_received(data)
        if (
            not self._head_complete
            and self._raw_head_bytes > self.limits.max_head_bytes
            and not self.transport.is_closing()
        ):
            self._refuse_head()

    def shutdown(self) -> None:
        super().shutdown()
        if self._body_in_progress and not self.transport.is_closing():
            self._arm(min(self.limits.body_timeout, DRAIN_BODY_GRACE), self._body_stalled)

    def on_response_complete(self) -> None:
        # uvicorn's own, except that the keep-alive wait is our lazy deadline instead of a
        # fresh `call_later` after every response (and a cancel on the next request's data).
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._arm(self.limits.keep_alive, self._close_idle)

    # ---- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_complete = False
        self._head_bytes = 0
        self._raw_head_bytes = 0
        self._arm(self.limits.head_timeout, self._head_stalled)

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + _HEADER_OVERHEAD
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_complete = True
        if self._head_bytes > self.limits.max_head_bytes:
            self._refuse_head()
            raise _RequestRefused  # the parser stops here: nothing is dispatched
        self._body_in_progress = True
        self._arm(self._body_timeout(), self._body_stalled)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._arm(self._body_timeout(), self._body_stalled)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_in_progress = False
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse("bad_request", f"the HTTP request is malformed: {msg}")

    # ---- timers --------------------------------------------------------------------------

    def _body_timeout(self) -> float:
        if self.draining[0]:
            return min(self.limits.body_timeout, DRAIN_BODY_GRACE)
        return self.limits.body_timeout

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        deadline = self.loop.time() + seconds
        self._deadline = deadline
        self._on_deadline = callback
        # A timer that fires no later than the deadline stays: when it fires early, _expire
        # sets it again. Only a deadline earlier than the timer (a first one, a drain's grace
        # period) needs a new timer.
        if self._timer is None or deadline < self._timer_at:
            self._set_timer(deadline)

    def _disarm(self) -> None:
        self._on_deadline = None  # a pending timer finds nothing to do and lapses

    def _set_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer = None
        callback = self._on_deadline
        if callback is None:
            return
        if self.loop.time() < self._deadline:
            self._set_timer(self._deadline)  # the deadline moved on since this timer was set
            return
        self._on_deadline = None
        callback()

    def _cancel_timer(self) -> None:
        self._on_deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_idle(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _head_stalled(self) -> None:
        seconds = self.limits.head_timeout
        self._refuse("request_timeout", f"the request head did not arrive within {seconds:g} s")

    def _body_stalled(self) -> None:
        if self.flow.read_paused:
            # We stopped reading (the app is behind), not the client: not its stall.
            self._arm(self._body_timeout(), self._body_stalled)
            return
        cycle = self.cycle
        started = cycle is not None and cycle.response_started
        if cycle is not None and not cycle.response_complete:
            # The app waiting for the body gets a disconnect and its answer is dropped, so
            # the request ends now instead of holding the drain.
            cycle.disconnected = True
            cycle.message_event.set()
        if started:
            self.transport.close()
            return
        self._refuse(
            "request_timeout",
            f"the request body stopped arriving: nothing for {self._body_timeout():g} s",
        )

    # ---- refusals ------------------------------------------------------------------------

    def _refuse_head(self) -> None:
        limit = self.limits.max_head_bytes
        self._refuse("headers_too_large", f"the request line and headers passed {limit} bytes")

    def _refuse_connection(self) -> None:
        limit = self.limits.max_connections
        refusals = self.limits.refusals
        refusals[1] += 1
        now = time.monotonic()
        if now - refusals[0] >= REFUSAL_LOG_INTERVAL:
            logger.warning(
                "connection refused: too many connections",
                extra={"fields": {"max_connections": limit, "refused": int(refusals[1])}},
            )
            refusals[0], refusals[1] = now, 0
        self._refuse(
            "too_many_connections",
            f"the broker already serves {limit} connections (max_connections); retry shortly",
        )

    def _refuse(self, code: ErrorCode, detail: str) -> None:
        if self.transport.is_closing():
            return
        self._cancel_timer()
        rid = os.urandom(8).hex()
        body = problem_body(code, detail, rid)
        status, title = ERRORS[code]
        head = [b"HTTP/1.1 %d %s\r\n" % (status, title.encode())]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        if status == 503:
            head.append(b"retry-after: %s\r\n" % RETRY_AFTER_SECONDS.encode())
        head.append(
            b"content-type: %s\r\ncontent-length: %d\r\nx-request-id: %s\r\n"
            b"connection: close\r\n\r\n" % (PROBLEM_CONTENT_TYPE.encode(), len(body), rid.encode())
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def protocol_class(limits: ConnectionLimits) -> type[BrokerHttpProtocol]:
    """A protocol class bound to one server's limits and drain flag (uvicorn takes a class)."""
    attributes = {"limits": limits, "draining": [False]}
    return type("BrokerHttpProtocol", (BrokerHttpProtocol,), attributes)
