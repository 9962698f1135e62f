"""The optional TCP listener for Prometheus and HTTP probes (`--metrics-listen HOST:PORT`).

Prometheus scrapes `host:port`, and Kubernetes probes are `httpGet` on a port: neither reaches
a Unix socket. This listener serves exactly three read-only routes over TCP, from the broker's
own state in the same process:

    GET /metrics   the same exposition as the socket's /metrics
    GET /healthz   liveness: 200 while the process serves
    GET /readyz    readiness: 503 `draining` once shutdown began

Nothing else is reachable here: no key, lease or value, and nothing a client could change, so
the listener asks for no credential even when the broker's auth is on (what it shows is counts
and process figures). It binds loopback unless an address is given. Its requests are not
counted as broker activity: a scrape does not keep an idle broker alive, and it does not add to
the request metrics it reports.

It is a pure ASGI app (no routing framework: three fixed paths) on a second uvicorn server in
the broker's event loop, started after the broker's socket listens and stopped after the
broker has drained, so probes see `/readyz` turn 503 during the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import orjson
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST

from ephemeral_broker.api.runtime import Runtime
from ephemeral_broker.errors import ERRORS, PROBLEM_CONTENT_TYPE, RETRY_AFTER_SECONDS, problem_body
from ephemeral_broker.metrics import BrokerMetrics, ScrapeSnapshot
from ephemeral_broker.serving.listen_address import ListenAddress
from ephemeral_broker.store import Store, store_status
from ephemeral_broker.store.select import check_store

ROUTES: Final = ("/metrics", "/healthz", "/readyz")
ALLOWED_METHODS: Final = "GET, HEAD"
_LISTEN_BACKLOG: Final = 128
# Scrapers and probes hold at most a connection or two each.
METRICS_MAX_CONNECTIONS: Final = 64

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def bind_metrics_socket(address: ListenAddress) -> socket.socket:
    """Bind and listen now, so a taken port stops start-up with a clear error (OSError)."""
    infos = socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # Lets a restarted broker take its port back while the old connections sit in
        # TIME_WAIT; it never lets two live listeners share the port on Linux.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(_LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def describe_bind_error(address: ListenAddress, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        reason = "the port is already in use"
    elif exc.errno == errno.EADDRNOTAVAIL:
        reason = "no interface of this machine has that address"
    elif exc.errno == errno.EACCES:
        reason = "permission denied (ports below 1024 need privileges)"
    else:
        reason = exc.strerror or str(exc)
    return f"cannot listen for metrics on {address} (--metrics-listen): {reason}"


def bound_address(sock: socket.socket) -> ListenAddress:
    host, port = sock.getsockname()[:2]
    return ListenAddress(host, port)


class MetricsEndpoints:
    """The listener's ASGI app: /metrics, /healthz and /readyz, from the broker's state."""

    def __init__(self, store: Store, runtime: Runtime, metrics: BrokerMetrics) -> None:
        self.store = store
        self.runtime = runtime
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off for this server; websockets never
            return
        path: str = scope["path"]
        method: str = scope["method"]
        rid = os.urandom(8).hex()
        if path not in ROUTES:
            detail = f"no such endpoint on the metrics listener: {path[:200]!r} (it serves "
            detail += ", ".join(ROUTES) + ")"
            await _problem(send, "route_not_found", detail, rid, method)
        elif method not in ("GET", "HEAD"):
            detail = f"{method[:20]} is not allowed on {path}; use GET"
            await _problem(
                send, "method_not_allowed", detail, rid, method, {"allow": ALLOWED_METHODS}
            )
        elif path == "/metrics":
            snapshot = ScrapeSnapshot(
                store=await self.store.stats(),
                in_flight=self.runtime.in_flight,
                draining=self.runtime.draining,
                status=store_status(self.store),
            )
            body = self.metrics.render(snapshot)
            await _respond(send, 200, CONTENT_TYPE_LATEST, body, rid, method)
        elif path == "/readyz" and self.runtime.draining:
            headers = {"retry-after": RETRY_AFTER_SECONDS}
            await _problem(send, "draining", "the broker is shutting down", rid, method, headers)
        elif path == "/readyz" and not (store := await check_store(self.store)).available:
            headers = {"retry-after": RETRY_AFTER_SECONDS}
            detail = f"the shared store is unavailable: {store.reason}"
            await _problem(send, "store_unavailable", detail, rid, method, headers)
        else:
            status = "ok" if path == "/healthz" else "ready"
            body = orjson.dumps({"status": status})
            await _respond(send, 200, "application/json", body, rid, method)


async def _problem(
    send: Send,
    code: str,
    detail: str,
    rid: str,
    method: str,
    headers: dict[str, str] | None = None,
) -> None:
    body = problem_body(code, detail, rid)
    await _respond(send, ERRORS[code][0], PROBLEM_CONTENT_TYPE, body, rid, method, headers)


async def _respond(
    send: Send,
    status: int,
    content_type: str,
    body: bytes,
    rid: str,
    method: str,
    headers: dict[str, str] | None = None,
) -> None:
    raw = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", rid.encode()),
        (b"cache-control", b"no-store"),
    ]
    raw += [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


class MetricsListener:
    """A second uvicorn server in the broker's loop, on an already-bound TCP socket."""

    def __init__(
        self, app: MetricsEndpoints, sock: socket.socket, http_protocol: type[asyncio.Protocol]
    ) -> None:
        self.sock = sock
        self.address = bound_address(sock)
        config = uvicorn.Config(
            app,
            # The broker's own protocol: problem+json for unreadable requests, bounded heads.
            http=http_protocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            # Idle ones are closed sooner than the socket's: a port is reachable by more than
            # the broker's own clients.
            timeout_keep_alive=5,
        )
        config.load()
        self._server = uvicorn.Server(config)
        # uvicorn.Server.serve() sets these up; startup() and shutdown() are used directly here.
        self._server.lifespan = config.lifespan_class(config)
        self._started = False

    async def start(self) -> None:
        await self._server.startup(sockets=[self.sock])
        self._started = True

    async def stop(self) -> None:
        """Close the listener and its connections at once: scrapes are short and repeatable."""
        if self._started:
            self._started = False
            self._server.force_exit = True
            await self._server.shutdown(sockets=[self.sock])
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
