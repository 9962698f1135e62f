"""How many connections the broker may hold: max_connections fitted to the open-file limit."""

from typing import Final

from ephemeral_broker.logs import logger
from ephemeral_broker.serving.protocol import (
    MAX_HEAD_BYTES,
    ConnectionLimits,
)
from ephemeral_broker.settings import (
    BrokerSettings,
)

# File descriptors kept free beyond max_connections: the listening sockets, the event loop,
# log files, /proc reads, the metrics listener's connections.
FD_RESERVE: Final = 64


def connection_limits(settings: BrokerSettings) -> ConnectionLimits:
    """The settings' connection limits, with max_connections fitted to the open-file limit."""
    limits = ConnectionLimits(
        keep_alive=settings.keep_alive_timeout / 1000,
        head_timeout=settings.head_timeout / 1000,
        body_timeout=settings.body_timeout / 1000,
        max_connections=settings.max_connections,
        max_head_bytes=MAX_HEAD_BYTES,
    )
    available = _raise_open_file_limit(settings.max_connections + FD_RESERVE) - FD_RESERVE
    if available < limits.max_connections:
        logger.warning(
            "max_connections lowered to fit the open-file limit (ulimit -n)",
            extra={
                "fields": {
                    "max_connections": max(1, available),
                    "configured": settings.max_connections,
                }
            },
        )
        limits.max_connections = max(1, available)
    return limits


def _raise_open_file_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (never above the hard limit); returns it."""
    try:
        import resource
    except ImportError:  # not POSIX
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target
