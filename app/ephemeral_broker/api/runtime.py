"""Per-app runtime state that is not data: counters of requests, the drain flag, activity."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Runtime:
    version: str
    started: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    requests_total: int = 0
    draining: bool = False
    # Set when shutdown begins; long waits (waiting reads, lease waits) race against it.
    drain_started: asyncio.Event = field(default_factory=asyncio.Event)
    # Installed by the server: asks the process to shut down gracefully (idle timeout, `run`).
    request_shutdown: Callable[[str], None] | None = None
    # Installed by the server: ends the drain at once (a second signal); safe in a handler.
    force_shutdown: Callable[[], None] | None = None

    def uptime_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def begin_drain(self) -> None:
        self.draining = True
        self.drain_started.set()
