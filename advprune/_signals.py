"""SIGINT and SIGTERM as exceptions, so that the code they interrupt unwinds through its `finally` and
`except` blocks (ending its child processes there) instead of dying where it stands."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


def _raise(signum, frame):
    raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)


@contextlib.contextmanager
def signals_raise(*signums: int) -> Iterator[None]:
    """Inside, each of signums raises (SIGINT: KeyboardInterrupt, others: SystemExit(128 + signum)); the
    handlers before are restored after. Only the main thread may set handlers: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
