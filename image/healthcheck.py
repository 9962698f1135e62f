"""The sidecar image's HEALTHCHECK: exit 0 when the broker in this container is ready.

It asks the broker's `/readyz` over its Unix socket, which answers 503 from the moment a drain
begins, so the container turns unhealthy while the broker shuts down (and once it stopped
listening, the refused connection does the same). On failure it prints ONE line saying why and
exits 1: Docker keeps each check's output in `docker inspect`, and a person reads it there.

Only the standard library, run with `python -I`: it starts every few seconds, so it must start
fast, and nothing on the path or in the environment may change what it imports.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys

DEFAULT_SOCKET = "/run/ephemeral-broker/broker.sock"
TIMEOUT_SECONDS = 2.0  # below the HEALTHCHECK's --timeout, so this script reports it itself


class _UnixConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (it only knows TCP)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def socket_path() -> str:
    """The socket this container's broker serves on: BROKER_SOCKET is what `serve` reads;
    EPHEMERAL_PIPE (what clients read) is the fallback for an image that only sets that."""
    return os.environ.get("BROKER_SOCKET") or os.environ.get("EPHEMERAL_PIPE") or DEFAULT_SOCKET


def _reason(body: bytes) -> str:
    """The problem code of a refusal (`draining`), else the start of the body."""
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        code = None
    if isinstance(code, str):
        return code
    return body[:80].decode("utf-8", "replace").replace("\n", " ")


def check(path: str, timeout: float = TIMEOUT_SECONDS) -> str | None:
    """None when the broker on `path` is ready, else one line saying why not."""
    connection = _UnixConnection(path, timeout)
    try:
        connection.request("GET", "/readyz")
        response = connection.getresponse()
        status, body = response.status, response.read()
    except TimeoutError:
        return f"unhealthy: the broker on {path} did not answer /readyz within {timeout:g} s"
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        return f"unhealthy: no broker answers on {path}: {reason}"
    except Exception as exc:  # one line whatever went wrong: never a traceback
        return f"unhealthy: asking {path} for /readyz failed: {type(exc).__name__}: {exc}"
    finally:
        connection.close()
    if status == 200:
        return None
    return f"unhealthy: the broker on {path} is not ready: /readyz {status} {_reason(body)}"


def main() -> int:
    problem = check(socket_path())
    if problem is None:
        return 0
    print(problem.replace("\n", " "), flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
