"""One file write at a time on a worker thread, so that a checkpoint's write to disk (hundreds of megabytes
with a perturbation memory, and an fsync) overlaps the next epoch instead of stalling it."""

from __future__ import annotations

import threading
from collections.abc import Callable


class BackgroundWrite:
    """Runs one write job at a time on a thread of its own. wait() joins the job in flight and raises its
    error, if any, in the caller's thread; start() waits for the previous job first. The thread is not a
    daemon: an interpreter that exits (an exception, Ctrl-C) still completes the write it has begun."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, job: Callable[[], object]) -> None:
        self.wait()

        def run() -> None:
            try:
                job()
            except BaseException as exc:  # handed to the caller's thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=run, name="advprune-checkpoint-write")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
