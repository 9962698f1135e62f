"""A broken broker: a raw Unix-socket server in a thread that answers each request with
whatever bytes a test chooses, to show what the clients do with answers a broker never sends."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

# Given the raw request bytes, the raw answer to send; None closes the connection unanswered.
Responder = Callable[[bytes], bytes | None]


def http_answer(
    status: int, body: bytes, content_type: str = "application/json", *extra: str
) -> bytes:
    head = [
        f"HTTP/1.1 {status} X",
        f"content-type: {content_type}",
        f"content-length: {len(body)}",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def read_requests(conn: socket.socket) -> Iterator[bytes]:
    """Each request the client sends on `conn` (head and Content-Length body), as it
    completes; ends when the client closes the connection or it fails."""
    buffer = b""
    try:
        while True:
            while b"\r\n\r\n" not in buffer:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            head, _, rest = buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(rest) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                rest += chunk
            yield head + b"\r\n\r\n" + rest[:length]
            buffer = rest[length:]
    except OSError:
        return  # the connection failed or the test closed it


class RawServer:
    """A Unix-socket server in a thread that answers each request with `responder`."""

    def __init__(self, path: Path, responder: Responder) -> None:
        self.path = path
        self.responder = responder
        self.requests: list[bytes] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            for request in read_requests(conn):
                self.requests.append(request)
                answer = self.responder(request)
                if answer is None:
                    return
                conn.sendall(answer)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
