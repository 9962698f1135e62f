"""State lives here and nowhere else: the Store protocol and its in-memory implementation."""

from app.store.base import (
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
from app.store.memory import MemoryStore

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
