"""Graceful stop for the long-running commands: SIGTERM / SIGINT finish the batch in hand, write,
snapshot, mark the run interrupted and exit 0; a second signal stops at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class StopRequest:
    """What `stop_on_signals` yields: whether (and by which signal) a stop was asked for."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None


@contextmanager
def stop_on_signals(stop: Callable[[], None], signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
                    ) -> Iterator[StopRequest]:
    """Call `stop()` on the first SIGTERM/SIGINT; raise KeyboardInterrupt on the second. A no-op off
    the main thread (signal handlers can only be installed there)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, _frame):
        if request.requested:
            raise KeyboardInterrupt
        request.signal = signum
        stop()

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
