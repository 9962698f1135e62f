"""Key watchers: what lets a waiting GET park until its key is written, at no cost meanwhile.

Every watched key has one shared future. A waiter awaits it (with `asyncio.wait`, which never
cancels what it waits for) and a write of the key resolves it, waking every waiter of that key
in one step; the key's next waiters get a fresh future. Nothing polls: a parked waiter is a
callback on a future plus a timer for its deadline. The store calls `notify` on every write of
a value, and only pays a dict lookup for it while some key is watched.
"""

from __future__ import annotations

import asyncio


class _Watch:
    __slots__ = ("future", "waiters")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.waiters = 0


class KeyWatchers:
    def __init__(self) -> None:
        self._watches: dict[str, _Watch] = {}

    def __bool__(self) -> bool:
        return bool(self._watches)

    @property
    def waiting(self) -> int:
        """Waiters parked on any key right now (tests and stats)."""
        return sum(watch.waiters for watch in self._watches.values())

    def notify(self, key: str) -> None:
        """`key` was written: wake all its waiters."""
        watch = self._watches.pop(key, None)
        if watch is not None and not watch.future.done():
            watch.future.set_result(None)

    def notify_all(self) -> None:
        """Wake every waiter of every key (they look again; a Redis store does this after its
        subscription was down, since writes published meanwhile were lost)."""
        watches, self._watches = self._watches, {}
        for watch in watches.values():
            if not watch.future.done():
                watch.future.set_result(None)

    async def wait(self, key: str, timeout_s: float) -> bool:
        """Park until `key` is written (True) or `timeout_s` passes (False)."""
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = _Watch(asyncio.get_running_loop().create_future())
        watch.waiters += 1
        try:
            done, _ = await asyncio.wait((watch.future,), timeout=timeout_s)
            return bool(done)
        finally:
            watch.waiters -= 1
            if not watch.waiters and self._watches.get(key) is watch:
                del self._watches[key]  # the last waiter left unwoken: nobody watches any more
