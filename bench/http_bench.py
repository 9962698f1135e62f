"""Operations through HTTP: one sequential client (sync and async), and N client processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson

from bench.harness import Latencies, ServerProcess

VALUE_100B = "v" * 98  # 100 bytes of canonical JSON with its quotes
SET_BODY = b'{"value":"' + VALUE_100B.encode() + b'","ttl_ms":600000}'
INCR_BODY = b'{"ttl_ms":600000}'
# lease_release is one operation of two requests: acquire a slot, then release it.
OPERATIONS = ("set", "get_hit", "get_miss", "delete", "incr", "lease_release", "ping")

SyncOp = Callable[[int], Any]
AsyncOp = Callable[[int], Awaitable[Any]]


def prepare(client: httpx.Client, operation: str, count: int) -> None:
    """State an operation needs before it is measured (keys to hit, keys to delete)."""
    if operation == "get_hit":
        client.put("/v1/keys/hit", content=SET_BODY).raise_for_status()
    elif operation == "delete":
        for i in range(count):
            client.put(f"/v1/keys/del{i}", content=SET_BODY).raise_for_status()


def _lease_body(i: int) -> bytes:
    return orjson.dumps({"worker_id": f"w{i}", "ttl_ms": 60_000})


def sync_op(client: httpx.Client, operation: str) -> SyncOp:
    def lease_release(i: int) -> None:
        client.post("/v1/leases/bench", content=_lease_body(i)).raise_for_status()
        client.delete(f"/v1/leases/bench/w{i}").raise_for_status()

    ops: dict[str, SyncOp] = {
        "set": lambda i: client.put(f"/v1/keys/set{i}", content=SET_BODY),
        "get_hit": lambda i: client.get("/v1/keys/hit"),
        "get_miss": lambda i: client.get("/v1/keys/missing"),
        "delete": lambda i: client.delete(f"/v1/keys/del{i}"),
        "incr": lambda i: client.post("/v1/keys/counter/incr", content=INCR_BODY),
        "lease_release": lease_release,
        "ping": lambda i: client.get("/v1/ping"),
    }
    return ops[operation]


def async_op(client: httpx.AsyncClient, operation: str) -> AsyncOp:
    async def lease_release(i: int) -> None:
        (await client.post("/v1/leases/abench", content=_lease_body(i))).raise_for_status()
        (await client.delete(f"/v1/leases/abench/w{i}")).raise_for_status()

    ops: dict[str, AsyncOp] = {
        "set": lambda i: client.put(f"/v1/keys/aset{i}", content=SET_BODY),
        "get_hit": lambda i: client.get("/v1/keys/hit"),
        "get_miss": lambda i: client.get("/v1/keys/missing"),
        "delete": lambda i: client.delete(f"/v1/keys/adel{i}"),
        "incr": lambda i: client.post("/v1/keys/counter/incr", content=INCR_BODY),
        "lease_release": lease_release,
        "ping": lambda i: client.get("/v1/ping"),
    }
    return ops[operation]


def _result(
    server: ServerProcess, count: int, wall: float, broker_cpu: float, client_cpu: float,
    latencies: Latencies,
) -> dict[str, float]:  # fmt: skip
    return {
        "broker_cpu_us": round(broker_cpu / count * 1e6, 2),
        "client_cpu_us": round(client_cpu / count * 1e6, 2),
        "ops_per_s": round(count / wall, 1),
        **latencies.summary_us(),
    }


def measure_sync(server: ServerProcess, operation: str, count: int) -> dict[str, float]:
    with server.client() as client:
        prepare(client, operation, count)
        op = sync_op(client, operation)
        for i in range(min(200, count)):  # warm-up: connection, caches, allocator
            op(-1 - i)
        if operation == "delete":
            prepare(client, operation, count)
        latencies = Latencies()
        cpu0, client0, start = server.cpu_seconds(), time.process_time(), time.perf_counter()
        for i in range(count):
            t = time.perf_counter()
            op(i)
            latencies.samples.append(time.perf_counter() - t)
        wall = time.perf_counter() - start
        broker_cpu, client_cpu = server.cpu_seconds() - cpu0, time.process_time() - client0
    return _result(server, count, wall, broker_cpu, client_cpu, latencies)


def measure_async(server: ServerProcess, operation: str, count: int) -> dict[str, float]:
    with server.client() as setup:
        prepare(setup, operation, 0)
        if operation == "delete":
            for i in range(count):
                setup.put(f"/v1/keys/adel{i}", content=SET_BODY).raise_for_status()

    async def run() -> dict[str, float]:
        transport = httpx.AsyncHTTPTransport(uds=str(server.socket))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            op = async_op(client, operation)
            for i in range(min(200, count)):
                await op(-1 - i)
            latencies = Latencies()
            cpu0, client0, start = server.cpu_seconds(), time.process_time(), time.perf_counter()
            for i in range(count):
                t = time.perf_counter()
                await op(i)
                latencies.samples.append(time.perf_counter() - t)
            wall = time.perf_counter() - start
            broker_cpu, client_cpu = server.cpu_seconds() - cpu0, time.process_time() - client0
        return _result(server, count, wall, broker_cpu, client_cpu, latencies)

    return asyncio.run(run())


def _worker(args: tuple[str, str, int, int, Any]) -> None:
    socket_path, operation, offset, count, barrier = args
    client = httpx.Client(
        transport=httpx.HTTPTransport(uds=socket_path), base_url="http://localhost", timeout=60
    )
    with client:
        op = sync_op(client, operation)
        op(-1 - offset)  # connect before the clock starts
        barrier.wait()
        for i in range(offset, offset + count):
            op(i)


def measure_concurrent(
    server: ServerProcess, operation: str, processes: int, total: int
) -> dict[str, float]:
    """Total throughput of `processes` client processes sharing `total` operations."""
    per_process = max(1, total // processes)
    with server.client() as client:
        prepare(client, operation, 0)
        if operation == "delete":
            for i in range(per_process * processes):
                client.put(f"/v1/keys/del{i}", content=SET_BODY).raise_for_status()
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes + 1)
    workers = [
        context.Process(
            target=_worker,
            args=((str(server.socket), operation, n * per_process, per_process, barrier),),
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
    done = per_process * processes
    return {
        "ops_per_s": round(done / wall, 1),
        "broker_cpu_us": round((server.cpu_seconds() - cpu0) / done * 1e6, 2),
    }


def fill(server: ServerProcess, count: int, value: str, *, prefix: str = "fill") -> None:
    """Create `count` keys quickly with 4 client processes."""
    body = orjson.dumps({"value": value, "ttl_ms": 3_600_000})
    context = multiprocessing.get_context("fork")
    processes = 4
    per = (count + processes - 1) // processes
    workers = [
        context.Process(target=_fill_worker, args=(str(server.socket), prefix, n * per,
                                                    min(count, (n + 1) * per), body))
        for n in range(processes)
    ]  # fmt: skip
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise RuntimeError("a fill worker failed")


def _fill_worker(socket_path: str, prefix: str, start: int, stop: int, body: bytes) -> None:
    client = httpx.Client(
        transport=httpx.HTTPTransport(uds=socket_path), base_url="http://localhost", timeout=60
    )
    with client:
        for i in range(start, stop):
            client.put(f"/v1/keys/{prefix}{i}", content=body).raise_for_status()


def measure_growth(
    server: ServerProcess, live_keys: int, count: int
) -> dict[str, dict[str, float]]:
    """set (new keys) and get (existing keys) with `live_keys` keys in the store."""
    results: dict[str, dict[str, float]] = {}
    with server.client() as client:
        for name in ("set", "get"):
            latencies = Latencies()
            cpu0 = server.cpu_seconds()
            for i in range(count):
                t = time.perf_counter()
                if name == "set":
                    client.put(f"/v1/keys/grow{live_keys}-{i}", content=SET_BODY)
                else:
                    client.get(f"/v1/keys/fill{(i * 7919) % live_keys}")
                latencies.samples.append(time.perf_counter() - t)
            results[name] = {
                "broker_cpu_us": round((server.cpu_seconds() - cpu0) / count * 1e6, 2),
                **latencies.summary_us(),
            }
            if name == "set":
                for i in range(count):  # back to `live_keys` keys before measuring get
                    client.delete(f"/v1/keys/grow{live_keys}-{i}")
    return results
