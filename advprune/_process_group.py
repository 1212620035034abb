"""Running work whose helper processes must not outlive the caller: ffcv's .beton writer starts worker
processes and multiprocessing's resource tracker (which holds /dev/shm segments), and a plain kill of
the caller would leave them running.

run_in_group(work, *args) runs work(*args) in a forked child that leads its own process group, so
that it and everything it starts can be ended together: on SIGINT or SIGTERM here the group gets
SIGTERM; if this process is killed outright (SIGKILL), a watchdog thread in the child sees the pipe
from this process close and sends the group SIGTERM itself. multiprocessing's resource tracker ignores
SIGTERM, outlives the others, and unlinks the shared memory they registered. `cleanup` (a temporary
file) is removed in every case.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from advprune._signals import signals_raise


class GroupFailed(RuntimeError):
    """The work raised in the child process; the message is its error."""


def _end_group(pgid: int, cleanup: Path | None) -> None:
    if cleanup is not None:
        cleanup.unlink(missing_ok=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)


def _watch_parent(alive_fd: int, cleanup: Path | None) -> None:
    """In the child: the read returns when the parent's end of the pipe closes, i.e. when it died."""
    os.read(alive_fd, 1)
    _end_group(os.getpgrp(), cleanup)


def _child(work: Callable, args: tuple, alive_fd: int, parent_end: int, errors, cleanup: Path | None) -> None:
    os.setpgid(0, 0)
    os.close(parent_end)
    threading.Thread(target=_watch_parent, args=(alive_fd, cleanup), daemon=True).start()
    try:
        work(*args)
    except BaseException as exc:
        errors.send(f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from None


def run_in_group(work: Callable, *args, cleanup: Path | None = None) -> None:
    """work(*args) in a child process group that ends with this process; GroupFailed when it fails."""
    context = multiprocessing.get_context("fork")
    alive_fd, parent_end = os.pipe()
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(work, args, alive_fd, parent_end, send, cleanup))
    child.start()
    os.close(alive_fd)
    while child.is_alive() and os.getpgid(child.pid) != child.pid:  # the child's setpgid, before any signal
        time.sleep(0.001)

    try:
        with signals_raise(signal.SIGINT, signal.SIGTERM):
            try:
                child.join()
            except BaseException:  # a signal here: the group ends with this process
                _end_group(child.pid, cleanup)
                child.join()
                raise
    finally:
        os.close(parent_end)
    if child.exitcode != 0:
        if cleanup is not None:
            cleanup.unlink(missing_ok=True)
        reason = receive.recv() if receive.poll() else f"exit code {child.exitcode}"
        raise GroupFailed(reason)
