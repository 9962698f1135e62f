"""The broker's server CPU per request against its floor, measured side by side in one run.

The floor is a raw ASGI app (bench/baseline.py) on the broker's own uvicorn configuration: the
least any app on this server can cost per request (the HTTP parser, the event loop, the socket).
The broker and the floor each get the very same request bytes over one keep-alive connection from
a plain-socket HTTP/1.1 client, so neither the client library nor the key names differ between
the two. Rounds alternate between the two servers, so that a burst of load from elsewhere on a
shared machine falls on both; each operation's CPU figures are the medians of its rounds, and
its ratio the median of the rounds' ratios. Beside them, the quietest round of each (the least
CPU per request, the one least disturbed by other work: load only ever adds CPU time) and the
ratio of those two, a figure that moves less when the machine is busy.

Measured three times in the same run, on a machine where this process may use two CPUs or more:

- **Pinned**: the broker, the floor and this client all on one CPU. A request is the client's
  write, a switch to the server, its work and a switch back: the CPU figure is the server's own
  work on caches the client has just used. The bars are read against these figures.
- **Split**: both servers on one CPU, this client on another. Every request wakes the server's
  CPU from idle, as it does when a client and a broker run side by side on a two-CPU machine:
  the figures then include what the woken server spends refilling its caches (on this project's
  VM the floor costs two to three times its pinned figure), for the broker and the floor alike.
- **Free**: the scheduler places the processes. A request then lands one way or the other, on
  the client's CPU or the idle one, and the two servers need not land alike: the free figures
  move by a factor of two between runs on a busy host (the floor's own median from 30 to 70
  µs), and a free ratio says as much about where the scheduler put each server as about its
  request path. They are reported beside the others, not instead of them. The free
  measurement also runs a third server, the same floor in a process that has built the
  broker's app (and never serves it), `python -m bench.baseline --loaded`: its requests do
  exactly what the floor's do, to show what the size of the process adds.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.harness import ServerProcess, start_baseline, start_broker

# The operations measured, in the order they are printed.
OPERATIONS: Final = ("get", "put", "delete", "incr", "ping")
VALUE_100B: Final = b'"' + b"v" * 98 + b'"'  # 100 bytes of canonical JSON
TTL_MS: Final = 600_000


def _request(method: str, target: str, body: bytes | None = None) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n"
    if body is None:
        return (head + "\r\n").encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _put(key: str) -> bytes:
    return _request("PUT", f"/v1/keys/{key}", b'{"value":%b,"ttl_ms":%d}' % (VALUE_100B, TTL_MS))


# operation -> request for the i-th call (a DELETE removes a key that exists: del0, del1, ...).
REQUESTS: Final[dict[str, Callable[[int], bytes]]] = {
    "get": lambda i: _request("GET", "/v1/keys/hit"),
    "put": lambda i: _put("put"),
    "delete": lambda i: _request("DELETE", f"/v1/keys/del{i}"),
    "incr": lambda i: _request("POST", "/v1/keys/counter/incr", b'{"by":1,"ttl_ms":%d}' % TTL_MS),
    "ping": lambda i: _request("GET", "/v1/ping"),
}
# What each measured request must answer, so that a broken route cannot look cheap.
EXPECTED_STATUS: Final = {"get": 200, "put": 200, "delete": 200, "incr": 200, "ping": 200}


class RawConnection:
    """One keep-alive HTTP/1.1 connection over a Unix socket; bodies by Content-Length."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def call(self, request: bytes) -> int:
        """Send `request`, read its whole response, return the status code."""
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += self._recv()
        self.buffer = rest[length:]
        return status

    def _fill(self) -> None:
        self.buffer += self._recv()

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data


@dataclass
class _Side:
    server: ServerProcess
    conn: RawConnection
    next_delete: int = 0

    def run(self, operation: str, count: int) -> float:
        """Server CPU µs per request over `count` requests of `operation`."""
        make = REQUESTS[operation]
        first = self.next_delete if operation == "delete" else 0
        requests = [make(first + i) for i in range(count)]  # built before the clock starts
        if operation == "delete":
            self.next_delete += count
        expected = EXPECTED_STATUS[operation]
        cpu0 = self.server.cpu_seconds()
        for request in requests:
            status = self.conn.call(request)
            if status != expected:
                raise RuntimeError(f"{operation}: status {status}, expected {expected}")
        return (self.server.cpu_seconds() - cpu0) / count * 1e6


def _prepare(side: _Side, deletes: int) -> None:
    """The key a GET hits, the key PUTs replace and the keys the DELETEs remove, made before
    anything is measured."""
    for request in (_put("hit"), _put("put"), *(_put(f"del{i}") for i in range(deletes))):
        status = side.conn.call(request)
        if status not in (200, 201):
            raise RuntimeError(f"preparing the floor benchmark: status {status}")


def pinning_cpu() -> int | None:
    """The CPU the pinned measurement runs on (the last one this process may use), or None on
    a machine where this process may use only one: there the two measurements are the same."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[-1] if len(allowed) > 1 else None


def measure(count: int, rounds: int, operations: tuple[str, ...] = OPERATIONS) -> dict[str, Any]:
    """The three measurements (see the module docstring): the pinned one's figures at the top
    level with the CPU it ran on; the split one's under "split" (with "client_cpu", the CPU
    this client ran on); the free one's under "unpinned"."""
    cpu = pinning_cpu()
    results = _measure(count, rounds, operations, cpu)
    results["pinned_cpu"] = cpu
    if cpu is not None:
        client_cpu = min(os.sched_getaffinity(0) - {cpu})
        split = _measure(count, rounds, operations, cpu, client_cpu)
        results["split"] = {"client_cpu": client_cpu, **{op: split[op] for op in operations}}
        free = _measure(count, rounds, operations, None)
        results["unpinned"] = {op: free[op] for op in operations}
    return results


def _measure(
    count: int,
    rounds: int,
    operations: tuple[str, ...],
    cpu: int | None,
    client_cpu: int | None = None,
) -> dict[str, Any]:
    """Per operation: the broker's and the floor's server CPU µs per request and their ratio;
    with `cpu`, the two servers run on that CPU alone, and this process too unless
    `client_cpu` names another for it."""
    warmup = min(200, count)
    own_cpus = os.sched_getaffinity(0)
    with contextlib.ExitStack() as servers:
        broker_server = servers.enter_context(start_broker("--max-items", "0"))
        floor_server = servers.enter_context(start_baseline())
        sides = {
            "broker": _Side(broker_server, RawConnection(broker_server.socket)),
            "floor": _Side(floor_server, RawConnection(floor_server.socket)),
        }
        if cpu is None:
            loaded = servers.enter_context(start_baseline(loaded=True))
            sides["loaded_floor"] = _Side(loaded, RawConnection(loaded.socket))
        else:
            for pid in (broker_server.pid, floor_server.pid):
                os.sched_setaffinity(pid, {cpu})
            os.sched_setaffinity(0, {cpu if client_cpu is None else client_cpu})
        try:
            _prepare(sides["broker"], (rounds + 1) * count + warmup)
            samples: dict[str, dict[str, list[float]]] = {
                op: {name: [] for name in sides} for op in operations
            }
            for side in sides.values():
                for op in operations:
                    side.run(op, warmup)
            for _ in range(rounds):
                for op in operations:
                    for name, side in sides.items():
                        samples[op][name].append(side.run(op, count))
        finally:
            os.sched_setaffinity(0, own_cpus)
            for side in sides.values():
                side.conn.close()
    results: dict[str, Any] = {"requests_per_round": count, "rounds": rounds}
    for op in operations:
        broker, bare = samples[op]["broker"], samples[op]["floor"]
        # The ratio of each round's two halves, measured a moment apart, then the median of
        # those: load from elsewhere that drifts over the run weighs on both halves alike.
        ratios = [b / f for b, f in zip(broker, bare, strict=True)]
        results[op] = {
            "broker_cpu_us": round(statistics.median(broker), 1),
            "floor_cpu_us": round(statistics.median(bare), 1),
            "ratio": round(statistics.median(ratios), 2),
            "broker_min_cpu_us": round(min(broker), 1),
            "floor_min_cpu_us": round(min(bare), 1),
            "ratio_of_min": round(min(broker) / min(bare), 2),
        }
        if "loaded_floor" in samples[op]:
            loaded_cpu = samples[op]["loaded_floor"]
            results[op]["loaded_floor_cpu_us"] = round(statistics.median(loaded_cpu), 1)
            results[op]["ratio_to_loaded"] = round(
                statistics.median([b / f for b, f in zip(broker, loaded_cpu, strict=True)]), 2
            )
    return results


def render(results: dict[str, Any]) -> list[str]:
    cpu = results.get("pinned_cpu")
    where = f"all on CPU {cpu}" if cpu is not None else "one CPU"
    lines = [
        "Server CPU per request against the floor (a raw ASGI app on the same uvicorn; same "
        f"request bytes, one keep-alive connection; median of {results['rounds']} rounds of "
        f"{results['requests_per_round']}; {where})",
        *_table(results),
    ]
    if "split" in results:
        split = results["split"]
        lines += [
            "",
            f"The same, the servers on CPU {cpu} and the client on CPU {split['client_cpu']} "
            "(every request wakes the server's CPU)",
        ]
        lines += _table(split)
    if "unpinned" in results:
        lines += ["", "The same, the scheduler free to place them (see bench/floor.py)"]
        lines += _table(results["unpinned"])
    return lines


def _table(rows: dict[str, Any]) -> list[str]:
    loaded = any("loaded_floor_cpu_us" in rows[op] for op in OPERATIONS if op in rows)
    lines = [
        f"{'operation':<10} {'broker µs':>10} {'floor µs':>10} {'ratio':>7}   "
        f"{'quietest: broker':>16} {'floor':>7} {'ratio':>7}"
        + (f"   {'loaded floor µs':>15} {'ratio':>7}" if loaded else "")
    ]
    for op in OPERATIONS:
        if op in rows:
            row = rows[op]
            line = (
                f"{op:<10} {row['broker_cpu_us']:>10.1f} {row['floor_cpu_us']:>10.1f} "
                f"{row['ratio']:>6.2f}x   {row['broker_min_cpu_us']:>16.1f} "
                f"{row['floor_min_cpu_us']:>7.1f} {row['ratio_of_min']:>6.2f}x"
            )
            if loaded:
                line += f"   {row['loaded_floor_cpu_us']:>15.1f} {row['ratio_to_loaded']:>6.2f}x"
            lines.append(line)
    return lines
