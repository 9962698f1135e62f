"""Python clients of ephemeral-broker: `BrokerClient` (blocking, thread-safe) and
`AsyncBrokerClient` (asyncio), with the same methods.

    from client import BrokerClient

    with BrokerClient() as broker:          # socket from $EPHEMERAL_PIPE
        broker.set("db-token", {"token": "s3cr3t"}, ttl_ms=60_000)
        token = broker.get("db-token")["token"]
        with broker.lease("accounts", keepalive=True) as lease:
            use_account(lease.value)

Every failure is a `BrokerError` subclass carrying `.code`, `.status`, `.detail` and
`.request_id`.
"""

from typing import TYPE_CHECKING, Any

from client._operations import ONCE_LOCK_SUFFIX
from client._protocol import DEFAULT_TIMEOUT, default_worker_id
from client._shared import LeaseBase
from client._sync import BrokerClient, Lease
from client.errors import (
    AuthFailed,
    BrokerError,
    BrokerTimeout,
    BrokerUnavailable,
    InvalidRequest,
    InvalidResponse,
    KeyNotFound,
    LeaseNotFound,
    PoolExhausted,
    PreconditionFailed,
    StoreFull,
    TooLarge,
)
from client.models import Item, KeyInfo, LeaseGrant

if TYPE_CHECKING:
    from client._async import AsyncBrokerClient, AsyncLease, PendingLease

_ASYNC_NAMES = frozenset({"AsyncBrokerClient", "AsyncLease", "PendingLease"})


def __getattr__(name: str) -> Any:
    # The async client loads asyncio (~0.1 s): only when it is asked for, so that the sync
    # client and the command line start fast.
    if name in _ASYNC_NAMES:
        from client import _async  # noqa: PLC0415 - loaded on first use, see above

        return getattr(_async, name)
    raise AttributeError(f"module 'client' has no attribute {name!r}")


__all__ = [
    "DEFAULT_TIMEOUT",
    "ONCE_LOCK_SUFFIX",
    "AsyncBrokerClient",
    "AsyncLease",
    "AuthFailed",
    "BrokerClient",
    "BrokerError",
    "BrokerTimeout",
    "BrokerUnavailable",
    "InvalidRequest",
    "InvalidResponse",
    "Item",
    "KeyInfo",
    "KeyNotFound",
    "Lease",
    "LeaseBase",
    "LeaseGrant",
    "LeaseNotFound",
    "PendingLease",
    "PoolExhausted",
    "PreconditionFailed",
    "StoreFull",
    "TooLarge",
    "default_worker_id",
]
