"""`python -m bench [--quick] [--only SECTION ...] [--json FILE] [--node-original DIR]`: the
broker's and the clients' costs, in one run on this machine.

Order of the printed table: CPU per operation first (stable on a noisy machine), then latency
and throughput, the raw-ASGI baseline ratio, the server CPU per request against its floor,
growth, and memory. `--only` runs the named sections alone (the table then shows those).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import client_bench, floor, http_bench, leases, memory_bench, store_bench
from bench.harness import Progress, start_baseline, start_broker
from ephemeral_broker import __version__


@dataclass(frozen=True)
class Sizes:
    sequential_ops: int
    concurrent_ops: int
    growth_small: int
    growth_large: int
    growth_ops: int
    store_small: int
    store_large: int
    store_ops: int
    sweep_keys: int
    memory_keys: int
    lease_holders: int
    lease_samples: int
    floor_requests: int
    floor_rounds: int


FULL = Sizes(
    sequential_ops=5000,
    concurrent_ops=20_000,
    growth_small=1_000,
    growth_large=100_000,
    growth_ops=3000,
    store_small=1_000,
    store_large=1_000_000,
    store_ops=20_000,
    sweep_keys=1_000_000,
    memory_keys=100_000,
    lease_holders=100_000,
    lease_samples=5001,
    floor_requests=200,
    floor_rounds=51,
)
# Checks that every measurement runs, in under a minute on an idle 2-CPU machine; its figures
# are too small to quote.
QUICK = Sizes(
    sequential_ops=150,
    concurrent_ops=400,
    growth_small=1_000,
    growth_large=3_000,
    growth_ops=200,
    store_small=1_000,
    store_large=50_000,
    store_ops=5_000,
    sweep_keys=50_000,
    memory_keys=500,
    lease_holders=10_000,
    lease_samples=1001,
    floor_requests=100,
    floor_rounds=5,
)
CONCURRENCY = (1, 4, 16)

# Every result has these keys; the test suite checks a --quick run against them.
REQUIRED: dict[str, Any] = {
    "meta": ["version", "date", "python", "machine", "cpus", "quick", "command"],
    "sequential": ["sync", "async"],
    "concurrency": list(http_bench.OPERATIONS),
    "baseline": ["bare_get", "broker_get_hit", "cpu_ratio", "p50_ratio"],
    "floor": ["requests_per_round", "rounds", *floor.OPERATIONS],
    "growth_http": ["small_keys", "large_keys", "small", "large", "set_cpu_ratio", "get_cpu_ratio"],
    "growth_store": ["small_keys", "large_keys", "small", "large", "set_ratio", "get_ratio"],
    "sweep": ["keys", "due", "sweep_ms", "per_expired_us", "nothing_due_us"],
    "leases": ["small_holders", "large_holders", "small_grant_us", "large_grant_us", "ratio"],
    "memory": list(memory_bench.SCENARIOS),
    "clients": [
        "floor",
        "rows",
        "processes",
        "node_original",
        "sync_cpu_over_floor",
        "async_cpu_over_sync",
    ],
}
OP_FIELDS = ["broker_cpu_us", "client_cpu_us", "ops_per_s", "p50_us", "p95_us", "p99_us"]
FLOOR_FIELDS = ["broker_cpu_us", "floor_cpu_us", "ratio"]
SECTIONS = tuple(section for section in REQUIRED if section != "meta")


def missing_fields(results: dict[str, Any], sections: tuple[str, ...] = SECTIONS) -> list[str]:
    """Paths of REQUIRED fields of `sections` (and meta) absent from `results`."""
    missing = [
        f"{section}.{key}"
        for section, keys in REQUIRED.items()
        for key in keys
        if section in ("meta", *sections) and key not in results.get(section, {})
    ]
    if "sequential" in sections:
        for mode in ("sync", "async"):
            for op in http_bench.OPERATIONS:
                row = results.get("sequential", {}).get(mode, {}).get(op, {})
                missing += [f"sequential.{mode}.{op}.{f}" for f in OP_FIELDS if f not in row]
    if "floor" in sections:
        for op in floor.OPERATIONS:
            row = results.get("floor", {}).get(op, {})
            missing += [f"floor.{op}.{f}" for f in FLOOR_FIELDS if f not in row]
    return missing


def _steps(sizes: Sizes, section: str) -> int:
    """Progress steps a section takes."""
    ops = len(http_bench.OPERATIONS)
    return {
        "sequential": 2 * ops,
        "concurrency": ops * len(CONCURRENCY),
        "baseline": 2,
        "floor": 1,
        "growth_http": 2,
        "growth_store": 2,
        "sweep": 1,
        "leases": 1,
        "memory": len(memory_bench.SCENARIOS),
        "clients": CLIENT_STEPS,
    }[section]


CLIENT_STEPS = client_bench.STEPS


def run(
    sizes: Sizes,
    quick: bool,
    sections: tuple[str, ...] = SECTIONS,
    node_dir: Path | None = None,
) -> dict[str, Any]:
    progress = Progress(sum(_steps(sizes, section) for section in sections))
    results: dict[str, Any] = {
        "meta": {
            "version": __version__,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "machine": f"{platform.system()} {platform.machine()} {platform.processor()}".strip(),
            "cpus": os.cpu_count(),
            "quick": quick,
            "command": " ".join(["python -m bench", *sys.argv[1:]]),
        },
    }
    if "sequential" in sections or "concurrency" in sections:
        _http(sizes, sections, results, progress)
    if "baseline" in sections:
        results["baseline"] = _baseline(sizes, progress)
    if "floor" in sections:
        progress.step("server CPU per request against the floor")
        results["floor"] = floor.measure(sizes.floor_requests, sizes.floor_rounds)
    if "growth_http" in sections:
        results["growth_http"] = _growth_http(sizes, progress)
    if "growth_store" in sections:
        results["growth_store"] = _growth_store(sizes, progress)
    if "sweep" in sections:
        progress.step(f"sweep of {sizes.sweep_keys} keys, 1 % due")
        results["sweep"] = store_bench.sweep_cost(sizes.sweep_keys)
    if "leases" in sections:
        progress.step(f"lease grant with {leases.SMALL_POOL} and {sizes.lease_holders} holders")
        grants = leases.compare(leases.SMALL_POOL, sizes.lease_holders, sizes.lease_samples)
        results["leases"] = {
            "small_holders": grants.small.holders,
            "large_holders": grants.large.holders,
            "small_grant_us": round(grants.small.grant_ns / 1000, 3),
            "large_grant_us": round(grants.large.grant_ns / 1000, 3),
            "ratio": round(grants.ratio, 2),
        }
    if "memory" in sections:
        results["memory"] = _memory(sizes, progress)
    if "clients" in sections:
        # On a broker of its own; with the Node.js original side by side when given.
        with start_broker("--max-items", "0") as broker:
            results["clients"] = client_bench.run(
                broker, sizes.sequential_ops, sizes.concurrent_ops, node_dir, progress.step
            )
    progress.finish()
    return results


def _http(
    sizes: Sizes, sections: tuple[str, ...], results: dict[str, Any], progress: Progress
) -> None:
    ops = http_bench.OPERATIONS
    # One broker for all of these: starting one costs about a second of imports.
    with start_broker("--max-items", "0") as broker:
        if "sequential" in sections:
            results["sequential"] = {"sync": {}, "async": {}}
            for op in ops:
                progress.step(f"sequential sync {op}")
                results["sequential"]["sync"][op] = http_bench.measure_sync(
                    broker, op, sizes.sequential_ops
                )
            for op in ops:
                progress.step(f"sequential async {op}")
                results["sequential"]["async"][op] = http_bench.measure_async(
                    broker, op, sizes.sequential_ops
                )
        if "concurrency" in sections:
            results["concurrency"] = {}
            for op in ops:
                results["concurrency"][op] = {}
                for processes in CONCURRENCY:
                    progress.step(f"{processes} client processes, {op}")
                    results["concurrency"][op][str(processes)] = http_bench.measure_concurrent(
                        broker, op, processes, sizes.concurrent_ops
                    )


def _baseline(sizes: Sizes, progress: Progress) -> dict[str, Any]:
    progress.step("raw-ASGI baseline")
    with start_baseline() as bare:
        bare_get = http_bench.measure_raw_get(bare, "/v1/keys/hit", sizes.sequential_ops)
    progress.step("broker get for the baseline ratio")
    with start_broker() as broker:
        http_bench.prepare(broker, "get_hit", range(0))
        broker_get = http_bench.measure_raw_get(broker, "/v1/keys/hit", sizes.sequential_ops)
    return {
        "bare_get": bare_get,
        "broker_get_hit": broker_get,
        "cpu_ratio": round(broker_get["broker_cpu_us"] / bare_get["broker_cpu_us"], 2),
        "p50_ratio": round(broker_get["p50_us"] / bare_get["p50_us"], 2),
    }


def _growth_http(sizes: Sizes, progress: Progress) -> dict[str, Any]:
    growth: dict[str, Any] = {"small_keys": sizes.growth_small, "large_keys": sizes.growth_large}
    with start_broker("--max-items", "0") as broker:
        for label, keys in (("small", sizes.growth_small), ("large", sizes.growth_large)):
            progress.step(f"growth through HTTP at {keys} keys")
            http_bench.fill(broker, keys, http_bench.VALUE_100B)
            growth[label] = http_bench.measure_growth(broker, keys, sizes.growth_ops)
    for name in ("set", "get"):
        growth[f"{name}_cpu_ratio"] = round(
            growth["large"][name]["broker_cpu_us"] / growth["small"][name]["broker_cpu_us"], 2
        )
    return growth


def _growth_store(sizes: Sizes, progress: Progress) -> dict[str, Any]:
    store: dict[str, Any] = {"small_keys": sizes.store_small, "large_keys": sizes.store_large}
    for label, keys in (("small", sizes.store_small), ("large", sizes.store_large)):
        progress.step(f"store at {keys} keys")
        store[label] = store_bench.op_costs(keys, sizes.store_ops)
    store["set_ratio"] = round(store["large"]["set_us"] / store["small"]["set_us"], 2)
    store["get_ratio"] = round(store["large"]["get_us"] / store["small"]["get_us"], 2)
    return store


def _memory(sizes: Sizes, progress: Progress) -> dict[str, Any]:
    memory: dict[str, Any] = {}
    for scenario in memory_bench.SCENARIOS:
        progress.step(f"memory: {scenario} x {sizes.memory_keys}")
        memory[scenario] = memory_bench.rss_per_key(scenario, sizes.memory_keys)
    on = memory["10KB_compressible_compression_on"]["rss_per_key_bytes"]
    off = memory["10KB_compressible_compression_off"]["rss_per_key_bytes"]
    memory["compression_ratio"] = round(on / off, 3)
    return memory


def render(results: dict[str, Any]) -> str:
    lines = [
        f"ephemeral-broker {results['meta']['version']} — {results['meta']['command']}",
        f"{results['meta']['machine']}, {results['meta']['cpus']} CPUs, "
        f"Python {results['meta']['python']}, {results['meta']['date']}",
    ]
    if "sequential" in results:
        lines += ["", "CPU per operation, one sequential client (µs; broker = server process)"]
        lines.append(
            f"{'operation':<13} {'broker sync':>12} {'client sync':>12} "
            f"{'broker async':>13} {'client async':>13}"
        )
        for op in http_bench.OPERATIONS:
            s, a = results["sequential"]["sync"][op], results["sequential"]["async"][op]
            lines.append(
                f"{op:<13} {s['broker_cpu_us']:>12.1f} {s['client_cpu_us']:>12.1f} "
                f"{a['broker_cpu_us']:>13.1f} {a['client_cpu_us']:>13.1f}"
            )
        lines += ["", "Latency and throughput, one sequential client (sync | async)"]
        lines.append(
            f"{'operation':<13} {'ops/s':>8} {'p50 µs':>8} {'p95 µs':>8} {'p99 µs':>8}"
            f" | {'ops/s':>8} {'p50 µs':>8} {'p99 µs':>8}"
        )
        for op in http_bench.OPERATIONS:
            s, a = results["sequential"]["sync"][op], results["sequential"]["async"][op]
            lines.append(
                f"{op:<13} {s['ops_per_s']:>8.0f} {s['p50_us']:>8.1f} "
                f"{s['p95_us']:>8.1f} {s['p99_us']:>8.1f} | {a['ops_per_s']:>8.0f} "
                f"{a['p50_us']:>8.1f} {a['p99_us']:>8.1f}"
            )
    if "concurrency" in results:
        lines += ["", "Throughput with N client processes (ops/s total; broker CPU µs/op)"]
        lines.append(f"{'operation':<13}" + "".join(f" {f'N={n}':>19}" for n in CONCURRENCY))
        for op in http_bench.OPERATIONS:
            row = results["concurrency"][op]
            lines.append(
                f"{op:<13}"
                + "".join(
                    f" {row[str(n)]['ops_per_s']:>10.0f} ({row[str(n)]['broker_cpu_us']:>6.1f})"
                    for n in CONCURRENCY
                )
            )
    if "baseline" in results:
        base = results["baseline"]
        lines += [
            "",
            "Raw-ASGI baseline (same uvicorn configuration, trivial app; httpx client)",
            f"bare GET: {base['bare_get']['broker_cpu_us']:.1f} µs server CPU, "
            f"p50 {base['bare_get']['p50_us']:.1f} µs; broker GET hit: "
            f"{base['broker_get_hit']['broker_cpu_us']:.1f} µs, p50 "
            f"{base['broker_get_hit']['p50_us']:.1f} µs",
            f"broker GET costs {base['cpu_ratio']}x the bare server's CPU "
            f"({base['p50_ratio']}x its p50 latency)",
        ]
    if "floor" in results:
        lines += ["", *floor.render(results["floor"])]
    if "growth_http" in results:
        g = results["growth_http"]
        set_http = (g["small"]["set"]["broker_cpu_us"], g["large"]["set"]["broker_cpu_us"])
        get_http = (g["small"]["get"]["broker_cpu_us"], g["large"]["get"]["broker_cpu_us"])
        lines += [
            "",
            f"Growth through HTTP: broker CPU µs/op, {g['small_keys']} -> {g['large_keys']} keys",
            f"set {set_http[0]:.1f} -> {set_http[1]:.1f} ({g['set_cpu_ratio']}x)   "
            f"get {get_http[0]:.1f} -> {get_http[1]:.1f} ({g['get_cpu_ratio']}x)",
        ]
    if "growth_store" in results:
        st = results["growth_store"]
        lines += [
            f"Growth in the store: CPU µs/op, {st['small_keys']} -> {st['large_keys']} keys",
            f"set {st['small']['set_us']:.2f} -> {st['large']['set_us']:.2f} "
            f"({st['set_ratio']}x)   get {st['small']['get_us']:.2f} -> "
            f"{st['large']['get_us']:.2f} ({st['get_ratio']}x)",
        ]
    if "sweep" in results:
        sw = results["sweep"]
        lines.append(
            f"Sweep: {sw['due']} due of {sw['keys']} keys in {sw['sweep_ms']} ms "
            f"({sw['per_expired_us']} µs per expired key); nothing due: {sw['nothing_due_us']} µs"
        )
    if "leases" in results:
        le = results["leases"]
        lines.append(
            f"Lease grant in the store: {le['small_grant_us']} µs with {le['small_holders']} "
            f"holders, {le['large_grant_us']} µs with {le['large_holders']} ({le['ratio']}x)"
        )
    if "memory" in results:
        lines += ["", "Memory: RSS growth per live key"]
        for scenario in memory_bench.SCENARIOS:
            m = results["memory"][scenario]
            lines.append(
                f"{scenario:<36} {m['keys']:>7} keys {m['rss_per_key_bytes']:>9.0f} B/key "
                f"(value {m['value_bytes']} B, beyond it {m['overhead_per_key_bytes']:.0f} B)"
            )
        ratio = results["memory"]["compression_ratio"]
        lines.append(f"compressible 10 KB values, RSS with compression on / off: {ratio}")
    if "clients" in results:
        lines += ["", *client_bench.render(results["clients"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes: under a minute")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--node-original",
        metavar="DIR",
        help="a checkout of the Node.js original, to measure its own client side by side "
        f"(default: ${client_bench.NODE_ORIGINAL_ENV}; not measured without either)",
    )
    args = parser.parse_args(argv)
    sections = tuple(s for s in SECTIONS if s in args.only) if args.only else SECTIONS
    node_dir = client_bench.node_original_dir(args.node_original)
    results = run(QUICK if args.quick else FULL, args.quick, sections, node_dir)
    print(render(results))
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    missing = missing_fields(results, sections)
    if missing:
        print(f"incomplete results: {missing}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
