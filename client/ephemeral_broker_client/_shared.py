"""What the sync and async clients share beyond the operations: the one list of methods made
from the operations, the state common to both clients, and the read-only face of a lease."""

from __future__ import annotations

import inspect
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from types import MethodType
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from ephemeral_broker_client import _operations as ops
from ephemeral_broker_client._protocol import Plan, Wire, logger, resolve_wire
from ephemeral_broker_client._typing import AsyncioClient, BlockingClient
from ephemeral_broker_client.errors import BrokerError
from ephemeral_broker_client.models import LeaseGrant

P = ParamSpec("P")
T = TypeVar("T")


def method_signature(op: Callable[..., Any]) -> inspect.Signature:
    """The signature `help()` shows for a client method made from `op`: `self` in place of the
    wire, and `T` in place of `Plan[T]` as the return annotation."""
    signature = inspect.signature(op)
    params = list(signature.parameters.values())
    returns = signature.return_annotation
    if isinstance(returns, str) and returns.startswith("Plan[") and returns.endswith("]"):
        returns = returns[len("Plan[") : -1]
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    return signature.replace(parameters=[self_param, *params[1:]], return_annotation=returns)


class Operation(Generic[P, T]):
    """A client method made from an operation of `_operations`, declared once for both
    clients: on a `BrokerClient` it is a blocking method returning T, on an
    `AsyncBrokerClient` a coroutine method. Each client class turns the operation into its
    kind of function once (`_method_from`); an instance gets it bound like any method."""

    def __init__(self, op: Callable[Concatenate[Wire, P], Plan[T]]) -> None:
        self.op = op
        self.name = op.__name__
        self._functions: dict[type, Callable[..., Any]] = {}

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> Operation[P, T]: ...
    @overload
    def __get__(
        self, instance: BlockingClient, owner: type[Any] | None = None
    ) -> Callable[P, T]: ...
    @overload
    def __get__(
        self, instance: AsyncioClient, owner: type[Any] | None = None
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any:
        function = self.function_for(owner if owner is not None else type(instance))
        return function if instance is None else MethodType(function, instance)

    def function_for(self, cls: type[Any]) -> Callable[..., Any]:
        """The operation as a plain function of client class `cls` (made once)."""
        function = self._functions.get(cls)
        if function is None:
            function = cls._method_from(self.op)
            function.__signature__ = method_signature(self.op)
            function.__qualname__ = f"{cls.__qualname__}.{self.name}"
            self._functions[cls] = function
        return function


CONNECTION_ARGS = """
    Args:
        socket: the broker's socket path; defaults to `$EPHEMERAL_PIPE`. With neither,
            BrokerUnavailable is raised at once.
        secret: the shared secret; defaults to `$EPHEMERAL_SECRET`. When set, every request
            is signed (HMAC-SHA256 over the request target and body).
        timeout: seconds one call may take, all connection retries included: a broker that
            is still starting is reached as soon as it listens, and no call takes longer.
        transport: any httpx transport to use instead of the client's own `UnixTransport`
            (`AsyncUnixTransport`): `httpx.HTTPTransport(uds=...)`, a `MockTransport` …
"""


class ClientBase(ABC):
    """The state and the methods both clients have; subclasses execute the plans."""

    def __init__(
        self, socket: str | os.PathLike[str] | None, secret: str | None, timeout: float
    ) -> None:
        self._wire = resolve_wire(socket, secret, timeout)
        self._closed = False

    @property
    def socket(self) -> str:
        """The broker's socket path."""
        return self._wire.socket

    @property
    def timeout(self) -> float:
        """Seconds one call may take, all retries included."""
        return self._wire.timeout

    def __repr__(self) -> str:
        auth = "signed" if self._wire.secret else "unsigned"
        return (
            f"<{type(self).__name__} socket={self._wire.socket!r} {auth} "
            f"timeout={self._wire.timeout:g}>"
        )

    @staticmethod
    @abstractmethod
    def _method_from(op: Callable[..., Plan[Any]]) -> Callable[..., Any]:
        """The client's kind of method (blocking or coroutine) that executes `op`'s plan."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls._method_from, "__isabstractmethod__", False):
            return
        # Each operation becomes a plain function of the client class: `client.get` is then
        # an ordinary method look-up, not a call of the descriptor's __get__ in Python on
        # every call (the descriptor stays on ClientBase for the type checker and for help()).
        for name in dir(ClientBase):
            operation = ClientBase.__dict__.get(name)
            if isinstance(operation, Operation):
                setattr(cls, name, operation.function_for(cls))

    set = Operation(ops.set)
    get = Operation(ops.get)
    get_item = Operation(ops.get_item)
    delete = Operation(ops.delete)
    list = Operation(ops.list)
    incr = Operation(ops.incr)
    touch = Operation(ops.touch)
    renew_lease = Operation(ops.renew)
    release = Operation(ops.release)
    release_all = Operation(ops.release_all)
    ping = Operation(ops.ping)
    health = Operation(ops.health)
    stats = Operation(ops.stats)
    metrics = Operation(ops.metrics)


class LeaseBase:
    """A lease held in a pool: the read-only face shared by `Lease` and `AsyncLease`.

    Attributes:
        pool: the pool's name.
        worker_id: the worker that holds it.
        value: the integer handed out: the lowest one free in the pool when granted.
        token: the fencing token, a broker-wide counter that grows with every grant.
        expires_at: when it lapses unless renewed, Unix epoch milliseconds.
        ttl_ms: the TTL each renewal restarts.
        lost: None while the lease is believed held; the error with which background
            renewal (keepalive) found it gone. A lost lease is never re-acquired silently.
    """

    def __init__(self, wire: Wire, grant: LeaseGrant) -> None:
        self._renewal = ops.LeaseRenewal(wire, grant)
        self._released = False

    @property
    def pool(self) -> str:
        return self._renewal.grant.pool

    @property
    def worker_id(self) -> str:
        return self._renewal.grant.worker_id

    @property
    def value(self) -> int:
        return self._renewal.grant.value

    @property
    def token(self) -> int:
        return self._renewal.grant.token

    @property
    def expires_at(self) -> int:
        return self._renewal.grant.expires_at

    @property
    def ttl_ms(self) -> int:
        return self._renewal.grant.ttl_ms

    @property
    def lost(self) -> BrokerError | None:
        return self._renewal.lost

    def raise_if_lost(self) -> None:
        """Raise the error that showed the lease gone (LeaseNotFound), if keepalive saw one."""
        if self._renewal.lost is not None:
            raise self._renewal.lost

    def _release_failed(self, error: BrokerError) -> None:
        # Leaving a `with` block that raised: the body's exception is the one to see. The
        # lease lapses at its TTL anyway.
        logger.warning(
            "could not release %s while leaving a failed block: %s", self._renewal.what, error
        )

    def _renew_plan(self, ttl_ms: int | None) -> Plan[None]:
        return self._renewal.renew_now(ttl_ms)

    def _release_plan(self) -> Plan[bool]:
        self._released = True
        return ops.release_lease(self._renewal)

    def __repr__(self) -> str:
        state = "released" if self._released else "lost" if self.lost else "held"
        return (
            f"<{type(self).__name__} pool={self.pool!r} worker_id={self.worker_id!r} "
            f"value={self.value} token={self.token} {state}>"
        )
