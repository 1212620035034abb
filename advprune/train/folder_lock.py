"""One process at a time in a run folder: an advisory lock (flock on the folder's run.lock) held from
the start of a run to its end. The kernel releases it when the process ends, however it ends, so the
lock of a dead process is never stale; the file stays and only says who held it last."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = "run.lock"
_held: dict[Path, list[int]] = {}  # folder -> [file descriptor, nesting count] held by this process


class RunFolderBusy(RuntimeError):
    """Another live process is running in the folder."""


def _holder(path: Path) -> str:
    """Who holds the lock, as its holder wrote it; the holder writes just after it takes the lock, so an empty
    file is read again for up to 0.5 s before the message settles for not knowing."""
    for _ in range(25):
        try:
            text = path.read_text(errors="replace")[:200].strip()
        except OSError:
            text = ""
        if text:
            return text
        time.sleep(0.02)
    return "a process that is starting"


def try_lock(path: str | Path, blocking: bool = False) -> int | None:
    """An exclusive flock on the file `path` (made if missing): its open descriptor, which holds the lock
    until closed; None when another process holds it and blocking is False."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextmanager
def held(path: str | Path, blocking: bool = False) -> Iterator[bool]:
    """try_lock for the block: yields whether this process holds the lock (always True when blocking)."""
    fd = try_lock(path, blocking)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def acquire(folder: str | Path) -> None:
    """Takes the folder's lock (nested calls of one process count); RunFolderBusy when another process has it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _held:
        _held[key][1] += 1
        return
    fd = try_lock(folder / LOCK_NAME)
    if fd is None:
        raise RunFolderBusy(
            f"{folder} is in use by another run ({_holder(folder / LOCK_NAME)}): wait for it to end, or choose "
            "another --out"
        )
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
    _held[key] = [fd, 1]


def release(folder: str | Path) -> None:
    key = Path(folder).resolve()
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        fcntl.flock(entry[0], fcntl.LOCK_UN)
        os.close(entry[0])
        del _held[key]


@contextmanager
def locked(folder: str | Path | None) -> Iterator[None]:
    """Holds the folder's lock for the block (nothing for None)."""
    if folder is None:
        yield
        return
    acquire(folder)
    try:
        yield
    finally:
        release(folder)
