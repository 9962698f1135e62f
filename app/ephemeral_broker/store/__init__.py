"""State lives here and nowhere else: the Store protocol, the in-memory store, and (imported
only when configured) the Redis store shared by brokers on several hosts."""

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
    StoreStatus,
)
from ephemeral_broker.store.memory import MemoryStore
from ephemeral_broker.store.select import close_store, open_store, store_status

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
    "StoreStatus",
    "close_store",
    "open_store",
    "store_status",
]
