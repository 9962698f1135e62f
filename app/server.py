"""Serving the app on a Unix domain socket: the socket rules of SPEC section 5, uvicorn in one
process, signals, drain and cleanup (SPEC section 6).

One uvicorn worker, on purpose: all state is in this process's memory, so a second worker
would be a second, disjoint broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final, TypeVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.errors import PROBLEM_CONTENT_TYPE, problem_body
from app.logs import logger
from app.runtime import Runtime
from app.settings import (
    DEFAULT_SOCKET_DIR_PREFIX,
    DEFAULT_SOCKET_NAME,
    BrokerSettings,
    SocketPathTooLong,
    check_default_socket_fits,
    check_socket_path_length,
)

HANDLED_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
LISTEN_BACKLOG: Final = 1024
# Idle keep-alive connections are closed after this long; clients hold one pooled connection.
KEEP_ALIVE_SECONDS: Final = 30
_PROBE_TIMEOUT_SECONDS: Final = 0.5

T = TypeVar("T")


class StartupError(Exception):
    """Start-up cannot go on; the message is the one line the user sees (exit code 2)."""


# ---- the socket ----------------------------------------------------------------------------


@dataclass
class BoundSocket:
    path: Path
    sock: socket.socket
    private_dir: Path | None
    inode: int

    def cleanup(self) -> None:
        """Remove our socket file (only if it is still ours) and our private directory."""
        with contextlib.suppress(OSError):
            self.sock.close()
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            # Another broker may have replaced a socket we no longer serve: leave theirs alone.
            if stat.S_ISSOCK(info.st_mode) and info.st_ino == self.inode:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
        if self.private_dir is not None:
            with contextlib.suppress(OSError):
                self.private_dir.rmdir()


def socket_is_live(path: Path, timeout: float = _PROBE_TIMEOUT_SECONDS) -> bool:
    """Whether something accepts connections on the socket at `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # the backlog is full: a live but very busy listener
    except OSError as exc:
        raise StartupError(f"cannot check the existing socket at {path}: {exc.strerror}") from exc
    finally:
        probe.close()
    return True


def _clear_path(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise StartupError(
            f"{path} exists and is not a socket; refusing to remove it (choose another --socket)"
        )
    if socket_is_live(path):
        raise StartupError(f"a broker is already running on {path}")
    logger.info("removing stale socket", extra={"fields": {"socket": str(path)}})
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def bind_socket(settings: BrokerSettings) -> BoundSocket:
    """Create the listening socket: private dir by default, mode set by umask at bind time."""
    private_dir: Path | None = None
    try:
        if settings.socket is None:
            check_default_socket_fits()
            private_dir = Path(tempfile.mkdtemp(prefix=DEFAULT_SOCKET_DIR_PREFIX))  # mode 0700
            path = private_dir / DEFAULT_SOCKET_NAME
        else:
            path = settings.socket.absolute()
            check_socket_path_length(path)
            if not path.parent.is_dir():
                raise StartupError(f"the socket's directory {path.parent} does not exist")
            _clear_path(path)
    except SocketPathTooLong as exc:
        raise StartupError(str(exc)) from exc
    except OSError as exc:
        raise StartupError(f"cannot prepare the socket: {exc}") from exc

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The socket file gets its mode from the umask at bind time: there is no instant at which
    # it exists with wider permissions (a chmod afterwards would leave such a window).
    # The umask is process-wide; start-up is single-threaded at this point.
    previous_umask = os.umask(0o777 & ~settings.socket_mode)
    try:
        sock.bind(os.fspath(path))
    except OSError as exc:
        sock.close()
        if private_dir is not None:
            with contextlib.suppress(OSError):
                private_dir.rmdir()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"a broker is already running on {path}") from exc
        raise StartupError(f"cannot bind {path}: {exc.strerror}") from exc
    finally:
        os.umask(previous_umask)
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return BoundSocket(path, sock, private_dir, os.lstat(path).st_ino)


# ---- signals -------------------------------------------------------------------------------


class SignalDispatcher:
    """The process's one handler for SIGINT and SIGTERM (seed defects #3, #4, #16).

    It is installed at most once per process, however many brokers start and stop in it, and
    forwards each signal to whoever is subscribed now. With nobody subscribed, it behaves as
    the handler it replaced (Ctrl-C still raises KeyboardInterrupt in a test process).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Callable[[int], None]] = []
        self._previous: dict[int, Any] = {}
        self.installations = 0

    @property
    def installed(self) -> bool:
        return self.installations > 0

    def install(self) -> None:
        with self._lock:
            if self.installations or threading.current_thread() is not threading.main_thread():
                return
            for sig in HANDLED_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._dispatch)
            self.installations += 1

    def subscribe(self, listener: Callable[[int], None]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def _dispatch(self, signum: int, frame: FrameType | None) -> None:
        listeners = list(self._listeners)
        if listeners:
            for listener in listeners:
                listener(signum)
            return
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise SystemExit(128 + signum)


SIGNALS = SignalDispatcher()


# ---- uvicorn -------------------------------------------------------------------------------


class BrokerHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering unparseable requests with problem+json too.

    uvicorn refuses a request its parser cannot read before any app code runs, with a plain
    text 400; every error of ours is problem+json with a stable code, this one included.
    """

    def send_400_response(self, msg: str) -> None:
        rid = os.urandom(8).hex()
        body = problem_body("bad_request", f"the HTTP request is malformed: {msg}", rid)
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(
            b"content-type: %s\r\ncontent-length: %d\r\nx-request-id: %s\r\n"
            b"connection: close\r\n\r\n" % (PROBLEM_CONTENT_TYPE.encode(), len(body), rid.encode())
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()


class BrokerServer(uvicorn.Server):
    """uvicorn's server with our signal handling and drain.

    First SIGINT/SIGTERM: the drain flag goes up (readyz 503, new requests 503 draining, long
    waits end), uvicorn stops listening and answers what it already received, for at most
    drain_timeout. Second signal: stop waiting at once.
    """

    def __init__(self, config: uvicorn.Config, runtime: Runtime, on_ready: Callable[[], None]):
        super().__init__(config)
        self.runtime = runtime
        self._on_ready = on_ready
        self._loop: asyncio.AbstractEventLoop | None = None
        self.forced = False
        self.stop_reason: str | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn's own version installs handlers per serve() and re-raises the signal after
        # shutdown (exit 143 instead of 0); SIGNALS replaces it.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started:
            self._on_ready()

    def request_shutdown(self, reason: str) -> None:
        """Begin a graceful shutdown (from the event loop's thread)."""
        if self.runtime.draining:
            return
        self.stop_reason = reason
        logger.info("shutting down", extra={"fields": {"reason": reason}})
        self.runtime.begin_drain()
        self.should_exit = True

    def on_signal(self, signum: int) -> None:
        """Runs in the signal handler: hand over to the loop, never touch state here."""
        name = signal.Signals(signum).name
        if self.runtime.draining or self.should_exit:
            self.forced = True
            self.force_exit = True
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.request_shutdown, name)
        else:
            self.should_exit = True  # not started yet: uvicorn checks this before serving


async def serve(
    settings: BrokerSettings,
    app: Any,
    *,
    on_ready: Callable[[Path], None] | None = None,
    bound: BoundSocket | None = None,
) -> int:
    """Serve `app` until a signal or an idle timeout; returns the process exit code.

    The socket (and its private directory) is removed however this ends.
    """
    SIGNALS.install()
    bound = bound or bind_socket(settings)
    runtime: Runtime = app.state.runtime
    config = uvicorn.Config(
        app,
        http=BrokerHttpProtocol,
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        # uvicorn annotates int but hands it to asyncio.wait_for: milliseconds matter here.
        timeout_graceful_shutdown=settings.drain_timeout / 1000,  # type: ignore[arg-type]
        backlog=LISTEN_BACKLOG,
    )
    server = BrokerServer(
        config, runtime, on_ready=lambda: on_ready(bound.path) if on_ready else None
    )
    runtime.request_shutdown = server.request_shutdown
    unsubscribe = SIGNALS.subscribe(server.on_signal)
    try:
        await server.serve(sockets=[bound.sock])
    finally:
        unsubscribe()
        bound.cleanup()
    return 1 if server.forced else 0


def run_in_new_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop when it is installed (it is a dependency on POSIX)."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)
