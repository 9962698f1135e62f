"""Python clients of ephemeral-broker: `BrokerClient` (blocking, thread-safe) and
`AsyncBrokerClient` (asyncio), with the same methods.

    from ephemeral_broker_client import BrokerClient

    with BrokerClient() as broker:          # socket from $EPHEMERAL_PIPE
        broker.set("db-token", {"token": "s3cr3t"}, ttl_ms=60_000)
        token = broker.get("db-token")["token"]
        with broker.lease("accounts", keepalive=True) as lease:
            use_account(lease.value)

Every failure is a `BrokerError` subclass carrying `.code`, `.status`, `.detail` and
`.request_id`.

`UnixTransport` and `AsyncUnixTransport`, the clients' own HTTP/1.1 transports, work with any
httpx client: `httpx.Client(transport=UnixTransport("/path/to.sock"))`.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ephemeral_broker_client._async import AsyncBrokerClient, AsyncLease, PendingLease
    from ephemeral_broker_client._operations import ONCE_LOCK_SUFFIX
    from ephemeral_broker_client._protocol import DEFAULT_TIMEOUT, default_worker_id
    from ephemeral_broker_client._shared import LeaseBase
    from ephemeral_broker_client._sync import BrokerClient, Lease
    from ephemeral_broker_client._transport import (
        AsyncUnixTransport,
        ResponseTooLarge,
        UnixTransport,
    )
    from ephemeral_broker_client.errors import (
        AuthFailed,
        BrokerError,
        BrokerTimeout,
        BrokerUnavailable,
        InvalidRequest,
        InvalidResponse,
        KeyNotFound,
        LeaseNotFound,
        NotModified,
        PoolExhausted,
        PreconditionFailed,
        StoreFull,
        TooLarge,
    )
    from ephemeral_broker_client.models import Item, KeyInfo, LeaseGrant

# Where each public name lives. Nothing is imported with the package itself: the pytest plugin
# (`ephemeral_broker_client.pytest_plugin`, loaded by every pytest run in an environment where this
# distribution is installed) must not cost a pytest run that does not enable it the ~0.15 s
# of httpx; and the async client loads asyncio, which the sync client and the command line do
# not need. Each name is imported on first use and then kept in the module's namespace.
_HOME = {
    "AsyncBrokerClient": "ephemeral_broker_client._async",
    "AsyncLease": "ephemeral_broker_client._async",
    "PendingLease": "ephemeral_broker_client._async",
    "ONCE_LOCK_SUFFIX": "ephemeral_broker_client._operations",
    "DEFAULT_TIMEOUT": "ephemeral_broker_client._protocol",
    "default_worker_id": "ephemeral_broker_client._protocol",
    "LeaseBase": "ephemeral_broker_client._shared",
    "BrokerClient": "ephemeral_broker_client._sync",
    "Lease": "ephemeral_broker_client._sync",
    "AsyncUnixTransport": "ephemeral_broker_client._transport",
    "ResponseTooLarge": "ephemeral_broker_client._transport",
    "UnixTransport": "ephemeral_broker_client._transport",
    "AuthFailed": "ephemeral_broker_client.errors",
    "BrokerError": "ephemeral_broker_client.errors",
    "BrokerTimeout": "ephemeral_broker_client.errors",
    "BrokerUnavailable": "ephemeral_broker_client.errors",
    "InvalidRequest": "ephemeral_broker_client.errors",
    "InvalidResponse": "ephemeral_broker_client.errors",
    "KeyNotFound": "ephemeral_broker_client.errors",
    "LeaseNotFound": "ephemeral_broker_client.errors",
    "NotModified": "ephemeral_broker_client.errors",
    "PoolExhausted": "ephemeral_broker_client.errors",
    "PreconditionFailed": "ephemeral_broker_client.errors",
    "StoreFull": "ephemeral_broker_client.errors",
    "TooLarge": "ephemeral_broker_client.errors",
    "Item": "ephemeral_broker_client.models",
    "KeyInfo": "ephemeral_broker_client.models",
    "LeaseGrant": "ephemeral_broker_client.models",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'ephemeral_broker_client' has no attribute {name!r}")
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
    "AsyncUnixTransport",
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
    "NotModified",
    "PendingLease",
    "PoolExhausted",
    "PreconditionFailed",
    "ResponseTooLarge",
    "StoreFull",
    "TooLarge",
    "UnixTransport",
    "default_worker_id",
]
