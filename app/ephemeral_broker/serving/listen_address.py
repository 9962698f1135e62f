"""`HOST:PORT` addresses for the TCP metrics listener (a leaf: the standard library only)."""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass
from typing import Final

# Loopback unless an address is given: the port is then reachable from this machine only.
DEFAULT_HOST: Final = "127.0.0.1"
_IPV6_HINT: Final = "metrics_listen {text!r}: write an IPv6 address as [ADDR]:PORT"


class MetricsListenError(ValueError):
    """`metrics_listen` is not HOST:PORT; the message names what is wrong."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen_address(text: str) -> ListenAddress:
    """`HOST:PORT`, `[IPV6]:PORT` or a bare `PORT` (then loopback). Port 0 picks a free port."""
    value = text.strip()
    if not value:
        raise MetricsListenError("metrics_listen must be HOST:PORT or PORT, not empty")
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise MetricsListenError(
                f"metrics_listen {text!r}: write an IPv6 address as [ADDR]:PORT"
            )
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    elif ":" in value:
        raise MetricsListenError(_IPV6_HINT.format(text=text))
    else:
        host, port_text = DEFAULT_HOST, value
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise MetricsListenError(f"metrics_listen {text!r}: the port must be a number 0..65535")
    host = host or DEFAULT_HOST
    if not _is_host(host):
        raise MetricsListenError(
            f"metrics_listen {text!r}: {host!r} is not an IP address or a host name"
        )
    return ListenAddress(host, int(port_text))


def _is_host(host: str) -> bool:
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return True
    labels = host.rstrip(".").split(".")
    return all(
        0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
        for label in labels
    )
