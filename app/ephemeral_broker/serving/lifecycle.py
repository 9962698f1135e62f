"""Background jobs of a serving broker: the heartbeat line and the idle timeout.

Both run for the app's lifetime through `create_app(settings, background=...)` and use the
monotonic clock of the process: they measure how long the broker has run or waited, not when
entries expire (that is the store's Clock).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Final

from fastapi import FastAPI

from ephemeral_broker.api.routes.system import rss_bytes
from ephemeral_broker.api.runtime import Runtime
from ephemeral_broker.logs import logger
from ephemeral_broker.settings import BrokerSettings
from ephemeral_broker.store import Store

if TYPE_CHECKING:
    from ephemeral_broker.api.app import BackgroundTask

# While a request is in flight the broker is not idle; look again this often. (Probes count as
# in flight for the instant they take, so a busy prober delays an idle exit by this much at most.)
_BUSY_RECHECK_SECONDS: Final = 0.25


def lifecycle_tasks(settings: BrokerSettings, *, idle: bool = True) -> tuple[BackgroundTask, ...]:
    """The jobs the settings ask for; `idle=False` leaves out the idle timeout (`run`)."""
    tasks: list[BackgroundTask] = []
    if settings.heartbeat_interval:
        interval = settings.heartbeat_interval / 1000

        async def beat(app: FastAPI) -> None:
            await heartbeat(app.state.store, app.state.runtime, interval)

        tasks.append(beat)
    if idle and settings.idle_timeout:
        timeout = settings.idle_timeout / 1000

        async def watch(app: FastAPI) -> None:
            await idle_watch(app.state.runtime, timeout)

        tasks.append(watch)
    return tuple(tasks)


async def heartbeat(store: Store, runtime: Runtime, interval: float) -> None:
    """Log one status line every `interval` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            stats = await store.stats()
            logger.info(
                "heartbeat",
                extra={
                    "fields": {
                        "items": stats.items,
                        "max_items": stats.max_items,
                        "leases": stats.leases,
                        "pools": stats.pools,
                        "in_flight": runtime.in_flight,
                        "requests_total": runtime.requests_total,
                        "uptime_ms": runtime.uptime_ms(),
                        "rss_bytes": rss_bytes(),
                        "draining": runtime.draining,
                    }
                },
            )
        except Exception:
            logger.exception("heartbeat failed; it keeps running")


def seconds_until_idle(
    last_activity: float, in_flight: int, timeout: float, now: float
) -> float | None:
    """How long to wait before looking again, or None when the broker is idle now."""
    if in_flight:
        return min(timeout, _BUSY_RECHECK_SECONDS)
    remaining = last_activity + timeout - now
    return remaining if remaining > 0 else None


async def idle_watch(runtime: Runtime, idle_seconds: float) -> None:
    """Ask for a graceful shutdown once no request (probes aside) came for `idle_seconds`."""
    while True:
        wait = seconds_until_idle(
            runtime.last_activity, runtime.in_flight, idle_seconds, time.monotonic()
        )
        if wait is None:
            break
        # A deadline that moves with every request, read from the runtime when it comes due:
        # one sleep per idle period, no per-request wake-ups.
        await asyncio.sleep(wait)
    idle_ms = round((time.monotonic() - runtime.last_activity) * 1000)
    if runtime.request_shutdown is None:
        # An app served by something other than server.py (tests over ASGI): nothing to stop.
        logger.warning("idle timeout reached, but no server to stop")
        return
    logger.info("idle timeout reached", extra={"fields": {"idle_ms": idle_ms}})
    runtime.request_shutdown("idle timeout")
