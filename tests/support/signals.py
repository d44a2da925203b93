"""Signal handlers under test: installed for a block, and checked to take no lock."""

from __future__ import annotations

import faulthandler
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextmanager
def own_handlers() -> Iterator[None]:
    """Whatever the block installs for SIGTERM, SIGINT, SIGHUP and SIGUSR1 (faulthandler)
    is undone at its end, so pytest's own handlers come back."""
    previous = {signum: signal.getsignal(signum) for signum in _HANDLED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        faulthandler.unregister(signal.SIGUSR1)


def sigterm_inside_set(stop: threading.Event) -> bool:
    """Raise SIGTERM while this (the main) thread holds ``stop``'s lock, as it does inside
    ``stop.set()`` (CPython's Event keeps the lock in ``_cond``). True when the handler
    returned without waiting for the lock; False when it waited, and a watchdog had to free
    the lock after 2 s so the test could end."""
    held = stop._cond  # type: ignore[attr-defined]
    held.acquire()
    rescued = threading.Event()

    def rescue() -> None:
        rescued.set()
        held.release()

    watchdog = threading.Timer(2.0, rescue)
    watchdog.start()
    signal.raise_signal(signal.SIGTERM)
    watchdog.cancel()
    if rescued.is_set():
        return False
    held.release()
    return True
