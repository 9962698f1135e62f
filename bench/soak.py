"""`python -m bench.soak [--procs 16] [--seconds 60] [--json FILE]`: many client processes
against one broker for a while, and what the broker's memory and file descriptors do.

Each worker process loops over a mix of operations with short TTLs (set, get, incr, delete,
list, acquire and release a lease in a pool smaller than the number of workers), counting
outcomes. Expected refusals (a key another worker deleted, a pool momentarily full) are
outcomes, not errors; errors are everything else, by type. The broker's RSS and open file
descriptors are read at the start, in the middle, at the end, and once more after every key
and lease has expired and been swept.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from bench.harness import Latencies, rss_bytes, start_broker

KEY_TTL_MS = 2_000
LEASE_TTL_MS = 2_000
KEYS_PER_WORKER = 50
SWEEPER_INTERVAL_MS = 200
# Refusals that are part of the workload, not failures.
EXPECTED = {"KeyNotFound": "miss", "PoolExhausted": "pool_full", "LeaseNotFound": "lease_gone"}


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def reading(pid: int) -> dict[str, int]:
    return {"rss_bytes": rss_bytes(pid), "fds": open_fds(pid)}


def worker(socket_path: str, seconds: float, seed: int) -> dict[str, Any]:
    """One client process's loop; returns its counts and latencies."""
    from ephemeral_broker_client import BrokerClient, BrokerError

    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latencies = Latencies()
    me = f"soak-{seed}"
    deadline = time.monotonic() + seconds
    with BrokerClient(socket_path, timeout=10.0) as broker:
        while time.monotonic() < deadline:
            key = f"k{rng.randrange(KEYS_PER_WORKER * 4)}"
            roll = rng.random()
            started = time.perf_counter()
            try:
                if roll < 0.30:
                    broker.set(key, {"n": rng.randrange(1000), "by": me}, ttl_ms=KEY_TTL_MS)
                elif roll < 0.60:
                    broker.get(key)
                elif roll < 0.70:
                    broker.incr(f"counter-{rng.randrange(8)}", ttl_ms=KEY_TTL_MS)
                elif roll < 0.80:
                    broker.delete(key)
                elif roll < 0.85:
                    broker.list(prefix="k1")
                else:
                    lease = broker.lease("slots", me, ttl_ms=LEASE_TTL_MS, size=8)
                    if rng.random() < 0.7:
                        lease.release()
                outcomes["ok"] += 1
            except BrokerError as exc:
                kind = type(exc).__name__
                if kind in EXPECTED:
                    outcomes[EXPECTED[kind]] += 1
                else:
                    errors[f"{kind}: {exc.code}"] += 1
            except Exception as exc:
                errors[type(exc).__name__] += 1
            latencies.samples.append(time.perf_counter() - started)
    return {"outcomes": dict(outcomes), "errors": dict(errors), "latencies": latencies.samples}


def soak(procs: int, seconds: float) -> dict[str, Any]:
    with start_broker(
        "--sweeper-interval", str(SWEEPER_INTERVAL_MS), "--max-items", "100000"
    ) as broker:
        at_start = reading(broker.pid)
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.soak",
                    "--worker",
                    str(broker.socket),
                    str(seconds),
                    str(seed),
                ],
                stdout=subprocess.PIPE,
            )
            for seed in range(procs)
        ]
        time.sleep(seconds / 2)
        in_middle = reading(broker.pid)
        results = []
        for proc in workers:
            out, _ = proc.communicate(timeout=seconds + 120)
            results.append(orjson.loads(out))
        at_end = reading(broker.pid)
        with broker.client() as client:
            at_end_items = client.get("/v1/stats").json()
        # Everything written had a TTL of at most KEY_TTL_MS / LEASE_TTL_MS: wait it out, plus
        # two sweeps, and look again.
        time.sleep(max(KEY_TTL_MS, LEASE_TTL_MS) / 1000 + 2 * SWEEPER_INTERVAL_MS / 1000)
        with broker.client() as client:
            after_stats = client.get("/v1/stats").json()
        after_expiry = reading(broker.pid)
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latencies = Latencies()
    for result in results:
        outcomes.update(result["outcomes"])
        errors.update(result["errors"])
        latencies.samples.extend(result["latencies"])
    total = sum(outcomes.values()) + sum(errors.values())
    return {
        "procs": procs,
        "seconds": seconds,
        "ops": total,
        "ops_per_s": round(total / seconds, 1),
        "outcomes": dict(outcomes),
        "errors": dict(errors),
        "latency": latencies.summary_us(),
        "broker": {
            "start": at_start,
            "middle": in_middle,
            "end": at_end | {"items": at_end_items["items"], "leases": at_end_items["leases"]},
            "after_expiry": after_expiry
            | {"items": after_stats["items"], "leases": after_stats["leases"]},
        },
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"soak: {result['procs']} processes for {result['seconds']:g} s: {result['ops']} ops "
        f"({result['ops_per_s']:.0f}/s), errors: {sum(result['errors'].values())}",
        "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(result["outcomes"].items())),
    ]
    if result["errors"]:
        lines.append(
            "errors: " + ", ".join(f"{k} {v}" for k, v in sorted(result["errors"].items()))
        )
    latency = result["latency"]
    lines.append(f"latency: p50 {latency['p50_us']:.0f} µs, p99 {latency['p99_us']:.0f} µs")
    lines.append(f"{'broker':<14}{'RSS MiB':>10}{'fds':>6}{'items':>8}{'leases':>8}")
    for phase, row in result["broker"].items():
        items = row.get("items", "")
        leases = row.get("leases", "")
        lines.append(
            f"{phase:<14}{row['rss_bytes'] / 2**20:>10.1f}{row['fds']:>6}{items!s:>8}{leases!s:>8}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--procs", type=int, default=16, help="client processes [16]")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long [60]")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument(
        "--worker", nargs=3, metavar=("SOCKET", "SECONDS", "SEED"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.worker:
        socket_path, seconds, seed = args.worker
        sys.stdout.buffer.write(orjson.dumps(worker(socket_path, float(seconds), int(seed))))
        return 0
    if args.procs < 1 or args.seconds <= 0:
        parser.error("--procs must be at least 1 and --seconds positive")
    result = soak(args.procs, args.seconds)
    print(render(result))
    if args.json:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
