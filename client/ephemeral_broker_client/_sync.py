"""`BrokerClient`: the operations of `_operations` executed with blocking I/O."""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from collections.abc import Callable
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
from ephemeral_broker_client._transport import UnixTransport
from ephemeral_broker_client.errors import BrokerError
from ephemeral_broker_client.models import LeaseGrant

T = TypeVar("T")


class _Keeper:
    """Runs a renewal every `interval_s` on a daemon thread until stopped or lost."""

    def __init__(self, client: BrokerClient, renewal: Renewal) -> None:
        self._client = client
        self._renewal = renewal
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"ephemeral-broker keepalive of {renewal.what}", daemon=True
        )
        client._keepers.add(self)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._renewal.interval_s):
            if not self._client._run(self._renewal.tick()):
                return

    def stop(self) -> None:
        """Stop renewing; waits for a renewal in flight, so none lands after this returns."""
        self._stop.set()
        self._client._keepers.discard(self)
        if self._thread is not threading.current_thread():
            self._thread.join()


# Every client, to forget its keepalive threads in a forked child: they do not exist there.
# (The transport itself gives the child a fresh connection pool.)
_CLIENTS: weakref.WeakSet[BrokerClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._keepers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class BrokerClient(ClientBase):
    __doc__ = f"""A blocking client of the broker on a Unix socket; thread-safe.
    {CONNECTION_ARGS}
    Connections are kept alive and pooled (`UnixTransport`). Use as a context manager, or call
    `close()`.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        secret: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(socket, secret, timeout)
        self._keepers: set[_Keeper] = set()
        _CLIENTS.add(self)
        self._transport: httpx.BaseTransport = (
            UnixTransport(self._wire.socket) if transport is None else transport
        )
        # Our own transport is driven with bytes, without httpx's Request and Response.
        self._raw = self._transport if isinstance(self._transport, UnixTransport) else None

    # ---- execution ---------------------------------------------------------------------------

    def _run(self, plan: Plan[T]) -> T:
        """Perform the plan's steps until it returns. (The loop is written out rather than
        shared with the async client: on a call that costs tens of microseconds in all, a
        helper object's method calls per step show.)"""
        if self._closed:
            raise RuntimeError("this BrokerClient is closed")
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
                outcome = self._send(step)
            elif type(step) is Sleep:
                outcome = None
                time.sleep(step.seconds)
            else:
                assert isinstance(step, RunFactory)
                try:
                    outcome = self._run_factory(step)
                except Exception as exc:
                    error = exc

    def _send(self, attempt: Attempt) -> Reply | httpx.RequestError:
        call, timeout = attempt.call, attempt.timeout_s
        raw = self._raw
        try:
            if raw is not None:
                answer = raw.roundtrip(request_head(self._wire, call), call.body, timeout)
                return reply_from_raw(answer, raw.max_response_bytes)
            response = self._transport.handle_request(build_request(self._wire, call, timeout))
            try:
                content = response.read()
            finally:
                response.close()
        except httpx.RequestError as exc:
            return exc
        return reply_from_response(response, content)

    def _run_factory(self, step: RunFactory) -> Any:
        keeper = _Keeper(self, step.renewal)
        try:
            return step.factory()
        finally:
            keeper.stop()

    # ---- operations (the methods made from plans are declared in ClientBase) -------------

    @staticmethod
    def _method_from(op: Callable[..., Plan[Any]]) -> Callable[..., Any]:
        @functools.wraps(op)
        def method(self: BrokerClient, /, *args: Any, **kwargs: Any) -> Any:
            return self._run(op(self._wire, *args, **kwargs))

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
    ) -> Lease:
        grant = self._run(ops.acquire(self._wire, pool, worker_id, ttl_ms, size, wait_ms))
        return Lease(self, grant, keepalive=keepalive)

    lease.__doc__ = ops.acquire.__doc__

    def once(
        self,
        key: str,
        factory: Callable[[], Any],
        ttl_ms: int,
        *,
        lock_ttl_ms: int = ops.DEFAULT_LOCK_TTL_MS,
    ) -> Any:
        return self._run(ops.once(self._wire, key, factory, ttl_ms, lock_ttl_ms))

    once.__doc__ = ops.once.__doc__

    # ---- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop lease keepalives (the leases are not released) and close the connection."""
        if self._closed:
            return
        for keeper in [*self._keepers]:
            keeper.stop()
        self._closed = True
        self._transport.close()

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Lease(LeaseBase):
    """A lease held in a pool (see `LeaseBase` for its attributes), from `BrokerClient.lease`.

    As a context manager it releases the lease on exit; with `keepalive=True` a background
    thread renews it every third of its TTL, and a lease found gone is reported (`lost`, and
    LeaseNotFound raised on leaving the `with` block) instead of being re-acquired.
    """

    def __init__(self, client: BrokerClient, grant: LeaseGrant, *, keepalive: bool) -> None:
        super().__init__(client._wire, grant)
        self._client = client
        self._keeper = _Keeper(client, self._renewal) if keepalive else None

    def renew(self, ttl_ms: int | None = None) -> None:
        """Restart the lease's TTL (`ttl_ms`, default its own); LeaseNotFound if not held."""
        self._client._run(self._renew_plan(ttl_ms))

    def release(self) -> bool:
        """Stop keepalive and release this lease; True if it was still held."""
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None
        return self._client._run(self._release_plan())

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is not None:
            try:
                self.release()
            except BrokerError as error:
                self._release_failed(error)
            return
        self.release()
        self.raise_if_lost()
