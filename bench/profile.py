"""Where a broker GET's CPU goes: `python -m bench.profile [--requests N]`.

Starts `ephemeral-broker serve` in a subprocess, warms it up, then turns cProfile on in it (on
the serving thread's CPU clock, so time the event loop spends waiting for the next request is
not counted; start-up is not profiled), sends N GETs of one 100-byte value with the sync
client, stops the broker, and prints the share of the profiled CPU time spent in each package
(by the file each function is defined in), then the most expensive functions.

cProfile is deterministic: it adds a cost to every Python call, so pure-Python frames look
heavier than they are next to C code. Read the shares as where to look, not as exact costs.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Attribution by the path of the file a function is defined in, first match wins.
GROUPS = (
    # The store apart from the request path around it: a GET's own work against its cost.
    ("our store (app/…/store/)", f"{os.sep}ephemeral_broker{os.sep}store{os.sep}"),
    ("our code (app/)", f"{os.sep}app{os.sep}"),
    ("fastapi", f"{os.sep}fastapi{os.sep}"),
    ("starlette", f"{os.sep}starlette{os.sep}"),
    ("pydantic", f"{os.sep}pydantic"),
    ("uvicorn", f"{os.sep}uvicorn{os.sep}"),
    ("prometheus_client", f"{os.sep}prometheus_client{os.sep}"),
    ("asyncio", f"{os.sep}asyncio{os.sep}"),
    ("logging", f"{os.sep}logging{os.sep}"),
)


WARMUP = 200
START_SIGNAL = signal.SIGUSR1


def serve_profiled(socket_path: str, out: str) -> None:
    """The child: the broker's own `serve`, profiled from START_SIGNAL until it stops."""
    from ephemeral_broker.cli.main import main

    profiler = cProfile.Profile(time.thread_time)
    # The handler runs on the main thread, which is the one serving: that is what it profiles.
    signal.signal(START_SIGNAL, lambda _signum, _frame: profiler.enable())
    try:
        main(["serve", "--socket", socket_path, "--log-level", "warning"])
    finally:
        profiler.disable()
        profiler.dump_stats(out)


def shares(stats: pstats.Stats) -> list[tuple[str, float]]:
    """(group, share of the profiled time) from the functions' own time, largest first."""
    by_group: collections.defaultdict[str, float] = collections.defaultdict(float)
    entries: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    entries = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, _name), (_cc, _nc, own_time, _cum, _callers) in entries.items():
        group = next((label for label, part in GROUPS if part in filename), None)
        if group is None:
            group = "builtins and C methods" if filename == "~" else "other Python"
        by_group[group] += own_time
    total = sum(by_group.values()) or 1.0
    ranked = sorted(by_group.items(), key=lambda item: -item[1])
    return [(group, spent / total) for group, spent in ranked]


def profile(requests: int) -> tuple[list[tuple[str, float]], pstats.Stats]:
    from ephemeral_broker_client import BrokerClient

    workdir = Path(tempfile.mkdtemp(prefix="ebp-", dir="/tmp"))
    socket_path, out = str(workdir / "s.sock"), str(workdir / "profile.out")
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.profile", "--serve", socket_path, out],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        if not child.stdout.readline().startswith("EPHEMERAL_PIPE="):
            raise RuntimeError("the profiled broker did not start")
        with BrokerClient(socket_path, timeout=60) as client:
            client.set("hit", "v" * 98, 600_000)
            for _ in range(WARMUP):
                client.get("hit")
            os.kill(child.pid, START_SIGNAL)
            client.ping()  # answered after the handler ran: the loop runs it first
            for _ in range(requests):
                client.get("hit")
        os.kill(child.pid, signal.SIGTERM)
        child.wait(timeout=60)
        stats = pstats.Stats(out)
        return shares(stats), stats
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000, help="GETs to profile")
    parser.add_argument("--top", type=int, default=15, help="functions to list")
    parser.add_argument("--serve", nargs=2, metavar=("SOCKET", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_profiled(*args.serve)
        return 0
    groups, stats = profile(args.requests)
    print(f"broker CPU under {args.requests} GETs, by package (cProfile, thread CPU clock):")
    for group, share in groups:
        print(f"  {group:<28} {share * 100:5.1f} %")
    stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
