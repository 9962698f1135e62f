"""State lives here and nowhere else: the Store protocol and its in-memory implementation."""

from ephemeral_broker.store.base import (
    Item,
    ItemMeta,
    KeyInfo,
    LeaseGrant,
    LeaseInfo,
    PoolLeases,
    Precondition,
    SetResult,
    Store,
    StoreLimits,
    StoreStats,
)
from ephemeral_broker.store.memory import MemoryStore

__all__ = [
    "Item",
    "ItemMeta",
    "KeyInfo",
    "LeaseGrant",
    "LeaseInfo",
    "MemoryStore",
    "PoolLeases",
    "Precondition",
    "SetResult",
    "Store",
    "StoreLimits",
    "StoreStats",
]
