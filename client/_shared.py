"""What the sync and async clients share beyond the operations: method signatures taken from
the operations, and the state and read-only face of a lease."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from client import _operations as ops
from client._protocol import Plan, Wire
from client.errors import BrokerError
from client.models import LeaseGrant


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
