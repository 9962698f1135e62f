"""The Redis store beside the memory store: CPU per operation of the broker and of Redis, and
calls per second through the sync client.

    python -m bench.redis_bench [--count N] [--rounds R] [--quick] [--json PATH]

Starts its own redis-server (Unix socket in a temp dir, persistence off) and two brokers:
one on the memory store, one on the Redis store. For each operation and round it runs the
same calls against both and reads the CPU time of the broker process and of the redis-server
process (from /proc schedstat, stable on a shared machine where wall-clock figures are not).
Reports medians over the rounds, and the ratio redis/memory of broker CPU per call.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import ServerProcess, median, process_cpu_seconds, start_broker
from bench.http_bench import VALUE_100B, steps, sync_client, warmup_calls

OPERATIONS = ("set", "get_hit", "lease_release")


class RedisProcess:
    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit(
                "redis-server not found on PATH (Debian: apt-get install redis-server)"
            )
        self.workdir = Path(tempfile.mkdtemp(prefix="ebr-", dir="/tmp"))
        self.socket = self.workdir / "redis.sock"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit("redis-server did not start")
            time.sleep(0.01)
        time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def measure(
    server: ServerProcess, redis: RedisProcess, operation: str, count: int, offset: int
) -> dict[str, float]:
    """`count` sequential calls; CPU per call of the broker and of Redis, calls per second."""
    warmup = warmup_calls(count)
    with sync_client(server) as client:
        if operation == "get_hit":
            client.set("hit", VALUE_100B, 600_000)
        op = steps(client, operation)
        for i in range(offset - warmup, offset):
            for step in op:
                step(i)
        broker0, redis0 = server.cpu_seconds(), redis.cpu_seconds()
        start = time.perf_counter()
        for i in range(offset, offset + count):
            for step in op:
                step(i)
        wall = time.perf_counter() - start
        broker_cpu = server.cpu_seconds() - broker0
        redis_cpu = redis.cpu_seconds() - redis0
    return {
        "broker_cpu_us": broker_cpu / count * 1e6,
        "redis_cpu_us": redis_cpu / count * 1e6,
        "calls_per_s": count / wall,
    }


def run(count: int, rounds: int) -> dict[str, Any]:
    redis = RedisProcess()
    try:
        with start_broker() as memory, start_broker("--store", redis.url) as shared:
            results: dict[str, Any] = {}
            for operation in OPERATIONS:
                rows: dict[str, list[dict[str, float]]] = {"memory": [], "redis": []}
                for round_ in range(rounds):
                    offset = (round_ + 1) * 1_000_000
                    # Alternated, so drift on the shared machine hits both stores alike.
                    rows["memory"].append(measure(memory, redis, operation, count, offset))
                    rows["redis"].append(measure(shared, redis, operation, count, offset))
                summary: dict[str, Any] = {
                    store: {
                        field: round(median([row[field] for row in samples]), 1)
                        for field in ("broker_cpu_us", "redis_cpu_us", "calls_per_s")
                    }
                    for store, samples in rows.items()
                }
                summary["broker_cpu_ratio"] = round(
                    summary["redis"]["broker_cpu_us"] / summary["memory"]["broker_cpu_us"], 2
                )
                results[operation] = summary
            return {"count": count, "rounds": rounds, "operations": results}
    finally:
        redis.stop()


def render(report: dict[str, Any]) -> str:
    lines = [
        f"Redis store beside memory: {report['count']} sequential calls per round, "
        f"median of {report['rounds']} rounds (lease_release = grant + release)",
        f"{'operation':<14} {'store':<7} {'broker CPU us/call':>19} {'Redis CPU us/call':>18} "
        f"{'calls/s':>9}",
    ]
    for operation, summary in report["operations"].items():
        for store in ("memory", "redis"):
            row = summary[store]
            lines.append(
                f"{operation:<14} {store:<7} {row['broker_cpu_us']:>19.1f} "
                f"{row['redis_cpu_us']:>18.1f} {row['calls_per_s']:>9.0f}"
            )
        lines.append(f"{'':<14} broker CPU redis/memory: {summary['broker_cpu_ratio']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_bench", description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200 calls, 1 round (a smoke run)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    count, rounds = (200, 1) if args.quick else (args.count, args.rounds)
    report = run(count, rounds)
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
