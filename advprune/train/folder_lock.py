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


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 200).decode(errors="replace").strip()
    return text or "a process that is starting"


def acquire(folder: str | Path) -> None:
    """Takes the folder's lock (nested calls of one process count); RunFolderBusy when another process has it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _held:
        _held[key][1] += 1
        return
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunFolderBusy(
            f"{folder} is in use by another run ({holder}): wait for it to end, or choose another --out"
        ) from None
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
