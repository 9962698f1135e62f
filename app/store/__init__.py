"""State lives here and nowhere else: the Store protocol and its in-memory implementation."""

from app.store.base import (
    Item,
    ItemMeta,
    KeyInfo,
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
    "MemoryStore",
    "Precondition",
    "SetResult",
    "Store",
    "StoreLimits",
    "StoreStats",
]
