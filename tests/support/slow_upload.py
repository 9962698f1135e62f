"""A request whose body is still arriving when the broker is asked to stop."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

from tests.support.responses import split_response


class SlowUpload:
    """A raw connection that sends a request's head and part of its body, then keeps the body
    moving one byte every `TRICKLE_SECONDS` (JSON whitespace) until `finish()`: a request the
    broker has received and is still reading when shutdown begins. (A body that stops moving
    altogether is ended by the body timeout instead: see tests/server/serving/test_protocol.py.)"""

    TRICKLE_SECONDS = 0.1
    PAD_BYTES = 3000  # five minutes of trickle

    def __init__(self, path: Path, key: str = "slow") -> None:
        document = json.dumps({"value": "uploaded slowly", "ttl_ms": 60000}).encode()
        # Leading whitespace is part of the JSON text: the trickle sends only that.
        self.body = b" " * self.PAD_BYTES + document
        self.sent = 10
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        head = (
            f"PUT /v1/keys/{key} HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Length: {len(self.body)}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + self.body[: self.sent])
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.trickler = threading.Thread(target=self._trickle, daemon=True)
        self.trickler.start()

    def _trickle(self) -> None:
        while not self.stopped.wait(self.TRICKLE_SECONDS):
            with self.lock:
                if self.stopped.is_set() or self.sent >= self.PAD_BYTES:
                    return
                try:
                    self.sock.sendall(b" ")
                except OSError:  # the broker answered and closed
                    return
                self.sent += 1

    def finish(self) -> None:
        self.stopped.set()
        with self.lock:
            self.sock.sendall(self.body[self.sent :])

    def response(self) -> tuple[int, dict[str, str], bytes]:
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        self.stopped.set()
        return split_response(data)

    def close(self) -> None:
        self.stopped.set()
        self.trickler.join(timeout=5)
        self.sock.close()
