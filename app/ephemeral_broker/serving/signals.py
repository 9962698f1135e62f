"""The process's one handler for SIGINT and SIGTERM, shared by every broker started in it.

A process may start and stop many brokers (a test run does); installing a handler per broker
would leak handlers and chain them. One dispatcher is installed at most once and forwards
each signal to the brokers subscribed now.
"""

import contextlib
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

HANDLED_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


class SignalDispatcher:
    """The process's one handler for SIGINT and SIGTERM (defects 3, 4 and 16 of the design notes).

    It is installed at most once per process, however many brokers start and stop in it, and
    forwards each signal to whoever is subscribed now. With nobody subscribed, it behaves as
    the handler it replaced (Ctrl-C still raises KeyboardInterrupt in a test process).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Callable[[int], None]] = []
        self._previous: dict[int, Any] = {}
        self.installations = 0

    @property
    def installed(self) -> bool:
        return self.installations > 0

    def install(self) -> None:
        with self._lock:
            if self.installations or threading.current_thread() is not threading.main_thread():
                return
            for sig in HANDLED_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._dispatch)
            self.installations += 1

    def subscribe(self, listener: Callable[[int], None]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    @property
    def listener_count(self) -> int:
        return len(self._listeners)

    def _dispatch(self, signum: int, frame: FrameType | None) -> None:
        # No lock here: the handler runs on the main thread, which may hold the lock already.
        listeners = list(self._listeners)
        if listeners:
            for listener in listeners:
                listener(signum)
            return
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            # The default action (end the process by this signal), exactly as if we had never
            # installed anything: the parent sees "killed by SIGTERM", not an exit code.
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)


SIGNALS = SignalDispatcher()
