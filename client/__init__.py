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

if TYPE_CHECKING:
    from client._async import AsyncBrokerClient, AsyncLease, PendingLease
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

# Where each public name lives. Nothing is imported with the package itself: the pytest plugin
# (`client.pytest_plugin`, loaded by every pytest run in an environment where this
# distribution is installed) must not cost a pytest run that does not enable it the ~0.15 s
# of httpx; and the async client loads asyncio, which the sync client and the command line do
# not need. Each name is imported on first use and then kept in the module's namespace.
_HOME = {
    "AsyncBrokerClient": "client._async",
    "AsyncLease": "client._async",
    "PendingLease": "client._async",
    "ONCE_LOCK_SUFFIX": "client._operations",
    "DEFAULT_TIMEOUT": "client._protocol",
    "default_worker_id": "client._protocol",
    "LeaseBase": "client._shared",
    "BrokerClient": "client._sync",
    "Lease": "client._sync",
    "AuthFailed": "client.errors",
    "BrokerError": "client.errors",
    "BrokerTimeout": "client.errors",
    "BrokerUnavailable": "client.errors",
    "InvalidRequest": "client.errors",
    "InvalidResponse": "client.errors",
    "KeyNotFound": "client.errors",
    "LeaseNotFound": "client.errors",
    "PoolExhausted": "client.errors",
    "PreconditionFailed": "client.errors",
    "StoreFull": "client.errors",
    "TooLarge": "client.errors",
    "Item": "client.models",
    "KeyInfo": "client.models",
    "LeaseGrant": "client.models",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'client' has no attribute {name!r}")
    import importlib  # noqa: PLC0415 - loaded on first use, see above

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


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
