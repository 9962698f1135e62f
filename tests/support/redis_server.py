"""A real redis-server for the tests: one per test worker, on a Unix socket in a private temp
dir, persistence off, ended by its pid.

Where no `redis-server` can be found the Redis tests are skipped with a message naming it,
except under CI (`CI=true`), where a missing Redis fails the run instead: CI must install it
(Debian: `apt-get install redis-server`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_SECONDS = 10.0


def redis_server_path() -> str | None:
    return os.environ.get("REDIS_SERVER") or shutil.which("redis-server")


@dataclass
class RedisServer:
    """One running redis-server. `restart()` brings it back empty (no persistence)."""

    exe: str
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._answers_ping():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {err}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not create its socket in time")
            time.sleep(0.01)

    def _answers_ping(self) -> bool:
        """Ready means answering, not only having created its socket file."""
        if not self.socket.exists():
            return False
        try:
            with socket.socket(socket.AF_UNIX) as conn:
                conn.settimeout(1.0)
                conn.connect(str(self.socket))
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """End the server by its pid (SIGTERM, then SIGKILL)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()


def run_redis_server() -> Iterator[RedisServer]:
    """The body of the session fixture `redis_server` (tests/conftest.py)."""
    exe = redis_server_path()
    if exe is None:
        message = (
            "redis-server not found on PATH (nor REDIS_SERVER set): install Debian's "
            "redis-server package to run the Redis store tests"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: a missing Redis fails the run)")
        pytest.skip(message)
    directory = Path(tempfile.mkdtemp(prefix="ebr-", dir="/tmp"))
    server = RedisServer(exe, directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def ensure_running(redis_server: RedisServer) -> str:
    """The URL of the worker's redis-server, started again if a test stopped it."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    return redis_server.url


def fresh_namespace() -> str:
    """A namespace no other test uses: tests share a server, never state."""
    return "t" + uuid.uuid4().hex[:12]
