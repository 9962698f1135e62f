"""Pieces every benchmark shares: brokers in subprocesses, CPU and RSS readings, statistics.

CPU time is read from /proc/<pid>/task/*/schedstat (nanoseconds of CPU per thread), which is
stable on a noisy machine where wall-clock throughput is not.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BROKER_EXE = str(Path(sys.executable).parent / "ephemeral-broker")


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by every thread of `pid` (ns precision, from schedstat)."""
    total_ns = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as stat:
                total_ns += int(stat.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended between listdir and open
    return total_ns / 1e9


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class ServerProcess:
    """A server subprocess on a socket in a private temp dir; ended by its pid."""

    proc: subprocess.Popen[str]
    socket: Path
    workdir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def rss(self) -> int:
        return rss_bytes(self.proc.pid)

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)),
            base_url="http://localhost",
            timeout=timeout,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    argv_for_socket: Callable[[Path], Sequence[str]], ready_prefix: str
) -> ServerProcess:
    workdir = Path(tempfile.mkdtemp(prefix="ebb-", dir="/tmp"))
    sock = workdir / "s.sock"
    proc = subprocess.Popen(
        list(argv_for_socket(sock)),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(ready_prefix):
        proc.kill()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"server did not start: {line!r}")
    return ServerProcess(proc, sock, workdir)


def start_broker(*flags: str) -> ServerProcess:
    """`ephemeral-broker serve` with warnings-only logs, so logging costs nothing measurable."""
    return start_server(
        lambda sock: [BROKER_EXE, "serve", "--socket", str(sock), "--log-level", "warning", *flags],
        "EPHEMERAL_PIPE=",
    )


def start_baseline(*, loaded: bool = False) -> ServerProcess:
    """The same uvicorn configuration serving a trivial pure-ASGI app (bench/baseline.py);
    `loaded`: in a process that has also built (and never serves) the broker's app."""
    extra = ["--loaded"] if loaded else []
    return start_server(
        lambda sock: [sys.executable, "-m", "bench.baseline", str(sock), *extra], "BASELINE_READY"
    )


@dataclass
class Latencies:
    samples: list[float] = field(default_factory=list)

    def summary_us(self) -> dict[str, float]:
        ordered = sorted(self.samples)
        count = len(ordered)

        def pick(q: float) -> float:
            return ordered[min(count - 1, int(q * count))] * 1e6

        return {
            "p50_us": round(pick(0.50), 1),
            "p95_us": round(pick(0.95), 1),
            "p99_us": round(pick(0.99), 1),
            "mean_us": round(statistics.fmean(ordered) * 1e6, 1),
        }


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


class Progress:
    """One line on stderr that says where a long run is."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        sys.stderr.write(f"\r[{self.done:>2}/{self.total}] {elapsed:6.1f}s  {what:<60}")
        sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write(f"\rdone in {time.monotonic() - self.started:.1f}s{' ' * 70}\n")
        sys.stderr.flush()
