"""Long waits (waiting reads, lease waits) end with 503 draining when shutdown begins.

The store's waiting calls are cancellable and leave nothing behind when cancelled; this races
such a call against the runtime's drain event. Only requests that may wait pay for the race
(two tasks); every other request calls the store directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from ephemeral_broker.api.runtime import Runtime
from ephemeral_broker.errors import BrokerError

T = TypeVar("T")


def draining_error(what: str) -> BrokerError:
    return BrokerError("draining", f"the broker is shutting down: {what} ended without a result")


async def unless_draining(runtime: Runtime, work: Coroutine[Any, Any, T], what: str) -> T:
    """Await `work`, or cancel it and raise `draining` as soon as shutdown begins."""
    if runtime.draining:
        work.close()
        raise draining_error(what)
    task = asyncio.ensure_future(work)
    drain = asyncio.ensure_future(runtime.drain_started.wait())
    try:
        await asyncio.wait((task, drain), return_when=asyncio.FIRST_COMPLETED)
    finally:
        drain.cancel()
        if not task.done():
            task.cancel()
            # Let it unwind (a lease handed over meanwhile is released) before answering.
            await asyncio.wait((task,))
    if task.cancelled():
        raise draining_error(what)
    # A result that arrived together with the drain is still a result: answer it.
    return task.result()
