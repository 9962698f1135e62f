"""The server in-process on a real socket: socket rules, the sweeper, signals, drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ephemeral_broker.api.app import create_app
from ephemeral_broker.clock import FakeClock
from ephemeral_broker.serving.binding import StartupError, bind_socket
from ephemeral_broker.serving.server import serve
from ephemeral_broker.serving.signals import SIGNALS
from ephemeral_broker.settings import BrokerSettings
from ephemeral_broker.store import MemoryStore

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def running_broker(
    settings: BrokerSettings, clock: FakeClock | None = None
) -> AsyncIterator[tuple[Any, httpx.AsyncClient, asyncio.Task[int]]]:
    """A broker served by this test's event loop; stopped through its own shutdown path."""
    app = create_app(settings, clock=clock)
    ready = asyncio.Event()
    task = asyncio.create_task(serve(settings, app, on_ready=lambda _path: ready.set()))
    await asyncio.wait_for(ready.wait(), 20)
    assert settings.socket is not None
    transport = httpx.AsyncHTTPTransport(uds=str(settings.socket))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        try:
            yield app, client, task
        finally:
            if not task.done():
                app.state.runtime.request_shutdown("test over")
            await asyncio.wait_for(task, 20)


@pytest.mark.defect(1)
async def test_sweeper_runs_at_the_configured_interval(short_tmp: Path, clock: FakeClock) -> None:
    """Defect 1: the sweeper ignored its interval and always ran every 30 s. Here a
    10 ms interval reclaims an expired key with no read at all; a 60 s one does not."""
    fast = BrokerSettings(socket=short_tmp / "fast.sock", sweeper_interval=10)
    async with running_broker(fast, clock) as (app, client, _):
        await client.put("/v1/keys/k", json={"value": 1, "ttl_ms": 1000})
        store: MemoryStore = app.state.store
        clock.advance(1000)
        for _ in range(2000):
            if store.resident_items == 0:
                break
            await asyncio.sleep(0.005)
        assert store.resident_items == 0
    slow = BrokerSettings(socket=short_tmp / "slow.sock", sweeper_interval=60_000)
    async with running_broker(slow, clock) as (app, client, _):
        await client.put("/v1/keys/k", json={"value": 1, "ttl_ms": 1000})
        clock.advance(1000)
        await asyncio.sleep(0.3)
        assert app.state.store.resident_items == 1  # not swept: only a read would notice


@pytest.mark.defect(3)
async def test_signal_handlers_are_installed_once_per_process(short_tmp: Path) -> None:
    """Defect 3: every start() added SIGINT/SIGTERM handlers. Start and stop five
    brokers in one process: one installation, and the handler in place is the dispatcher's."""
    for n in range(5):
        settings = BrokerSettings(socket=short_tmp / f"s{n}.sock")
        async with running_broker(settings) as (_, client, _task):
            assert (await client.get("/healthz")).status_code == 200
    assert SIGNALS.installations == 1
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        assert getattr(handler, "__self__", None) is SIGNALS


async def test_a_real_sigterm_drains_the_broker_once(short_tmp: Path) -> None:
    settings = BrokerSettings(socket=short_tmp / "t.sock")
    async with running_broker(settings) as (app, client, task):
        assert (await client.get("/readyz")).status_code == 200
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the dispatcher, then to this broker
        assert await asyncio.wait_for(task, 20) == 0
        assert app.state.runtime.draining
    assert not settings.socket.exists()  # type: ignore[union-attr]


def test_socket_is_created_with_the_mode_from_the_start(short_tmp: Path) -> None:
    for mode in (0o600, 0o660):
        path = short_tmp / f"m{mode:o}.sock"
        bound = bind_socket(BrokerSettings(socket=path, socket_mode=mode))
        try:
            assert stat.S_IMODE(os.lstat(path).st_mode) == mode
        finally:
            bound.cleanup()
        assert not path.exists()


def test_default_socket_is_in_a_fresh_private_directory(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(short_tmp))
    first = bind_socket(BrokerSettings())
    second = bind_socket(BrokerSettings())
    try:
        assert first.private_dir is not None and second.private_dir is not None
        assert first.private_dir != second.private_dir
        assert first.private_dir.parent == short_tmp
        assert stat.S_IMODE(os.stat(first.private_dir).st_mode) == 0o700
    finally:
        first.cleanup()
        second.cleanup()
    assert list(short_tmp.iterdir()) == []


def test_a_stale_socket_is_removed_and_a_live_one_is_refused(short_tmp: Path) -> None:
    path = short_tmp / "b.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what SIGKILL leaves behind
    bound = bind_socket(BrokerSettings(socket=path))
    try:
        with pytest.raises(StartupError, match="already running"):
            bind_socket(BrokerSettings(socket=path))
    finally:
        bound.cleanup()


def test_a_path_that_is_not_a_socket_is_never_removed(short_tmp: Path) -> None:
    regular = short_tmp / "important.txt"
    regular.write_text("keep me")
    with pytest.raises(StartupError, match="not a socket"):
        bind_socket(BrokerSettings(socket=regular))
    assert regular.read_text() == "keep me"
    directory = short_tmp / "dir.sock"
    directory.mkdir()
    with pytest.raises(StartupError, match="not a socket"):
        bind_socket(BrokerSettings(socket=directory))
    assert directory.is_dir()


def test_missing_socket_directory_is_a_clear_error(short_tmp: Path) -> None:
    with pytest.raises(StartupError, match="does not exist"):
        bind_socket(BrokerSettings(socket=short_tmp / "nope" / "b.sock"))


def test_cleanup_leaves_a_socket_that_is_no_longer_ours(short_tmp: Path) -> None:
    path = short_tmp / "b.sock"
    bound = bind_socket(BrokerSettings(socket=path))
    os.unlink(path)
    replacement = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    replacement.bind(str(path))  # another broker took the path over
    try:
        bound.cleanup()
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        replacement.close()
