"""The clients' own cost: CPU per `get` of each client over each transport, next to a raw-socket
floor measured in the same run, and calls per second next to the Node.js original's own client
when its checkout is given (`--node-original DIR` or `$EPHEMERAL_BENCH_NODE_ORIGINAL`).

Every row reads one 100-byte value in a loop from one broker. Client CPU is this process's CPU
time (`time.process_time`), the broker's is read from /proc, so a noisy machine moves the
figures less than it moves wall-clock rates. The rows are measured in alternating rounds (load
from elsewhere falls on all of them alike); each figure is the median of its rounds and each
ratio the median of the rounds' ratios.

The floors are the least any Python client can spend: a prebuilt request written with one
`send` and the answer read on a kept connection, no parsing beyond finding its end; with
blocking sockets, and as a bare protocol on asyncio's own event loop and on uvloop. An async
client cannot cost less than its loop's floor, so the async rows are also given against that.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import multiprocessing
import operator
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final

import httpx
import orjson

from bench import http_bench
from bench.harness import Latencies, ServerProcess, process_cpu_seconds
from ephemeral_broker_client import AsyncBrokerClient, BrokerClient

NODE_ORIGINAL_ENV = "EPHEMERAL_BENCH_NODE_ORIGINAL"
NODE_SCRIPT = Path(__file__).with_name("node_original.mjs")
KEY = "hit"
# (row name, client, transport, event loop)
ROWS = (
    ("sync, own transport", "sync", "own", None),
    ("sync, httpx transport", "sync", "httpx", None),
    ("async, own transport", "async", "own", "asyncio"),
    ("async, httpx transport", "async", "httpx", "asyncio"),
    ("async, own transport, uvloop", "async", "own", "uvloop"),
)
PROCESSES = (1, 16)
# The request of the floors: the bytes the clients send for `get(KEY)`.
FLOOR_REQUEST = b"GET /v1/keys/hit HTTP/1.1\r\nhost: localhost\r\n\r\n"
# Alternating rounds of the CPU rows.
CPU_ROUNDS = 5


def _result(
    count: int, wall: float, client_cpu: float, broker_cpu: float, latencies: Latencies
) -> dict[str, float]:
    return {
        "client_cpu_us": round(client_cpu / count * 1e6, 2),
        "broker_cpu_us": round(broker_cpu / count * 1e6, 2),
        "ops_per_s": round(count / wall, 1),
        "p50_us": latencies.summary_us()["p50_us"],
    }


def measure_floor(server: ServerProcess, count: int) -> dict[str, float]:
    """GET with a raw socket: the request prebuilt, the answer only read to its end."""
    request = FLOOR_REQUEST
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(server.socket))

    def get() -> None:
        sock.sendall(request)
        data = sock.recv(65536)
        head_end = data.find(b"\r\n\r\n") + 4
        at = data.find(b"content-length: ") + 16
        length = int(data[at : data.find(b"\r\n", at)])
        while len(data) < head_end + length:
            data += sock.recv(65536)

    try:
        for _ in range(http_bench.warmup_calls(count)):
            get()
        latencies = Latencies()
        cpu0, client0, start = server.cpu_seconds(), time.process_time(), time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            get()
            latencies.samples.append(time.perf_counter() - t)
        wall = time.perf_counter() - start
        client_cpu, broker_cpu = time.process_time() - client0, server.cpu_seconds() - cpu0
    finally:
        sock.close()
    return _result(count, wall, client_cpu, broker_cpu, latencies)


class _FloorProtocol(asyncio.Protocol):
    """The least an asyncio client can do: gather bytes until the answer's end, then wake the
    caller."""

    def __init__(self) -> None:
        self.data = b""
        self.waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.data += data
        head_end = self.data.find(b"\r\n\r\n") + 4
        if head_end < 4:
            return
        at = self.data.find(b"content-length: ") + 16
        length = int(self.data[at : self.data.find(b"\r\n", at)])
        if len(self.data) >= head_end + length and self.waiter is not None:
            self.data = b""
            self.waiter.set_result(None)


def measure_loop_floor(server: ServerProcess, count: int, loop: str) -> dict[str, float]:
    """GET with a bare asyncio protocol on `loop`: the request prebuilt, one write, a future
    woken when the answer is complete."""

    async def run() -> dict[str, float]:
        running = asyncio.get_running_loop()
        transport, protocol = await running.create_unix_connection(
            _FloorProtocol, str(server.socket)
        )

        async def get() -> None:
            waiter = protocol.waiter = running.create_future()
            transport.write(FLOOR_REQUEST)
            await waiter

        try:
            for _ in range(http_bench.warmup_calls(count)):
                await get()
            latencies = Latencies()
            cpu0, client0, start = server.cpu_seconds(), time.process_time(), time.perf_counter()
            for _ in range(count):
                t = time.perf_counter()
                await get()
                latencies.samples.append(time.perf_counter() - t)
            wall = time.perf_counter() - start
            client_cpu, broker_cpu = time.process_time() - client0, server.cpu_seconds() - cpu0
        finally:
            transport.close()
        return _result(count, wall, client_cpu, broker_cpu, latencies)

    return _run_on(loop, run)


def measure_sync(server: ServerProcess, transport: str, count: int) -> dict[str, float]:
    chosen = httpx.HTTPTransport(uds=str(server.socket)) if transport == "httpx" else None
    with BrokerClient(str(server.socket), timeout=60, transport=chosen) as client:
        for _ in range(http_bench.warmup_calls(count)):
            client.get(KEY)
        latencies = Latencies()
        cpu0, client0, start = server.cpu_seconds(), time.process_time(), time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            client.get(KEY)
            latencies.samples.append(time.perf_counter() - t)
        wall = time.perf_counter() - start
        client_cpu, broker_cpu = time.process_time() - client0, server.cpu_seconds() - cpu0
    return _result(count, wall, client_cpu, broker_cpu, latencies)


def measure_async(server: ServerProcess, transport: str, count: int, loop: str) -> dict[str, float]:
    async def run() -> dict[str, float]:
        chosen = httpx.AsyncHTTPTransport(uds=str(server.socket)) if transport == "httpx" else None
        async with AsyncBrokerClient(str(server.socket), timeout=60, transport=chosen) as client:
            for _ in range(http_bench.warmup_calls(count)):
                await client.get(KEY)
            latencies = Latencies()
            cpu0, client0, start = server.cpu_seconds(), time.process_time(), time.perf_counter()
            for _ in range(count):
                t = time.perf_counter()
                await client.get(KEY)
                latencies.samples.append(time.perf_counter() - t)
            wall = time.perf_counter() - start
            client_cpu, broker_cpu = time.process_time() - client0, server.cpu_seconds() - cpu0
        return _result(count, wall, client_cpu, broker_cpu, latencies)

    return _run_on(loop, run)


def _run_on(
    loop: str, main: Callable[[], Coroutine[Any, Any, dict[str, float]]]
) -> dict[str, float]:
    if loop == "uvloop":
        import uvloop  # optional (absent on Windows)

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    return asyncio.run(main())


def _get_worker(socket_path: str, count: int, kind: str, ready: Any, go: Any, done: Any) -> None:
    if kind == "async":
        asyncio.run(_async_get_worker(socket_path, count, ready, go, done))
        return
    with BrokerClient(socket_path, timeout=60) as client:
        for _ in range(min(200, count)):  # connect and warm up before the clock starts
            client.get(KEY)
        ready.put(None)
        go.wait()
        start, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(count):
            client.get(KEY)
        done.put((count, time.perf_counter() - start, time.process_time() - cpu0))


async def _async_get_worker(socket_path: str, count: int, ready: Any, go: Any, done: Any) -> None:
    async with AsyncBrokerClient(socket_path, timeout=60) as client:
        for _ in range(min(200, count)):
            await client.get(KEY)
        ready.put(None)
        go.wait()  # blocks the loop, which has nothing else to do
        start, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(count):
            await client.get(KEY)
        done.put((count, time.perf_counter() - start, time.process_time() - cpu0))


def measure_processes(
    server: ServerProcess, processes: int, total: int, kind: str = "sync"
) -> dict[str, float]:
    """`processes` client processes (`BrokerClient`, or `AsyncBrokerClient` on asyncio's loop
    for `kind="async"`) each reading the key `total / processes` times in a row; calls/s of
    them all together, as for the Node.js original. Spawned, not forked: a forked child pays
    copy-on-write faults on the parent's memory while it is measured."""
    context = multiprocessing.get_context("spawn")
    ready, done, go = context.Queue(), context.Queue(), context.Event()
    per = max(1, total // processes)
    workers = [
        context.Process(target=_get_worker, args=(str(server.socket), per, kind, ready, go, done))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            ready.get(timeout=120)
        cpu0 = server.cpu_seconds()
        go.set()
        reports = [done.get(timeout=600) for _ in workers]
        broker_cpu = server.cpu_seconds() - cpu0
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.exitcode is None:
                worker.kill()
                worker.join()
    calls = sum(report[0] for report in reports)
    return {
        "ops_per_s": round(calls / max(report[1] for report in reports), 1),
        "client_cpu_us": round(sum(report[2] for report in reports) / calls * 1e6, 2),
        "broker_cpu_us": round(broker_cpu / calls * 1e6, 2),
    }


# ---- the Node.js original ------------------------------------------------------------------


def node_original_dir(given: str | None) -> Path | None:
    """The original's checkout from the option or the environment, or None."""
    chosen = given or os.environ.get(NODE_ORIGINAL_ENV)
    return Path(chosen) if chosen else None


def _node_exe() -> str | None:
    return shutil.which("node")


def measure_node(checkout: Path, processes: int, total: int) -> dict[str, float]:
    """The original's own client against its own broker: `processes` client processes each
    reading the key `total / processes` times in a row; calls/s of them all together."""
    node = _node_exe()
    assert node is not None
    workdir = Path(tempfile.mkdtemp(prefix="ebn-", dir="/tmp"))
    broker = subprocess.Popen(
        [node, str(NODE_SCRIPT), "serve", str(checkout), str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    clients: list[subprocess.Popen[str]] = []
    try:
        assert broker.stdout is not None
        line = broker.stdout.readline()
        if not line.startswith("NODE_READY "):
            raise RuntimeError(f"the Node.js original's broker did not start: {line!r}")
        pipe = line.split(" ", 1)[1].strip()
        per = max(1, total // processes)
        argv = [node, str(NODE_SCRIPT), "get", str(checkout), pipe, str(per)]
        for _ in range(processes):
            piped = subprocess.PIPE
            clients.append(subprocess.Popen(argv, stdin=piped, stdout=piped, text=True))
        for client in clients:
            assert client.stdout is not None
            if client.stdout.readline().strip() != "READY":
                raise RuntimeError("a client of the Node.js original did not start")
        cpu0 = _cpu_of(broker.pid)
        for client in clients:
            assert client.stdin is not None
            client.stdin.write("go\n")
            client.stdin.flush()
        reports = []
        for client in clients:
            out, _ = client.communicate(timeout=600)
            reports.append(orjson.loads(out.strip().splitlines()[-1]))
        broker_cpu = _cpu_of(broker.pid) - cpu0
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
        if broker.poll() is None:
            os.kill(broker.pid, signal.SIGTERM)
            try:
                broker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()
        if broker.stdout is not None:
            broker.stdout.close()
        shutil.rmtree(workdir, ignore_errors=True)
    calls = sum(report["calls"] for report in reports)
    return {
        "ops_per_s": round(calls / max(report["wall_s"] for report in reports), 1),
        "client_cpu_us": round(sum(report["cpu_s"] for report in reports) / calls * 1e6, 2),
        "broker_cpu_us": round(broker_cpu / calls * 1e6, 2),
    }


def _cpu_of(pid: int) -> float:
    return process_cpu_seconds(pid)


# ---- the section ---------------------------------------------------------------------------


def _cpu_measurers(server: ServerProcess) -> dict[str, Callable[[int], dict[str, float]]]:
    """Every CPU row by name: the floors, then each client over each transport."""
    uvloop = importlib.util.find_spec("uvloop") is not None
    measurers: dict[str, Callable[[int], dict[str, float]]] = {
        "raw-socket floor": lambda n: measure_floor(server, n),
        "asyncio floor": lambda n: measure_loop_floor(server, n, "asyncio"),
    }
    if uvloop:
        measurers["uvloop floor"] = lambda n: measure_loop_floor(server, n, "uvloop")
    for name, kind, transport, loop in ROWS:
        if loop == "uvloop" and not uvloop:
            continue
        if kind == "sync":
            measurers[name] = functools.partial(measure_sync, server, transport)
        else:
            assert loop is not None
            measurers[name] = functools.partial(_measure_async_on, server, transport, loop)
    return measurers


def _measure_async_on(
    server: ServerProcess, transport: str, loop: str, count: int
) -> dict[str, float]:
    return measure_async(server, transport, count, loop)


# The ratios reported: name -> (numerator row, denominator row); each the median of the rounds'.
RATIOS: Final = {
    "sync_cpu_over_floor": ("sync, own transport", "raw-socket floor"),
    "async_cpu_over_sync": ("async, own transport", "sync, own transport"),
    "async_uvloop_cpu_over_sync": ("async, own transport, uvloop", "sync, own transport"),
    "httpx_cpu_over_own_sync": ("sync, httpx transport", "sync, own transport"),
    "asyncio_floor_over_floor": ("asyncio floor", "raw-socket floor"),
    "uvloop_floor_over_floor": ("uvloop floor", "raw-socket floor"),
}
# The client's own cost above the floor of its kind of I/O, in µs: (client row, floor row).
ABOVE_FLOOR: Final = {
    "sync, own transport": "raw-socket floor",
    "async, own transport": "asyncio floor",
    "async, own transport, uvloop": "uvloop floor",
}


def _paired_median(
    tops: list[dict[str, float]],
    bottoms: list[dict[str, float]],
    combine: Callable[[float, float], float],
) -> float:
    """The median over the rounds of `combine(top, bottom)` of the client CPU figures: each
    round's two rows were measured a moment apart, under the same load."""
    return statistics.median(
        combine(top["client_cpu_us"], bottom["client_cpu_us"])
        for top, bottom in zip(tops, bottoms, strict=True)
    )


def run(
    server: ServerProcess,
    sequential: int,
    concurrent: int,
    node_dir: Path | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Every client-side figure, against `server` (a broker with the key prepared)."""
    with BrokerClient(str(server.socket)) as client:
        client.set(KEY, http_bench.VALUE_100B, http_bench.TTL_MS)
    results: dict[str, Any] = {"calls": sequential, "rounds": CPU_ROUNDS}
    measurers = _cpu_measurers(server)
    per_round = max(2, sequential // CPU_ROUNDS)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in measurers}
    for round_ in range(CPU_ROUNDS):
        progress(f"clients: CPU rows, round {round_ + 1} of {CPU_ROUNDS}")
        for name, measure in measurers.items():
            samples[name].append(measure(per_round))
    medians = {
        name: {field: round(statistics.median(row[field] for row in rows), 2) for field in rows[0]}
        for name, rows in samples.items()
    }
    results["floor"] = medians.pop("raw-socket floor")
    results["loop_floors"] = {
        loop: medians.pop(f"{loop} floor")
        for loop in ("asyncio", "uvloop")
        if f"{loop} floor" in medians
    }
    results["rows"] = medians
    for ratio, (top, bottom) in RATIOS.items():
        if top in samples and bottom in samples:
            results[ratio] = round(
                _paired_median(samples[top], samples[bottom], operator.truediv), 2
            )
    results["above_floor_us"] = {
        row: round(_paired_median(samples[row], samples[floor], operator.sub), 1)
        for row, floor in ABOVE_FLOOR.items()
        if row in samples
    }
    results["processes"], results["node_original"] = _side_by_side(
        server, node_dir, sequential, concurrent, progress
    )
    return results


# Rounds of the side-by-side: ours and the original alternate, and each keeps its best round,
# the one least disturbed by whatever else the machine was doing.
ROUNDS = 3
# Progress steps of the section.
STEPS: Final = CPU_ROUNDS + ROUNDS * (2 * len(PROCESSES) + 1)


def _side_by_side(
    server: ServerProcess,
    node_dir: Path | None,
    sequential: int,
    concurrent: int,
    progress: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, Any]]:
    why = _why_not_node(node_dir)
    node: dict[str, Any] = {"measured": why is None, "rounds": ROUNDS}
    if why is not None:
        node["why"] = why
    else:
        node["dir"] = str(node_dir)
    ours: dict[str, Any] = {}
    for count in PROCESSES:
        total = sequential if count == 1 else concurrent
        for round_ in range(ROUNDS):
            progress(f"clients: {count} client processes, ours, round {round_ + 1}")
            _keep_best(ours, str(count), measure_processes(server, count, total))
            if count == 1:
                progress(f"clients: 1 async client process, ours, round {round_ + 1}")
                _keep_best(ours, "1 async", measure_processes(server, 1, total, "async"))
            if node_dir is not None and why is None:
                progress(f"clients: {count} client processes, the original, round {round_ + 1}")
                _keep_best(node, str(count), measure_node(node_dir, count, total))
        if why is None:
            node[f"ratio_{count}"] = round(
                ours[str(count)]["ops_per_s"] / node[str(count)]["ops_per_s"], 2
            )
            if count == 1:
                node["ratio_1_async"] = round(
                    ours["1 async"]["ops_per_s"] / node["1"]["ops_per_s"], 2
                )
    return ours, node


def _keep_best(into: dict[str, Any], key: str, row: dict[str, float]) -> None:
    if key not in into or row["ops_per_s"] > into[key]["ops_per_s"]:
        into[key] = row


def _why_not_node(node_dir: Path | None) -> str | None:
    if node_dir is None:
        return f"no --node-original DIR and no ${NODE_ORIGINAL_ENV}"
    if _node_exe() is None:
        return "no `node` on PATH"
    if not (node_dir / "src" / "client.js").is_file():
        return f"{node_dir} has no src/client.js"
    return None


def render(results: dict[str, Any]) -> list[str]:
    floor = results["floor"]
    lines = [
        f"Client cost of one get (µs; {results['calls']} calls in {results['rounds']} "
        "alternating rounds, medians; client = this process)",
        f"{'client':<30} {'client CPU':>10} {'x floor':>8} {'calls/s':>8} {'p50 µs':>8} "
        f"{'broker CPU':>10}",
    ]
    named = [("raw-socket floor", floor)]
    named += [
        (f"{loop} floor (bare protocol)", row) for loop, row in results["loop_floors"].items()
    ]
    named += list(results["rows"].items())
    for name, row in named:
        lines.append(
            f"{name:<30} {row['client_cpu_us']:>10.1f} "
            f"{row['client_cpu_us'] / floor['client_cpu_us']:>8.2f} {row['ops_per_s']:>8.0f} "
            f"{row['p50_us']:>8.1f} {row['broker_cpu_us']:>10.1f}"
        )
    uvloop = results.get("async_uvloop_cpu_over_sync")
    lines.append(
        f"async / sync client CPU: {results['async_cpu_over_sync']}x on asyncio's own loop"
        + (f", {uvloop}x on uvloop" if uvloop is not None else "")
        + f"; httpx's transport costs {results['httpx_cpu_over_own_sync']}x ours (sync)"
    )
    loops = ", ".join(
        f"{loop} {results[f'{loop}_floor_over_floor']}x"
        for loop in results["loop_floors"]
        if f"{loop}_floor_over_floor" in results
    )
    above = ", ".join(f"{row} {us:.1f}" for row, us in results["above_floor_us"].items())
    lines.append(f"the event loops' own floors against the blocking one: {loops}")
    lines.append(f"client CPU above the floor of its kind of I/O (µs): {above}")
    node = results["node_original"]
    lines.append("")
    lines.append(
        "get calls/s with N client processes: ours (BrokerClient) vs the Node.js original "
        f"(best of {node['rounds']} alternating rounds)"
    )
    for count in (*(str(count) for count in PROCESSES), "1 async"):
        row = results["processes"][count]
        label = "N=1 async" if count == "1 async" else f"N={count}"
        mine = (
            f"{label:<9} ours {row['ops_per_s']:>6.0f} (client CPU "
            f"{row['client_cpu_us']:.1f} µs/call, broker {row['broker_cpu_us']:.1f})"
        )
        if node["measured"]:
            theirs = node["1" if count == "1 async" else count]
            ratio = node["ratio_1_async" if count == "1 async" else f"ratio_{count}"]
            lines.append(
                f"{mine}  original {theirs['ops_per_s']:>6.0f} (client CPU "
                f"{theirs['client_cpu_us']:.1f}, broker {theirs['broker_cpu_us']:.1f}): "
                f"{ratio}x"
            )
        else:
            lines.append(mine)
    if not node["measured"]:
        lines.append(f"the Node.js original was not measured: {node['why']}")
    return lines
