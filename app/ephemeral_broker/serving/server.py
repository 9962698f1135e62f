"""Serving the app on a Unix domain socket: uvicorn in one process, bound to the socket
binding.py prepares, stopped by signals.py's dispatcher, drained and cleaned up.

One uvicorn worker, on purpose: all state is in this process's memory, so a second worker
would be a second, disjoint broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from typing import Any, Final, TypeVar

import uvicorn

from ephemeral_broker.api.runtime import Runtime
from ephemeral_broker.errors import BrokerError
from ephemeral_broker.logs import logger
from ephemeral_broker.rules import redact_url
from ephemeral_broker.serving.binding import (
    LISTEN_BACKLOG,
    BoundSocket,
    StartupError,
    bind_socket,
)
from ephemeral_broker.serving.connection_limits import connection_limits
from ephemeral_broker.serving.metrics_listener import (
    METRICS_MAX_CONNECTIONS,
    MetricsEndpoints,
    MetricsListener,
    bind_metrics_socket,
    describe_bind_error,
)
from ephemeral_broker.serving.protocol import (
    BrokerHttpProtocol,
    ConnectionLimits,
    protocol_class,
)
from ephemeral_broker.serving.signals import SIGNALS
from ephemeral_broker.settings import (
    BrokerSettings,
)
from ephemeral_broker.store import Store, StoreStats, close_store, open_store
from ephemeral_broker.store.base import NamespaceConflict

_TICK_SECONDS: Final = 0.1
# uvicorn's Server.shutdown sleeps this long after asking connections to close.
_UVICORN_CLOSE_PAUSE: Final = 0.1

T = TypeVar("T")

# ---- uvicorn -------------------------------------------------------------------------------


class BrokerServer(uvicorn.Server):
    """uvicorn's server with our signal handling and drain.

    First SIGINT/SIGTERM (or an idle timeout, or `run`'s command ending): the drain flag goes up
    (readyz 503, new requests 503 draining, long waits end), uvicorn stops listening and answers
    what it already received, until drain_timeout after the shutdown began. Second signal: stop
    waiting at once (exit code 1).
    """

    def __init__(
        self,
        config: uvicorn.Config,
        runtime: Runtime,
        drain_timeout_ms: int,
        on_ready: Callable[[], None],
        metrics_listener: MetricsListener | None = None,
    ):
        super().__init__(config)
        self.runtime = runtime
        self.metrics_listener = metrics_listener
        self.drain_timeout = drain_timeout_ms / 1000
        self._on_ready = on_ready
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit_requested: asyncio.Event | None = None
        self._drain_deadline: float | None = None
        self._signals_seen = 0
        self.forced = False
        self.stop_reason: str | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn's own version installs handlers per serve() and re-raises the signal after
        # shutdown (exit 143 instead of 0); SIGNALS replaces it.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._exit_requested = asyncio.Event()
        await super().startup(sockets)
        if self.started:
            if self.metrics_listener is not None:
                await self.metrics_listener.start()
            self._on_ready()

    async def main_loop(self) -> None:
        # uvicorn polls should_exit every 0.1 s; waking on the event instead takes that much off
        # every shutdown (`run` pays it once per command). on_tick still runs at least every
        # 0.1 s: it refreshes the Date header.
        assert self._exit_requested is not None
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864_000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_requested.wait(), _TICK_SECONDS)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # drain_timeout counts from the moment the shutdown began, not from the moment uvicorn
        # gets round to waiting; uvicorn pauses _UVICORN_CLOSE_PAUSE before it waits.
        if self._drain_deadline is not None and self._loop is not None:
            remaining = self._drain_deadline - self._loop.time() - _UVICORN_CLOSE_PAUSE
            # uvicorn annotates int but hands it to asyncio.wait_for: fractions matter here.
            self.config.timeout_graceful_shutdown = max(0.0, remaining)  # type: ignore[assignment]
        await super().shutdown(sockets)
        # Last: probes on the metrics port see /readyz answer 503 for the whole drain.
        if self.metrics_listener is not None:
            await self.metrics_listener.stop()

    def request_shutdown(self, reason: str) -> None:
        """Begin a graceful shutdown (from the event loop's thread)."""
        if self.runtime.draining:
            return
        self.stop_reason = reason
        if self._loop is not None:
            self._drain_deadline = self._loop.time() + self.drain_timeout
        logger.info("shutting down", extra={"fields": {"reason": reason}})
        self.runtime.begin_drain()
        http: Any = self.config.http
        if isinstance(http, type) and issubclass(http, BrokerHttpProtocol):
            http.draining[0] = True  # bodies in progress get DRAIN_BODY_GRACE between reads
        self.should_exit = True
        if self._exit_requested is not None:
            self._exit_requested.set()

    def force_shutdown(self) -> None:
        """Stop waiting for requests in flight and exit at once (safe in a signal handler)."""
        if self.stop_reason is None:
            self.stop_reason = "forced"
        self.forced = True
        self.force_exit = True
        self.should_exit = True
        if self._loop is not None and self._exit_requested is not None:
            self._loop.call_soon_threadsafe(self._exit_requested.set)

    def on_signal(self, signum: int) -> None:
        """Runs in the signal handler: count, then hand over to the loop; no state touched."""
        self._signals_seen += 1
        # Counted here, not in the loop: two signals in quick succession are two signals even
        # if the loop has not yet run the first one's callback. A signal during a drain that
        # began otherwise (idle timeout) is a "second" one too: it asks for more than a drain.
        if self._signals_seen > 1 or self.runtime.draining:
            self.force_shutdown()
            return
        name = signal.Signals(signum).name
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.request_shutdown, name)
        else:
            self.stop_reason = name
            self.should_exit = True  # not started yet: uvicorn checks this before serving


def uvicorn_config(
    app: Any,
    *,
    drain_timeout_ms: int,
    lifespan: str = "on",
    limits: ConnectionLimits | None = None,
) -> uvicorn.Config:
    """The broker's uvicorn configuration (the benchmark's raw-ASGI baseline uses it too)."""
    limits = limits or ConnectionLimits()
    return uvicorn.Config(
        app,
        http=protocol_class(limits),
        # Said, not guessed: uvicorn's guess reads a bound method (api/app.py's asgi_entry)
        # as an ASGI 2 app.
        interface="asgi3",
        lifespan=lifespan,  # type: ignore[arg-type]
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        # uvicorn's timer after each response; http_protocol arms one from the connection's
        # start too. Fractions work: uvicorn hands it to call_later.
        timeout_keep_alive=limits.keep_alive,  # type: ignore[arg-type]
        # Narrowed to what is left of the drain deadline when shutdown begins (see shutdown()).
        # uvicorn annotates int but hands it to asyncio.wait_for: milliseconds matter here.
        timeout_graceful_shutdown=drain_timeout_ms / 1000,  # type: ignore[arg-type]
        backlog=LISTEN_BACKLOG,
    )


async def serve(
    settings: BrokerSettings,
    app: Any,
    *,
    on_ready: Callable[[Path], None] | None = None,
    bound: BoundSocket | None = None,
    stop_on_signal: bool = True,
) -> int:
    """Serve `app` until a signal, an idle timeout or `runtime.request_shutdown`; returns the
    process exit code (0 after a drain, 1 when a second signal cut the drain short).

    The socket (and its private directory) is removed however this ends. With
    `stop_on_signal=False` the caller handles SIGINT/SIGTERM itself (`run` forwards them to its
    command) and stops the broker through `runtime.request_shutdown`.
    """
    SIGNALS.install()
    runtime: Runtime = app.state.runtime
    # Imported here: the floor benchmark (bench/baseline.py) imports this module for
    # uvicorn_config, and its process must stay a bare ASGI server's, without FastAPI loaded.
    from ephemeral_broker.api.app import asgi_entry

    config = uvicorn_config(
        asgi_entry(app), drain_timeout_ms=settings.drain_timeout, limits=connection_limits(settings)
    )
    listening: list[BoundSocket] = []
    # Joined before anything listens: a broker that disagrees with its namespace, or cannot
    # reach Redis, stops start-up (exit 2) before a socket exists.
    await _open_shared_store(settings, app.state.store)
    # Bound before the Unix socket: a taken port stops start-up before anything else exists.
    try:
        metrics_listener = _metrics_listener(settings, app)
    except BaseException:
        await close_store(app.state.store)
        raise

    def ready() -> None:
        path = listening[0].path
        fields: dict[str, Any] = {
            "socket": str(path),
            "pid": os.getpid(),
            "version": runtime.version,
            "auth": "on" if settings.auth_enabled else "off",
        }
        if settings.store != "memory":
            fields["store"] = redact_url(settings.store)
            fields["namespace"] = settings.namespace
        if metrics_listener is not None:
            fields["metrics"] = str(metrics_listener.address)
        logger.info("broker ready", extra={"fields": fields})
        if on_ready is not None:
            on_ready(path)

    server = BrokerServer(
        config, runtime, settings.drain_timeout, on_ready=ready, metrics_listener=metrics_listener
    )
    runtime.request_shutdown = server.request_shutdown
    runtime.force_shutdown = server.force_shutdown
    # Subscribed before the socket exists: no signal can arrive between the bind and the
    # subscription and take its default action, leaving the socket file behind.
    unsubscribe = SIGNALS.subscribe(server.on_signal) if stop_on_signal else None
    try:
        listening.append(bound or bind_socket(settings))
        try:
            await server.serve(sockets=[listening[0].sock])
        finally:
            listening[0].cleanup()
    finally:
        if metrics_listener is not None:
            metrics_listener.close()
        if unsubscribe is not None:
            unsubscribe()
    code = 1 if server.forced else 0
    try:
        stats = await app.state.store.stats()
    except BrokerError as exc:  # the shared store is down; the broker still stops cleanly
        logger.warning("store counts unavailable at stop: %s", exc.detail)
        stats = StoreStats(0, 0, 0, 0, 0, 0, 0, 0)
    finally:
        await close_store(app.state.store)
    logger.info(
        "broker stopped",
        extra={
            "fields": {
                "reason": server.stop_reason,
                "forced": server.forced,
                "items": stats.items,
                "requests_total": runtime.requests_total,
                "uptime_ms": runtime.uptime_ms(),
            }
        },
    )
    return code


async def _open_shared_store(settings: BrokerSettings, store: Store) -> None:
    try:
        await open_store(store)
    except NamespaceConflict as exc:
        await close_store(store)
        raise StartupError(f"{exc} (--{exc.setting.replace('_', '-')})") from None
    except BrokerError as exc:
        await close_store(store)
        raise StartupError(f"cannot use store {redact_url(settings.store)}: {exc.detail}") from None


def _metrics_listener(settings: BrokerSettings, app: Any) -> MetricsListener | None:
    address = settings.metrics_address
    if address is None:
        return None
    try:
        sock = bind_metrics_socket(address)
    except OSError as exc:
        raise StartupError(describe_bind_error(address, exc)) from exc
    endpoints = MetricsEndpoints(app.state.store, app.state.runtime, app.state.metrics)
    limits = ConnectionLimits(keep_alive=5.0, max_connections=METRICS_MAX_CONNECTIONS)
    return MetricsListener(endpoints, sock, protocol_class(limits))


def run_in_new_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop when it is installed (it is a dependency on POSIX)."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)
