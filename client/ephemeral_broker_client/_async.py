"""`AsyncBrokerClient`: the operations of `_operations` executed with asyncio I/O."""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar

import httpx

from ephemeral_broker_client import _operations as ops
from ephemeral_broker_client._protocol import (
    DEFAULT_TIMEOUT,
    Attempt,
    Plan,
    Renewal,
    Reply,
    RunFactory,
    Sleep,
    build_request,
    reply_from_raw,
    reply_from_response,
    request_head,
)
from ephemeral_broker_client._shared import CONNECTION_ARGS, ClientBase, LeaseBase
from ephemeral_broker_client._transport import AsyncUnixTransport
from ephemeral_broker_client.errors import BrokerError
from ephemeral_broker_client.models import LeaseGrant

T = TypeVar("T")


class _Keeper:
    """Runs a renewal every `interval_s` in an asyncio task until stopped or lost."""

    def __init__(self, client: AsyncBrokerClient, renewal: Renewal) -> None:
        self._client = client
        self._renewal = renewal
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            self._loop(), name=f"ephemeral-broker keepalive of {renewal.what}"
        )
        client._keepers.add(self)

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._stop.wait(), self._renewal.interval_s)
            except TimeoutError:
                if not await self._client._run(self._renewal.tick()):
                    return
            else:
                return

    async def stop(self) -> None:
        """Stop renewing; waits for a renewal in flight, so none lands after this returns."""
        self._stop.set()
        self._client._keepers.discard(self)
        await asyncio.wait([self._task])


class AsyncBrokerClient(ClientBase):
    __doc__ = f"""An asyncio client of the broker on a Unix socket: the methods of
    `BrokerClient`, as coroutines.
    {CONNECTION_ARGS}
    Use as `async with AsyncBrokerClient() as broker:`, or call `await aclose()`.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        secret: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(socket, secret, timeout)
        self._keepers: set[_Keeper] = set()
        self._transport: httpx.AsyncBaseTransport = (
            AsyncUnixTransport(self._wire.socket) if transport is None else transport
        )
        # Our own transport is driven with bytes, without httpx's Request and Response.
        self._raw = self._transport if isinstance(self._transport, AsyncUnixTransport) else None

    # ---- execution ---------------------------------------------------------------------------

    async def _run(self, plan: Plan[T]) -> T:
        """Perform the plan's steps until it returns (as `BrokerClient._run`, with await)."""
        if self._closed:
            raise RuntimeError("this AsyncBrokerClient is closed")
        outcome: Any = None
        error: Exception | None = None
        while True:
            try:
                step = plan.send(outcome) if error is None else plan.throw(error)
            except StopIteration as done:
                result: T = done.value
                return result
            error = None
            if type(step) is Attempt:
                raw = self._raw
                if raw is None:
                    outcome = await self._send(step)
                    continue
                # Our own transport, awaited here rather than through _send: one coroutine
                # less to create and to resume on every call.
                call = step.call
                try:
                    answer = await raw.roundtrip(
                        request_head(self._wire, call), call.body, step.timeout_s
                    )
                    outcome = reply_from_raw(answer, raw.max_response_bytes)
                except httpx.RequestError as exc:
                    outcome = exc
            elif type(step) is Sleep:
                outcome = None
                await asyncio.sleep(step.seconds)
            else:
                assert isinstance(step, RunFactory)
                try:
                    outcome = await self._run_factory(step)
                except Exception as exc:
                    error = exc

    async def _send(self, attempt: Attempt) -> Reply | httpx.RequestError:
        """One attempt through an httpx transport other than our own."""
        try:
            request = build_request(self._wire, attempt.call, attempt.timeout_s)
            response = await self._transport.handle_async_request(request)
            try:
                content = await response.aread()
            finally:
                await response.aclose()
        except httpx.RequestError as exc:
            return exc
        return reply_from_response(response, content)

    async def _run_factory(self, step: RunFactory) -> Any:
        keeper = _Keeper(self, step.renewal)
        try:
            result = step.factory()
            if inspect.isawaitable(result):
                result = await result
            return result
        finally:
            await keeper.stop()

    # ---- operations (the methods made from plans are declared in ClientBase) -------------

    @staticmethod
    def _method_from(op: Callable[..., Plan[Any]]) -> Callable[..., Any]:
        @functools.wraps(op)
        async def method(self: AsyncBrokerClient, /, *args: Any, **kwargs: Any) -> Any:
            return await self._run(op(self._wire, *args, **kwargs))

        return method

    def lease(
        self,
        pool: str,
        worker_id: str | None = None,
        *,
        ttl_ms: int | None = None,
        size: int | None = None,
        wait_ms: int | None = None,
        keepalive: bool = False,
    ) -> PendingLease:
        async def acquire() -> AsyncLease:
            plan = ops.acquire(self._wire, pool, worker_id, ttl_ms, size, wait_ms)
            return AsyncLease(self, await self._run(plan), keepalive=keepalive)

        return PendingLease(acquire)

    lease.__doc__ = (ops.acquire.__doc__ or "") + (
        "\n    Either `lease = await broker.lease(...)` or `async with broker.lease(...) as "
        "lease:`.\n"
    )

    async def once(
        self,
        key: str,
        factory: Callable[[], Awaitable[Any] | Any],
        ttl_ms: int,
        *,
        lock_ttl_ms: int = ops.DEFAULT_LOCK_TTL_MS,
    ) -> Any:
        return await self._run(ops.once(self._wire, key, factory, ttl_ms, lock_ttl_ms))

    once.__doc__ = ops.once.__doc__

    # ---- lifetime ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop lease keepalives (the leases are not released) and close the connection."""
        if self._closed:
            return
        for keeper in [*self._keepers]:
            await keeper.stop()
        self._closed = True
        await self._transport.aclose()

    close = aclose

    async def __aenter__(self) -> AsyncBrokerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class PendingLease:
    """What `AsyncBrokerClient.lease()` returns: await it for the `AsyncLease`, or use it
    directly as `async with broker.lease(...) as lease:` (released on exit)."""

    def __init__(self, acquire: Callable[[], Coroutine[Any, Any, AsyncLease]]) -> None:
        self._acquire = acquire
        self._lease: AsyncLease | None = None

    def __await__(self) -> Generator[Any, None, AsyncLease]:
        return self._acquire().__await__()

    async def __aenter__(self) -> AsyncLease:
        self._lease = await self._acquire()
        return self._lease

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        assert self._lease is not None
        await self._lease.__aexit__(exc_type, *exc_info)


class AsyncLease(LeaseBase):
    """A lease held in a pool (see `LeaseBase` for its attributes), from
    `AsyncBrokerClient.lease`.

    As an async context manager it releases the lease on exit; with `keepalive=True` an
    asyncio task renews it every third of its TTL, and a lease found gone is reported (`lost`,
    and LeaseNotFound raised on leaving the `async with` block) instead of being re-acquired.
    """

    def __init__(self, client: AsyncBrokerClient, grant: LeaseGrant, *, keepalive: bool) -> None:
        super().__init__(client._wire, grant)
        self._client = client
        self._keeper = _Keeper(client, self._renewal) if keepalive else None

    async def renew(self, ttl_ms: int | None = None) -> None:
        """Restart the lease's TTL (`ttl_ms`, default its own); LeaseNotFound if not held."""
        await self._client._run(self._renew_plan(ttl_ms))

    async def release(self) -> bool:
        """Stop keepalive and release this lease; True if it was still held."""
        if self._keeper is not None:
            await self._keeper.stop()
            self._keeper = None
        return await self._client._run(self._release_plan())

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is not None:
            try:
                await self.release()
            except BrokerError as error:
                self._release_failed(error)
            return
        await self.release()
        self.raise_if_lost()
