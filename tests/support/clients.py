"""Every client test body runs against both clients over both transports.

`Clients(kind)` opens clients of one kind: "sync" or "async", each over the client's own
transport (`UnixTransport`, `AsyncUnixTransport`) or, with "-httpx", over httpx's
(`HTTPTransport(uds=...)`). `clients.open(socket)` returns a `BrokerClient`, or an
`AsyncBrokerClient` driven through `Blocking` on one event loop, so the same assertions exercise
both clients over both transports, and the two transports cannot drift apart.
`clients.pause(s)` lets time pass with the loop running, so that an async lease keepalive keeps
working while the test waits. The `clients` fixture (tests/client/conftest.py) is parametrized
over `KINDS`; `each_kind()` gives all four against one broker a test starts itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx

from ephemeral_broker_client import (
    AsyncBrokerClient,
    AsyncLease,
    AsyncUnixTransport,
    BrokerClient,
    PendingLease,
    UnixTransport,
)

T = TypeVar("T")


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class Blocking:
    """Calls an async client's (or async lease's) methods to completion on `runner`."""

    def __init__(self, target: Any, runner: asyncio.Runner) -> None:
        self._target = target
        self._runner = runner

    def _finish(self, result: Any) -> Any:
        if isinstance(result, PendingLease) or inspect.isawaitable(result):
            result = self._runner.run(_awaited(result))
        if isinstance(result, AsyncLease):
            return Blocking(result, self._runner)
        return result

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._finish(attribute(*args, **kwargs))

        return call

    def __repr__(self) -> str:
        return repr(self._target)

    def __enter__(self) -> Any:
        return self._finish(self._target.__aenter__())

    def __exit__(self, *exc_info: Any) -> None:
        self._runner.run(self._target.__aexit__(*exc_info))


class Clients:
    def __init__(self, name: str) -> None:
        # "sync" or "async" over the client's own transport, "-httpx" over httpx's.
        self.name = name
        self.kind, _, transport = name.partition("-")
        self.over_httpx = transport == "httpx"
        self.runner = asyncio.Runner()
        self.opened: list[BrokerClient] = []

    def transport(self, path: Path | str) -> Any:
        """A new transport of this kind for the socket at `path`."""
        if self.kind == "sync":
            return httpx.HTTPTransport(uds=str(path)) if self.over_httpx else UnixTransport(path)
        return (
            httpx.AsyncHTTPTransport(uds=str(path)) if self.over_httpx else AsyncUnixTransport(path)
        )

    def uds_transport(self, path: Path | str) -> CountingTransport:
        """A transport of this kind for `path` that records the requests sent through it."""
        return CountingTransport(self.transport(path))

    def open(self, socket: Path | str | None = None, **kwargs: Any) -> BrokerClient:
        """A client of `kind` over its transport, closed at the end of the test."""
        if self.over_httpx and "transport" not in kwargs:
            path = socket if socket is not None else os.environ.get("EPHEMERAL_PIPE")
            if path:
                kwargs["transport"] = self.transport(path)
        if self.kind == "sync":
            client = BrokerClient(socket, **kwargs)
        else:
            client = cast(BrokerClient, Blocking(AsyncBrokerClient(socket, **kwargs), self.runner))
        self.opened.append(client)
        return client

    def pause(self, seconds: float) -> None:
        if self.kind == "sync":
            time.sleep(seconds)
        else:
            self.runner.run(asyncio.sleep(seconds))

    def blocking(self, call: Callable[[], T]) -> T:
        """Run a blocking call. For the async clients it runs in a thread while their event
        loop goes on: their keepalive tasks live on that loop, and a lease with a short TTL
        would expire during a call that stopped it (e.g. a listing on a loaded machine)."""
        if self.kind == "sync":
            return call()
        return self.runner.run(asyncio.to_thread(call))

    def close(self) -> None:
        for client in self.opened:
            client.close()
        self.runner.close()


KINDS = ("sync", "async", "sync-httpx", "async-httpx")


@contextlib.contextmanager
def each_kind() -> Iterator[Iterator[Clients]]:
    """For tests that need a broker of their own: both kinds of client against one broker,
    instead of starting a broker per kind."""
    opened = [Clients(kind) for kind in KINDS]
    try:
        yield iter(opened)
    finally:
        for clients_of_kind in opened:
            clients_of_kind.close()


# ---- transports that watch -----------------------------------------------------------------


class CountingTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Wraps a real transport (sync or async) and records every request it is asked to send."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response: httpx.Response = self.inner.handle_request(request)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response: httpx.Response = await self.inner.handle_async_request(request)
        return response

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()

    async def aclose(self) -> None:
        if hasattr(self.inner, "aclose"):
            await self.inner.aclose()
