"""Shared fixtures: a fake clock, the app in-process over ASGI, and real brokers in subprocesses.

Every process a test starts is ended by its pid in the fixture's teardown, and every socket
lives in a short private temp dir that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ephemeral_broker.api.app import create_app
from ephemeral_broker.clock import FakeClock
from ephemeral_broker.settings import BrokerSettings

pytest_plugins = ["pytester"]

BIN_DIR = Path(sys.executable).parent
BROKER_EXE = str(BIN_DIR / "ephemeral-broker")
START_TIMEOUT_SECONDS = 20.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's BROKER_* or EPHEMERAL_* variables never leak into a test."""
    for name in list(os.environ):
        if name.startswith("BROKER_") or name in ("EPHEMERAL_PIPE", "EPHEMERAL_SECRET"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """The test worker's redis-server (tests/redis_helpers.py; imported only when used, since
    some tests copy this conftest into a directory where `tests` is not importable)."""
    from tests.redis_helpers import run_redis_server

    yield from run_redis_server()


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    """The URL of the worker's redis-server, started again if a test stopped it."""
    from tests.redis_helpers import ensure_running

    return ensure_running(redis_server)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


AppFactory = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def make_api(clock: FakeClock) -> AppFactory:
    """`async with make_api(max_items=3) as api:` — the app in-process on the fake clock."""

    @contextlib.asynccontextmanager
    async def factory(**settings: Any) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(BrokerSettings(**settings), clock=clock)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client

    return factory


@pytest.fixture
async def api(make_api: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_api() as client:
        yield client


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A private temp dir with a short path (Unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="eb-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


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


BrokerFactory = Callable[..., BrokerProcess]


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


@pytest.fixture
def start_broker(short_tmp: Path) -> Iterator[BrokerFactory]:
    """Start `ephemeral-broker serve` in a subprocess; waits for its EPHEMERAL_PIPE line."""
    started: list[BrokerProcess] = []

    def factory(
        *flags: str,
        socket: Path | None = None,
        env: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> BrokerProcess:
        path = socket or short_tmp / f"b{len(started)}.sock"
        stderr = short_tmp / f"b{len(started)}.stderr"
        broker = launch_broker(path, stderr, *flags, env=env, preexec=preexec)
        started.append(broker)
        return broker

    yield factory
    for broker in started:
        kill_broker(broker)


@pytest.fixture
def broker(start_broker: BrokerFactory) -> BrokerProcess:
    return start_broker()


PROBLEM_FIELDS = {"type", "title", "status", "detail", "code", "request_id"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is a complete problem+json answer with this status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert set(problem) >= PROBLEM_FIELDS, problem
    assert problem["status"] == status
    assert problem["code"] == code, problem
    assert problem["type"] == f"urn:ephemeral-broker:error:{code}"
    assert problem["request_id"] == response.headers["x-request-id"]
    assert problem["detail"] and problem["title"]
    return problem


def split_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 response: status, headers (names lower-cased), and what follows them."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll a condition that a real process makes true; fails with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.01)


@dataclass
class AsgiResult:
    status: int
    headers: dict[str, str]
    body: bytes
    receive_calls: int

    def json(self) -> Any:
        import orjson

        return orjson.loads(self.body)


def _bytes(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


Headers = Sequence[tuple[str | bytes, str | bytes]]


def http_scope(method: str, path: str, headers: Headers = ()) -> dict[str, Any]:
    """An ASGI HTTP scope for `path` exactly as given (percent-encoded, query included)."""
    from urllib.parse import unquote

    raw_path, _, query = path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(_bytes(k).lower(), _bytes(v)) for k, v in headers],
        "client": ("test", 0),
        "server": ("localhost", 80),
    }


async def asgi_call(
    app: Any,
    method: str,
    path: str,
    *,
    chunks: tuple[bytes, ...] = (),
    headers: Headers = (),
    receive: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> AsgiResult:
    """Call an ASGI app directly: exact paths (no client normalisation), the body in `chunks`
    (or from your own `receive`), and a count of how many times the app asked for body."""
    calls = 0
    pending = list(chunks)

    async def from_chunks() -> dict[str, Any]:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        return {"type": "http.disconnect"}

    source = receive or from_chunks

    async def counting_receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return await source()

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(http_scope(method, path, headers), counting_receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return AsgiResult(
        start["status"],
        {k.decode(): v.decode() for k, v in start["headers"]},
        body,
        calls,
    )
