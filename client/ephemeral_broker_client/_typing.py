"""Marker protocols for the two clients (as redis-py's `redis/typing.py`).

Shared code (`_shared.Operation`) types a method differently on the blocking and the asyncio
client. Naming the client classes there would import `_sync` and `_async`, which import the
shared code: a cycle. These protocols name each kind by what only it has, `close()` or
`aclose()`, and import nothing of the package.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol


class BlockingClient(Protocol):
    """A client whose methods block: `BrokerClient`."""

    def close(self) -> None: ...


class AsyncioClient(Protocol):
    """A client whose methods are coroutines: `AsyncBrokerClient`."""

    def aclose(self) -> Coroutine[Any, Any, None]: ...
