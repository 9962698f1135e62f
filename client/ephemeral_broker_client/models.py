"""Plain records the clients return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One entry of `list()`: never the value, only its metadata.

    Attributes:
        key: the key.
        version: the broker-wide write counter at the key's last write (its ETag).
        expires_at: when it expires, Unix epoch milliseconds.
        size: bytes of the value's canonical JSON.
    """

    key: str
    version: int
    expires_at: int
    size: int


@dataclass(frozen=True, slots=True)
class Item:
    """A key's value with its metadata, as `get_item()` returns it.

    Attributes:
        key: the key.
        value: the stored JSON value, decoded.
        version: the broker-wide write counter at the key's last write; pass it as
            `set(..., if_version=item.version)` for a compare-and-set.
        expires_at: when it expires, Unix epoch milliseconds.
    """

    key: str
    value: Any
    version: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """What the broker answered to a lease request or renewal."""

    pool: str
    worker_id: str
    value: int
    token: int
    expires_at: int
    ttl_ms: int
