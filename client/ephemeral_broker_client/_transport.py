"""`UnixTransport` and `AsyncUnixTransport`: HTTP/1.1 over a Unix socket for httpx, with the
response parsed by llhttp (`httptools`) instead of httpcore and h11.

Both are ordinary httpx transports (`httpx.Client(transport=UnixTransport(path))` talks to any
HTTP/1.1 server on a Unix socket), and both also offer `roundtrip(head, body, timeout_s)`: the
request as bytes in, the status, raw headers and body out, without httpx's `Request` and
`Response` objects. The broker clients use that; building those objects cost more than the
exchange itself.

Connections are kept alive and pooled (a few idle ones, a bounded number in all). Before an
idle connection is reused it is checked for an end of file or stray bytes: a server that
closed it while idle costs a new connection, not a failed call. A response that is not
complete, not HTTP, or bigger than `max_response_bytes` never leaves its connection in the
pool. Errors are httpx's own exception classes (`ConnectError`, `ReadTimeout`, `PoolTimeout`,
`RemoteProtocolError` …), so code written for httpx's transports handles them unchanged.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import os
import select
import socket
import struct
import threading
import weakref
from collections.abc import Iterable
from typing import Final, cast

import httpx
from httptools import HttpParserError, HttpResponseParser

DEFAULT_MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS: Final = 100
DEFAULT_MAX_IDLE: Final = 4
_RECV_SIZE: Final = 65536

RawHeaders = list[tuple[bytes, bytes]]


class ResponseTooLarge(httpx.RemoteProtocolError):
    """The server sent more than the transport's `max_response_bytes` for one response."""


class RawResponse:
    """One response, read in full: status, headers as sent (names as bytes), and the body
    still in its content-encoding."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: RawHeaders, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lowercase), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


# ---- the response parser -------------------------------------------------------------------


class _Reading:
    """What llhttp reports about the response being read on one connection (its callback
    object); one per connection, reset before each response."""

    __slots__ = (
        "body",
        "complete",
        "extra",
        "head_only",
        "headers",
        "headers_done",
        "keep_alive",
        "parser",
        "received",
    )

    def __init__(self) -> None:
        self.parser = HttpResponseParser(self)
        self.reset(head_only=False)

    def reset(self, *, head_only: bool) -> None:
        self.headers: RawHeaders = []
        self.body: list[bytes] = []
        self.head_only = head_only
        self.headers_done = False
        self.complete = False
        self.extra = False
        self.keep_alive = False
        self.received = 0

    # llhttp callbacks
    def on_message_begin(self) -> None:
        if self.complete:
            # A second response to one request: the connection is out of step.
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        if self.head_only:
            # A response to HEAD has no body whatever its Content-Length says; llhttp cannot
            # know the method, so the response ends here (and the connection is not reused).
            self.complete = True

    def on_body(self, data: bytes) -> None:
        if not self.head_only:
            self.body.append(data)

    def on_message_complete(self) -> None:
        # Only valid while llhttp is still on this message: it resets once the callback ends.
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True

    # the transports' side

    def feed(self, data: bytes | memoryview, limit: int) -> None:
        """Parse `data`; raises an httpx error for a response that is not HTTP or too big."""
        self.received += len(data)
        if self.received > limit:
            raise ResponseTooLarge(
                f"the response is larger than the transport's limit of {limit} bytes "
                "(max_response_bytes)"
            )
        try:
            self.parser.feed_data(data)
        except HttpParserError as exc:
            raise httpx.RemoteProtocolError(
                f"the server's response is not valid HTTP: {exc}"
            ) from None

    def ended_by_close(self) -> bool:
        """At the server's end of file: True if that completes the response (a body without
        Content-Length or chunked encoding runs until the connection closes)."""
        if not self.headers_done or self.complete:
            return self.complete
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length" or (
                lowered == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                return False
        self.complete = True
        return True

    def response(self) -> RawResponse:
        return RawResponse(self.parser.get_status_code(), self.headers, b"".join(self.body))

    def reusable(self) -> bool:
        return self.keep_alive and not self.extra and not self.head_only


def _unexpected_close(reading: _Reading) -> httpx.RemoteProtocolError:
    if reading.received == 0:
        return httpx.RemoteProtocolError("Server disconnected without sending a response.")
    return httpx.RemoteProtocolError(
        f"the server closed the connection in the middle of its response ({reading.received} "
        "bytes received)"
    )


# ---- turning an httpx.Request into bytes ---------------------------------------------------


def _timeouts(
    request: httpx.Request,
) -> tuple[float | None, float | None, float | None, float | None]:
    timeout = request.extensions.get("timeout") or {}
    return (timeout.get("connect"), timeout.get("read"), timeout.get("write"), timeout.get("pool"))


def _chunked(parts: Iterable[bytes]) -> bytes:
    out = [b"%x\r\n%s\r\n" % (len(part), part) for part in parts if part]
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def _head_and_body(request: httpx.Request, body_parts: Iterable[bytes]) -> tuple[bytes, bytes]:
    """The request head and the body as they go on the wire."""
    raw = request.headers.raw
    names = {name.lower() for name, _ in raw}
    chunked = b"transfer-encoding" in names
    body = _chunked(body_parts) if chunked else b"".join(body_parts)
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)]
    if b"host" not in names:
        lines.append(b"Host: %s\r\n" % request.url.netloc)
    lines.extend(b"%s: %s\r\n" % (name, value) for name, value in raw)
    if body and b"content-length" not in names and b"transfer-encoding" not in names:
        lines.append(b"Content-Length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    return b"".join(lines), body


def _response(raw: RawResponse) -> httpx.Response:
    # The body keeps its content-encoding: httpx.Response decodes it (gzip, deflate …).
    return httpx.Response(
        raw.status,
        headers=raw.headers,
        stream=httpx.ByteStream(raw.body),
        extensions={"http_version": b"HTTP/1.1"},
    )


def _connect_error(path: str, exc: OSError) -> httpx.ConnectError:
    reason = exc.strerror or type(exc).__name__
    return httpx.ConnectError(f"cannot connect to {path}: {reason}")


# ---- sync ----------------------------------------------------------------------------------


# Socket timeouts are set in whole milliseconds, rounded down so a timeout never runs past what
# was asked; one a connection already has is not set again. A client passes what is left of
# its call's budget, a little less on every call: rounding lets a run of calls share one
# setting instead of paying two setsockopt() calls each.
_NO_TIMEOUT: Final = -1


def _timeout_ms(seconds: float | None) -> int:
    if seconds is None:
        return _NO_TIMEOUT
    return max(1, int(seconds * 1000))  # 0 would mean "no timeout" to the kernel


def _timeval(milliseconds: int) -> bytes:
    if milliseconds == _NO_TIMEOUT:
        return struct.pack("ll", 0, 0)
    return struct.pack("ll", milliseconds // 1000, milliseconds % 1000 * 1000)


class _Connection:
    """One kept-alive socket of a `UnixTransport`."""

    __slots__ = ("poller", "reading", "recv_ms", "send_ms", "sock")

    def __init__(self, sock: socket.socket, send_ms: int) -> None:
        self.sock = sock
        self.send_ms = send_ms
        self.recv_ms = _NO_TIMEOUT
        self.reading = _Reading()
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)

    def idle_and_open(self) -> bool:
        # Readable while idle means the server closed it (end of file) or sent bytes nobody
        # asked for: either way it cannot carry the next request.
        return not self.poller.poll(0)

    def close(self) -> None:
        self.sock.close()


class _Pool(abc.ABC):
    """What both transports share: the socket's path and the pool's limits, checked once, and
    the fork hook that gives a child a pool of its own."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_idle: int = DEFAULT_MAX_IDLE,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        if max_connections < 1 or max_idle < 0 or max_response_bytes < 1:
            raise ValueError(
                "max_connections and max_response_bytes must be positive and max_idle not "
                f"negative, not {max_connections}, {max_response_bytes} and {max_idle}"
            )
        self.path = os.fspath(path)
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.max_response_bytes = max_response_bytes
        self._closed = False
        self._fresh_pool()
        _POOLS.add(self)

    @abc.abstractmethod
    def _fresh_pool(self) -> None:
        """An empty pool: no connections, no waiters."""

    @abc.abstractmethod
    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's connections (see each transport)."""


# Every transport alive in this process, for the fork hook at the end of this module.
_POOLS: weakref.WeakSet[_Pool] = weakref.WeakSet()


class UnixTransport(_Pool, httpx.BaseTransport):
    """An httpx transport for an HTTP/1.1 server on the Unix socket at `path`; thread-safe.

    Args:
        path: the server's socket.
        max_connections: connections open at once (idle or in use); a request that finds all
            in use waits up to its pool timeout (httpx.PoolTimeout).
        max_idle: idle connections kept for reuse.
        max_response_bytes: the most one response may take on the wire, head included
            (ResponseTooLarge, a subclass of httpx.RemoteProtocolError, beyond it).
    """

    def _fresh_pool(self) -> None:
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self._idle: list[_Connection] = []

    def _after_fork_in_child(self) -> None:
        # A connection inherited from the parent is the parent's: requests of both processes
        # would interleave on it. The child closes its copies (the parent's stay open: no
        # shutdown is sent) and starts an empty pool; the locks may have been held by a
        # thread of the parent that does not exist here.
        for connection in self._idle:
            connection.close()
        self._fresh_pool()

    def __repr__(self) -> str:
        return f"<UnixTransport path={self.path!r}>"

    # -- the pool

    def _checkout(self, connect_timeout: float | None, pool_timeout: float | None) -> _Connection:
        if self._closed:
            raise RuntimeError("this UnixTransport is closed")
        with self._lock:
            while self._idle:
                connection = self._idle.pop()
                if connection.idle_and_open():
                    return connection
                connection.close()
                self._slots.release()
        if not self._slots.acquire(timeout=pool_timeout):
            raise httpx.PoolTimeout(
                f"all {self.max_connections} connections to {self.path} stayed in use for the "
                "pool timeout"
            )
        try:
            return self._connect(connect_timeout)
        except BaseException:
            self._slots.release()
            raise

    def _connect(self, timeout: float | None) -> _Connection:
        # A blocking socket with kernel-side timeouts (SO_SNDTIMEO, SO_RCVTIMEO): a
        # Python-level timeout would add a poll() before every send and recv. A blocking
        # connect also waits (up to SO_SNDTIMEO) for room in a listener's full backlog, where
        # a non-blocking one fails at once with EAGAIN.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        send_ms = _timeout_ms(timeout)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(send_ms))
            sock.connect(self.path)
        except BlockingIOError:
            sock.close()
            raise httpx.ConnectTimeout(
                f"connecting to {self.path} timed out (its listen backlog stayed full)"
            ) from None
        except OSError as exc:
            sock.close()
            raise _connect_error(self.path, exc) from None
        return _Connection(sock, send_ms)

    def _checkin(self, connection: _Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(connection)
                return
        self._discard(connection)

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._slots.release()

    # -- one exchange

    def roundtrip(
        self,
        head: bytes,
        body: bytes = b"",
        timeout_s: float | None = None,
        *,
        head_only: bool = False,
        connect_timeout: float | None = None,
        write_timeout: float | None = None,
        pool_timeout: float | None = None,
    ) -> RawResponse:
        """Send one request (its head and body as they go on the wire) and read the whole
        response. `timeout_s` is the read timeout, and the default of the others."""
        connection = self._checkout(
            timeout_s if connect_timeout is None else connect_timeout,
            timeout_s if pool_timeout is None else pool_timeout,
        )
        try:
            response, reusable = self._exchange(
                connection,
                head,
                body,
                timeout_s,
                timeout_s if write_timeout is None else write_timeout,
                head_only,
            )
        except BaseException:
            # Whatever broke (a timeout, an error, an interrupt), the connection may hold
            # half a response: never reuse it.
            self._discard(connection)
            raise
        if reusable:
            self._checkin(connection)
        else:
            self._discard(connection)
        return response

    def _exchange(
        self,
        connection: _Connection,
        head: bytes,
        body: bytes,
        read_timeout: float | None,
        write_timeout: float | None,
        head_only: bool,
    ) -> tuple[RawResponse, bool]:
        sock = connection.sock
        reading = connection.reading
        reading.reset(head_only=head_only)
        try:
            send_ms = _timeout_ms(write_timeout)
            if send_ms != connection.send_ms:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(send_ms))
                connection.send_ms = send_ms
            sock.sendall(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                sock.sendall(body)
        except BlockingIOError:  # SO_SNDTIMEO ran out
            raise httpx.WriteTimeout(f"writing the request to {self.path} timed out") from None
        except OSError as exc:
            raise httpx.WriteError(f"writing the request to {self.path} failed: {exc}") from None
        recv_ms = _timeout_ms(read_timeout)
        if recv_ms != connection.recv_ms:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(recv_ms))
            connection.recv_ms = recv_ms
        limit = self.max_response_bytes
        recv = sock.recv
        while not reading.complete:
            try:
                data = recv(_RECV_SIZE)
            except BlockingIOError:  # SO_RCVTIMEO ran out
                raise httpx.ReadTimeout(
                    f"no complete response from {self.path} within the read timeout"
                ) from None
            except OSError as exc:
                raise httpx.ReadError(
                    f"reading the response from {self.path} failed: {exc}"
                ) from None
            if not data:
                if reading.ended_by_close():
                    return reading.response(), False
                raise _unexpected_close(reading)
            reading.feed(data, limit)
        return reading.response(), reading.reusable()

    # -- httpx.BaseTransport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        connect, read, write, pool = _timeouts(request)
        stream = request.stream
        if not isinstance(stream, Iterable):
            raise TypeError("UnixTransport needs a request with a synchronous body")
        head, body = _head_and_body(request, stream)
        raw = self.roundtrip(
            head,
            body,
            read,
            head_only=request.method == "HEAD",
            connect_timeout=connect,
            write_timeout=write,
            pool_timeout=pool,
        )
        return _response(raw)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            self._discard(connection)


# ---- async ---------------------------------------------------------------------------------


class _AsyncConnection(asyncio.BufferedProtocol):
    """One kept-alive connection of an `AsyncUnixTransport`, as an asyncio protocol: the
    event loop hands it the bytes as they arrive, and an idle connection the server closed
    marks itself closed right away, so reuse never picks it."""

    def __init__(self, path: str, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.buffer = memoryview(bytearray(_RECV_SIZE))
        self.reading = _Reading()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.waiter: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None
        self.closed = False
        self.paused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (asyncio's or uvloop's, which does not subclass asyncio's).
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        # The loop reads into this one buffer (recv_into) instead of allocating a new bytes
        # object of its read size (256 KiB on asyncio's loop) for every read.
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.close()  # bytes while idle: the connection is out of step
            return
        try:
            self.reading.feed(data, self.limit)
        except httpx.RemoteProtocolError as exc:
            waiter.set_exception(exc)
            self.close()
            return
        if self.reading.complete:
            waiter.set_result(None)

    def eof_received(self) -> bool:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self.reading.ended_by_close():
                waiter.set_result(None)
            else:
                waiter.set_exception(_unexpected_close(self.reading))
        self.closed = True
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_exception(_unexpected_close(self.reading))
            else:
                waiter.set_exception(httpx.ReadError(f"the connection broke: {exc}"))
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_exception(httpx.WriteError("the connection broke while writing"))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    # the transport's side

    def usable(self) -> bool:
        # Only on the event loop it was made on: that loop running in this thread is the
        # running loop (a thread runs one loop at a time). Checked this way because
        # asyncio.get_running_loop() makes a getpid() system call on every call (Python 3.11).
        return not self.closed and self.thread == threading.get_ident() and self.loop.is_running()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self, timeout_s: float | None) -> None:
        """Wait until the event loop took the request off the write buffer."""
        drained = self.drained = self.loop.create_future()
        try:
            await asyncio.wait_for(drained, timeout_s)
        except TimeoutError:
            raise httpx.WriteTimeout(f"writing the request to {self.path} timed out") from None

    def arm(self, timeout_s: float | None) -> None:
        """Fail the response being awaited with ReadTimeout if it is not complete within
        `timeout_s`.

        One timer per connection, not one per request: the timer is only moved earlier when
        a request's deadline comes before it; when it fires early for a later deadline it is
        set again for that one. Calls in a row then cost no timer each.
        """
        if timeout_s is None:
            self.deadline = None
            return
        deadline = self.deadline = self.loop.time() + timeout_s
        timer = self.timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(deadline, self._deadline_reached)

    def _deadline_reached(self) -> None:
        self.timer = None
        waiter, deadline = self.waiter, self.deadline
        if waiter is None or waiter.done() or deadline is None:
            return
        if self.loop.time() < deadline:
            self.timer = self.loop.call_at(deadline, self._deadline_reached)
            return
        waiter.set_exception(
            httpx.ReadTimeout(f"no complete response from {self.path} within the read timeout")
        )

    def close(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport = self.transport
        if transport is None:
            return
        if self.loop.is_closed():
            # A connection left from an event loop that has ended (an earlier asyncio.run):
            # that loop can no longer run the transport's close. asyncio's own transports keep
            # their socket in `_sock` and warn "unclosed transport" when collected with it
            # open, so the socket is closed here and the transport told it has none. Other
            # loops' transports (uvloop's) get the connection shut down (the server sees it
            # end); their descriptor is closed with the transport.
            raw = getattr(transport, "_sock", None)
            if isinstance(raw, socket.socket):
                raw.close()
                transport._sock = None  # type: ignore[attr-defined]
                return
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    ended = socket.socket(fileno=sock.fileno())
                    try:
                        ended.shutdown(socket.SHUT_RDWR)
                    finally:
                        ended.detach()
            return
        transport.abort()


class AsyncUnixTransport(_Pool, httpx.AsyncBaseTransport):
    """An asyncio httpx transport for an HTTP/1.1 server on the Unix socket at `path`.

    It runs on the running event loop's own sockets and protocols (uvloop's, when the loop is
    uvloop), not anyio. A call cancelled while it waits for the response closes that
    connection: a pooled connection never holds half of an earlier response. The arguments
    are those of `UnixTransport`.
    """

    def _fresh_pool(self) -> None:
        self._idle: list[_AsyncConnection] = []
        self._open = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    def _after_fork_in_child(self) -> None:
        # The inherited connections belong to the parent's event loop and are the parent's;
        # dropping them here leaves their sockets to be closed when collected, in this
        # process only.
        self._fresh_pool()

    def __repr__(self) -> str:
        return f"<AsyncUnixTransport path={self.path!r}>"

    # -- the pool

    def _idle_connection(self) -> _AsyncConnection | None:
        if self._closed:
            raise RuntimeError("this AsyncUnixTransport is closed")
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.usable():
                return connection
            self._discard(connection)
        return None

    async def _new_connection(
        self, connect_timeout: float | None, pool_timeout: float | None
    ) -> _AsyncConnection:
        if self._open >= self.max_connections:
            await self._wait_for_slot(pool_timeout)
        self._open += 1
        try:
            return await self._connect(connect_timeout)
        except BaseException:
            self._release_slot()
            raise

    async def _wait_for_slot(self, timeout_s: float | None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            raise httpx.PoolTimeout(
                f"all {self.max_connections} connections to {self.path} stayed in use for the "
                "pool timeout"
            ) from None
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
        # The slot freed for this waiter was handed over without lowering the count.
        self._open -= 1

    def _release_slot(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._open -= 1

    async def _connect(self, timeout_s: float | None) -> _AsyncConnection:
        loop = asyncio.get_running_loop()
        path, limit = self.path, self.max_response_bytes
        try:
            _, connection = await asyncio.wait_for(
                loop.create_unix_connection(lambda: _AsyncConnection(path, limit), path), timeout_s
            )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {self.path} timed out") from None
        except OSError as exc:
            raise _connect_error(self.path, exc) from None
        return connection

    def _checkin(self, connection: _AsyncConnection) -> None:
        if not self._closed and len(self._idle) < self.max_idle and not connection.closed:
            self._idle.append(connection)
        else:
            self._discard(connection)

    def _discard(self, connection: _AsyncConnection) -> None:
        connection.close()
        self._release_slot()

    # -- one exchange

    async def roundtrip(
        self,
        head: bytes,
        body: bytes = b"",
        timeout_s: float | None = None,
        *,
        head_only: bool = False,
        connect_timeout: float | None = None,
        write_timeout: float | None = None,
        pool_timeout: float | None = None,
    ) -> RawResponse:
        """Send one request (its head and body as they go on the wire) and read the whole
        response. `timeout_s` is the read timeout, and the default of the others."""
        # A pooled connection is taken without a coroutine of its own (most calls).
        connection = self._idle_connection() or await self._new_connection(
            timeout_s if connect_timeout is None else connect_timeout,
            timeout_s if pool_timeout is None else pool_timeout,
        )
        try:
            # The exchange is written out here, not in a helper coroutine: every await layer
            # is resumed again when the answer arrives.
            connection.reading.reset(head_only=head_only)
            waiter = connection.waiter = connection.loop.create_future()
            connection.send(head + body if body else head)
            if connection.paused:
                await connection.drain(timeout_s if write_timeout is None else write_timeout)
            if not waiter.done():
                connection.arm(timeout_s)
                await waiter
            else:
                waiter.result()  # raises what the protocol stored
        except BaseException:
            # A timeout, an error, or a cancellation (CancelledError) while the response was
            # on its way: the rest of it may still arrive on this connection, so it goes.
            self._discard(connection)
            raise
        connection.waiter = None
        reading = connection.reading
        if reading.reusable():
            self._checkin(connection)
        else:
            self._discard(connection)
        return reading.response()

    # -- httpx.AsyncBaseTransport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        connect, read, write, pool = _timeouts(request)
        stream = request.stream
        if isinstance(stream, httpx.AsyncByteStream):
            parts = [part async for part in stream]
        elif isinstance(stream, Iterable):
            parts = list(stream)
        else:
            raise TypeError("AsyncUnixTransport cannot read this request's body")
        head, body = _head_and_body(request, parts)
        raw = await self.roundtrip(
            head,
            body,
            read,
            head_only=request.method == "HEAD",
            connect_timeout=connect,
            write_timeout=write,
            pool_timeout=pool,
        )
        return _response(raw)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            self._discard(connection)


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
