"""Operations through HTTP with the project's own clients: one sequential client (sync and
async), and N client processes.

Each operation is a tuple of steps `(i) -> call`; the sync executor calls them, the async one
awaits them, so both clients run exactly the same operations (lease_release is two steps: the
grant, then the release).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

from bench.harness import Latencies, ServerProcess
from ephemeral_broker_client import AsyncBrokerClient, BrokerClient

VALUE_100B = "v" * 98  # 100 bytes of canonical JSON with its quotes
TTL_MS = 600_000
OPERATIONS = ("set", "get_hit", "get_miss", "delete", "incr", "lease_release", "ping")

Step = Callable[[int], Any]


def steps(client: BrokerClient | AsyncBrokerClient, operation: str) -> tuple[Step, ...]:
    table: dict[str, tuple[Step, ...]] = {
        "set": (lambda i: client.set(f"set{i}", VALUE_100B, TTL_MS),),
        "get_hit": (lambda i: client.get("hit"),),
        "get_miss": (lambda i: client.get("missing", None),),
        "delete": (lambda i: client.delete(f"del{i}"),),
        "incr": (lambda i: client.incr("counter", ttl_ms=TTL_MS),),
        "lease_release": (
            lambda i: client.lease("bench", f"w{i}", ttl_ms=60_000),
            lambda i: client.release("bench", f"w{i}"),
        ),
        "ping": (lambda i: client.ping(),),
    }
    return table[operation]


def sync_client(server: ServerProcess) -> BrokerClient:
    return BrokerClient(str(server.socket), timeout=60)


def prepare(server: ServerProcess, operation: str, keys: range) -> None:
    """State an operation needs before it is measured (the key to hit, keys to delete)."""
    with sync_client(server) as client:
        if operation == "get_hit":
            client.set("hit", VALUE_100B, TTL_MS)
        elif operation == "delete":
            for i in keys:
                client.set(f"del{i}", VALUE_100B, TTL_MS)


def _result(
    count: int, wall: float, broker_cpu: float, client_cpu: float, latencies: Latencies
) -> dict[str, float]:
    return {
        "broker_cpu_us": round(broker_cpu / count * 1e6, 2),
        "client_cpu_us": round(client_cpu / count * 1e6, 2),
        "ops_per_s": round(count / wall, 1),
        **latencies.summary_us(),
    }


WARMUP = 200


def warmup_calls(count: int) -> int:
    """Calls made before measuring `count`: WARMUP, fewer for a short (--quick) run."""
    return min(WARMUP, count // 2)


def measure_sync(server: ServerProcess, operation: str, count: int) -> dict[str, float]:
    warmup = warmup_calls(count)
    prepare(server, operation, range(-warmup, count))
    with sync_client(server) as client:
        op = steps(client, operation)
        for i in range(-warmup, 0):  # warm-up: connection, caches, allocator
            for step in op:
                step(i)
        latencies = Latencies()
        cpu0, client0, start = server.cpu_seconds(), time.process_time(), time.perf_counter()
        for i in range(count):
            t = time.perf_counter()
            for step in op:
                step(i)
            latencies.samples.append(time.perf_counter() - t)
        wall = time.perf_counter() - start
        broker_cpu, client_cpu = server.cpu_seconds() - cpu0, time.process_time() - client0
    return _result(count, wall, broker_cpu, client_cpu, latencies)


def measure_async(server: ServerProcess, operation: str, count: int) -> dict[str, float]:
    # Keys distinct from the sync run's, so that both can run against one broker.
    offset = 10_000_000
    warmup = warmup_calls(count)
    prepare(server, operation, range(offset - warmup, offset + count))

    async def run() -> dict[str, float]:
        async with AsyncBrokerClient(str(server.socket), timeout=60) as client:
            op = steps(client, operation)
            for i in range(offset - warmup, offset):
                for step in op:
                    await step(i)
            latencies = Latencies()
            cpu0, client0, start = server.cpu_seconds(), time.process_time(), time.perf_counter()
            for i in range(offset, offset + count):
                t = time.perf_counter()
                for step in op:
                    await step(i)
                latencies.samples.append(time.perf_counter() - t)
            wall = time.perf_counter() - start
            broker_cpu, client_cpu = server.cpu_seconds() - cpu0, time.process_time() - client0
        return _result(count, wall, broker_cpu, client_cpu, latencies)

    return asyncio.run(run())


def measure_raw_get(server: ServerProcess, path: str, count: int) -> dict[str, float]:
    """GET `path` with plain httpx: the same client on both sides of the baseline ratio."""
    with server.client() as client:
        for _ in range(warmup_calls(count)):
            client.get(path).raise_for_status()
        latencies = Latencies()
        cpu0, client0, start = server.cpu_seconds(), time.process_time(), time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            client.get(path)
            latencies.samples.append(time.perf_counter() - t)
        wall = time.perf_counter() - start
        broker_cpu, client_cpu = server.cpu_seconds() - cpu0, time.process_time() - client0
    return _result(count, wall, broker_cpu, client_cpu, latencies)


def _worker(socket_path: str, operation: str, offset: int, count: int, barrier: Any) -> None:
    with BrokerClient(socket_path, timeout=60) as client:
        op = steps(client, operation)
        for step in op:  # connect (and warm up) before the clock starts
            step(-1 - offset)
        barrier.wait()
        for i in range(offset, offset + count):
            for step in op:
                step(i)


def measure_concurrent(
    server: ServerProcess, operation: str, processes: int, total: int
) -> dict[str, float]:
    """Total throughput of `processes` client processes sharing `total` operations."""
    per_process = max(1, total // processes)
    # Distinct keys per (operation, processes) run, so that runs on one broker do not collide.
    base = 20_000_000 + processes * 1_000_000
    prepare(server, operation, range(base, base + per_process * processes))
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes + 1)
    workers = [
        context.Process(
            target=_worker,
            args=(str(server.socket), operation, base + n * per_process, per_process, barrier),
        )
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    barrier.wait()
    cpu0, start = server.cpu_seconds(), time.perf_counter()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - start
    if any(worker.exitcode != 0 for worker in workers):
        raise RuntimeError(f"a client process failed during {operation}")
    done = per_process * processes
    return {
        "ops_per_s": round(done / wall, 1),
        "broker_cpu_us": round((server.cpu_seconds() - cpu0) / done * 1e6, 2),
    }


def fill(server: ServerProcess, count: int, value: str, *, prefix: str = "fill") -> None:
    """Create `count` keys quickly with 4 client processes."""
    context = multiprocessing.get_context("fork")
    processes = 4
    per = (count + processes - 1) // processes
    workers = [
        context.Process(
            target=_fill_worker,
            args=(str(server.socket), prefix, n * per, min(count, (n + 1) * per), value),
        )
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise RuntimeError("a fill worker failed")


def _fill_worker(socket_path: str, prefix: str, start: int, stop: int, value: str) -> None:
    with BrokerClient(socket_path, timeout=60) as client:
        for i in range(start, stop):
            client.set(f"{prefix}{i}", value, 3_600_000)


def measure_growth(
    server: ServerProcess, live_keys: int, count: int
) -> dict[str, dict[str, float]]:
    """set (new keys) and get (existing keys) with `live_keys` keys in the store."""
    results: dict[str, dict[str, float]] = {}
    with sync_client(server) as client:
        for name in ("set", "get"):
            latencies = Latencies()
            cpu0 = server.cpu_seconds()
            for i in range(count):
                t = time.perf_counter()
                if name == "set":
                    client.set(f"grow{live_keys}-{i}", VALUE_100B, TTL_MS)
                else:
                    client.get(f"fill{(i * 7919) % live_keys}")
                latencies.samples.append(time.perf_counter() - t)
            results[name] = {
                "broker_cpu_us": round((server.cpu_seconds() - cpu0) / count * 1e6, 2),
                **latencies.summary_us(),
            }
            if name == "set":
                for i in range(count):  # back to `live_keys` keys before measuring get
                    client.delete(f"grow{live_keys}-{i}")
    return results
