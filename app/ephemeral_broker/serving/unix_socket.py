"""What the broker and the pytest plugin's launcher share about Unix domain sockets: the limit
on a socket path, the default socket's place, and the probe that tells a live socket from a
dead one.

Standard library only: the client side (`ephemeral_broker_client.pytest_plugin.broker`) uses it
without loading the server stack or pydantic.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Final

# sockaddr_un.sun_path is 108 bytes on Linux, one of which is the terminating NUL.
MAX_SOCKET_PATH_BYTES: Final = 107
# The default socket: "$TMPDIR/ephemeral-broker-XXXXXXXX/broker.sock", a new directory (0700)
# for each broker.
DEFAULT_SOCKET_DIR_PREFIX: Final = "ephemeral-broker-"
DEFAULT_SOCKET_NAME: Final = "broker.sock"


def new_private_socket_path() -> Path:
    """The default socket's path in a new private directory (mode 0700) under $TMPDIR."""
    return Path(tempfile.mkdtemp(prefix=DEFAULT_SOCKET_DIR_PREFIX)) / DEFAULT_SOCKET_NAME


def socket_answers(path: str | os.PathLike[str], timeout: float) -> bool:
    """Whether something accepts connections on the socket at `path`.

    Refused or missing: False. A timeout or a full backlog: True (a live but very busy
    listener). Any other failure to connect raises its OSError for the caller to judge.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except (TimeoutError, BlockingIOError):
        return True
    finally:
        probe.close()
    return True
