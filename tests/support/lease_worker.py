"""A worker process for the end-to-end lease tests: standard library only, and not even
http.client (it imports email and ssl: ~100 ms a process), so 64 of them start quickly under
`python -S`. It speaks just enough HTTP/1.1 over one keep-alive connection for the broker.

    python -S lease_worker.py SOCKET POOL WORKER_ID [SIZE WAIT_MS HOLD_MS]

It connects, prints `ready`, waits for a line on stdin (so all workers start racing at once),
then acquires a lease. Without SIZE it prints the grant and exits. With SIZE it holds the lease
for HOLD_MS, releases it with its fencing token, and prints the grant with its holding interval
(monotonic nanoseconds, comparable between processes on one host): `start` after the grant
arrived, `end` before the release was sent.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any


class Connection:
    def __init__(self, path: str, timeout: float = 120.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buffer = b""

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        payload = b"" if body is None else json.dumps(body).encode()
        request = (
            f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        self.sock.sendall(request + payload)
        status_line, *header_lines = self._read_until(b"\r\n\r\n").decode().split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines)
        }
        data = self._read_exactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), json.loads(data) if data else None

    def close(self) -> None:
        self.sock.close()


def main(argv: list[str]) -> int:
    socket_path, pool, worker_id = argv[:3]
    conn = Connection(socket_path)
    print("ready", flush=True)
    sys.stdin.readline()
    request: dict[str, Any] = {"worker_id": worker_id, "ttl_ms": 60_000}
    hold_ms = 0
    if len(argv) > 3:
        request["size"], request["wait_ms"], hold_ms = int(argv[3]), int(argv[4]), int(argv[5])
    status, grant = conn.call("POST", f"/v1/leases/{pool}", request)
    result: dict[str, Any] = {"status": status, "grant": grant}
    if len(argv) > 3 and status == 201:
        result["start"] = time.monotonic_ns()
        time.sleep(hold_ms / 1000)
        result["end"] = time.monotonic_ns()
        released = conn.call("DELETE", f"/v1/leases/{pool}/{worker_id}?token={grant['token']}")
        result["released"] = released
    print(json.dumps(result), flush=True)
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
