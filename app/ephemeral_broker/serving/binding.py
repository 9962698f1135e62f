"""Binding the broker's Unix socket: the rules a socket path must follow, a stale socket
cleared only when nothing answers on it, the file's mode set by the umask at bind time (never
a window with wider permissions), and the clean-up that removes only our own socket."""

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ephemeral_broker.logs import logger
from ephemeral_broker.serving.unix_socket import new_private_socket_path, socket_answers
from ephemeral_broker.settings import (
    BrokerSettings,
    SocketPathTooLong,
    check_default_socket_fits,
    check_socket_path_length,
)

LISTEN_BACKLOG: Final = 1024
_PROBE_TIMEOUT_SECONDS: Final = 0.5


class StartupError(Exception):
    """Start-up cannot go on; the message is the one line the user sees (exit code 2)."""


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


def socket_is_live(path: Path) -> bool:
    """Whether something accepts connections on the socket at `path`."""
    try:
        return socket_answers(path, _PROBE_TIMEOUT_SECONDS)
    except OSError as exc:
        raise StartupError(f"cannot check the existing socket at {path}: {exc.strerror}") from exc


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
            path = new_private_socket_path()
            private_dir = path.parent
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
