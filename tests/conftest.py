"""Fixtures more than one folder of tests uses: an isolated environment, short temp dirs, real
brokers in subprocesses, the worker's redis-server.

Every process a fixture starts is ended by its pid in the fixture's teardown, and every socket
lives in a short private temp dir that is removed afterwards. The helpers behind these fixtures
are in tests/support/; fixtures only one folder uses are in that folder's conftest.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.brokers import BrokerFactory, BrokerProcess, kill_broker, launch_broker
from tests.support.defects import DEFECTS, keyword
from tests.support.redis_server import RedisServer, ensure_running, run_redis_server

pytest_plugins = ["pytester"]


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
def redis_server() -> Iterator[RedisServer]:
    """The test worker's redis-server (skipped, naming it, where none is installed)."""
    yield from run_redis_server()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the worker's redis-server, started again if a test stopped it."""
    return ensure_running(redis_server)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A private temp dir with a short path (Unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="eb-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


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


@pytest.fixture(scope="module")
def shared_broker() -> Iterator[BrokerProcess]:
    """One real broker per test module, so that the many small client and CLI tests do not
    each pay a broker's start-up; `ns` keeps the tests sharing it independent."""
    directory = Path(tempfile.mkdtemp(prefix="eb-", dir="/tmp"))
    broker = launch_broker(directory / "b.sock", directory / "b.stderr")
    yield broker
    kill_broker(broker)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def ns() -> str:
    """A key prefix of this test's own on a shared broker."""
    return f"t{uuid.uuid4().hex[:10]}-"


@pytest.hookimpl(tryfirst=True)  # before -k deselects by keyword
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`@pytest.mark.defect(N)` takes one known defect number; `-k defect_05` selects the tests
    for defect 5 (tests/support/defects.py lists them, docs/defects.md is generated)."""
    for item in items:
        for mark in item.iter_markers("defect"):
            number = mark.args[0] if len(mark.args) == 1 and not mark.kwargs else None
            if number not in DEFECTS:
                raise pytest.UsageError(
                    f"{item.nodeid}: @pytest.mark.defect takes one defect number from "
                    f"{min(DEFECTS)} to {max(DEFECTS)} (tests/support/defects.py), "
                    f"got {mark.args} {mark.kwargs or ''}".rstrip()
                )
            item.extra_keyword_matches.add(keyword(number))
