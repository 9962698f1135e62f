"""Fixtures of the server's tests: the fake clock, and the app in-process over ASGI."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ephemeral_broker.api.app import create_app
from ephemeral_broker.clock import FakeClock
from ephemeral_broker.settings import BrokerSettings
from tests.support.asgi import AppFactory


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


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
