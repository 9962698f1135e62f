"""Real brokers in subprocesses: `ephemeral-broker serve` on a socket in a private temp dir,
waited for until it prints its EPHEMERAL_PIPE line, and ended by its pid."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BIN_DIR = Path(sys.executable).parent
BROKER_EXE = str(BIN_DIR / "ephemeral-broker")
START_TIMEOUT_SECONDS = 20.0


@dataclass
class BrokerProcess:
    proc: subprocess.Popen[str]
    socket: Path
    stderr_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, **kwargs: Any) -> httpx.Client:
        return uds_client(self.socket, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the broker (by its pid) and return its exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


# What the `start_broker` fixture returns: `start_broker(*flags, socket=, env=, preexec=)`.
BrokerFactory = Callable[..., BrokerProcess]


def uds_client(socket_path: Path | str, **kwargs: Any) -> httpx.Client:
    transport = httpx.HTTPTransport(uds=str(socket_path))
    return httpx.Client(transport=transport, base_url="http://localhost", **kwargs)


def read_first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"no stdout line within {timeout} s")
    return proc.stdout.readline()


def launch_broker(
    path: Path,
    stderr_path: Path,
    *flags: str,
    env: dict[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
) -> BrokerProcess:
    """Start `ephemeral-broker serve` on `path` and wait for its EPHEMERAL_PIPE line; the
    process is killed again if it does not start. `preexec` runs in the child before exec
    (resource limits)."""
    args = [BROKER_EXE, "serve", "--socket", str(path), *flags]
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, **(env or {})},
            preexec_fn=preexec,  # noqa: PLW1509 (no threads start before the broker does)
        )
    broker = BrokerProcess(proc, path, stderr_path, args)
    try:
        line = read_first_line(proc, START_TIMEOUT_SECONDS)
        assert line == f"EPHEMERAL_PIPE={path}\n", (line, broker.stderr())
    except BaseException as exc:
        kill_broker(broker)
        if isinstance(exc, TimeoutError):
            raise AssertionError(f"broker did not start: {broker.stderr()}") from None
        raise
    return broker


def kill_broker(broker: BrokerProcess) -> None:
    """SIGKILL the broker (by its pid) if it still runs, and reap it."""
    if broker.proc.poll() is None:
        os.kill(broker.proc.pid, signal.SIGKILL)
        broker.proc.wait(timeout=10)
    if broker.proc.stdout is not None:
        broker.proc.stdout.close()
