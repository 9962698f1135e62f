"""Capacity warnings: one log line when the store crosses 90 % of max_items, one when it fills
up, and nothing more until it has dropped below 90 % again (so a store hovering at the mark
does not flood the log).

The store knows nothing of logging: it reports its item count to an observer whenever the count
changes (`MemoryStore(on_items_changed=...)`), and this observer owns the policy.
"""

from __future__ import annotations

from typing import Final

from ephemeral_broker.logs import logger

# Integer arithmetic for "items / max_items >= 0.9": no float rounding at the boundary.
NEAR_NUMERATOR: Final = 9
NEAR_DENOMINATOR: Final = 10


def is_near_capacity(items: int, max_items: int) -> bool:
    """Whether `items` is at least 90 % of `max_items` (never for an unlimited store, 0): the one
    definition behind the capacity warnings and /v1/health's `near_capacity`."""
    return max_items > 0 and items * NEAR_DENOMINATOR >= max_items * NEAR_NUMERATOR


class CapacityWatch:
    __slots__ = ("_level", "max_items")

    _BELOW: Final = 0
    _NEAR: Final = 1
    _FULL: Final = 2

    def __init__(self, max_items: int) -> None:
        if max_items <= 0:
            raise ValueError("a capacity watch needs a positive max_items")
        self.max_items = max_items
        self._level = self._BELOW

    def __call__(self, items: int) -> None:
        near = is_near_capacity(items, self.max_items)
        if not near:
            if self._level != self._BELOW:
                self._level = self._BELOW
                self._log("store is below 90% of max_items again", items, warning=False)
            return
        if self._level == self._BELOW:
            self._level = self._NEAR
            self._log("store is near capacity (90% of max_items)", items, warning=True)
        if items >= self.max_items and self._level == self._NEAR:
            self._level = self._FULL
            self._log("store is at capacity: new keys are refused (507)", items, warning=True)

    def _log(self, message: str, items: int, *, warning: bool) -> None:
        fields = {
            "items": items,
            "max_items": self.max_items,
            "utilization": round(items / self.max_items, 4),
        }
        if warning:
            logger.warning(message, extra={"fields": fields})
        else:
            logger.info(message, extra={"fields": fields})
