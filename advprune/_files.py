"""Writing files atomically: into a temporary file in the same folder, then a rename, so that a crash
or an error never leaves a half-written checkpoint, .beton, score or index file. A full disk is
reported as such (DiskFull: the file, what it needs, what is free), and the temporary files that a
killed process leaves behind can be found and removed."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from advprune._warn import warn

_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)(\.[^.]*)?$")  # .{stem}.tmp-{pid}{suffix}, as temporary_path names them


class DiskFull(OSError):
    """No space left on the device for a file; the message names the file and the space it needs."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _megabytes(count: int) -> str:
    return f"{count / 2**20:.1f} MB"


def disk_full(path: Path, needed: int | None) -> DiskFull:
    """The DiskFull error for writing `path`: where, how much it needs (when known), how much is free."""
    free = shutil.disk_usage(path.parent).free
    need = f"it needs {_megabytes(needed)} and " if needed else ""
    return DiskFull(f"no space left on the device holding {path}: {need}{_megabytes(free)} are free")


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def write_atomic(
    path: str | Path, write: Callable[[Path], object], *, durable: bool = False, size: int | None = None
) -> Path:
    """Calls write(tmp) on a temporary path beside `path` (same suffix), then renames it to `path`;
    the temporary file is removed if anything fails, and a failure on a full disk raises DiskFull
    (writers such as torch.save report it as an iostream error). durable=True fsyncs before the rename;
    size, when known, goes into the DiskFull message."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(exc, DiskFull):
            raise disk_full(path, size) from None
        raise
    except Exception:
        if shutil.disk_usage(path.parent).free < (size or 2**20):  # a writer's own error for a full disk
            raise disk_full(path, size) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def ensure_room(path: Path, size: int) -> None:
    """DiskFull, before anything is written, when `size` bytes cannot fit on the device of path's folder."""
    if shutil.disk_usage(path.parent).free < size:
        raise disk_full(path, size)


def write_bytes_atomic(path: str | Path, data: bytes | memoryview, *, durable: bool = False) -> Path:
    """write_atomic of bytes whose size is known: DiskFull before anything is written when they cannot fit."""
    path = Path(path)
    ensure_room(path, len(data))
    return write_atomic(path, lambda tmp: tmp.write_bytes(data), durable=durable, size=len(data))


def temporaries(folder: str | Path) -> list[tuple[Path, int]]:
    """The temporary files of write_atomic in `folder`, with the process id that wrote each (a file whose
    process is gone was left by a kill during a write)."""
    found = []
    for entry in Path(folder).iterdir() if Path(folder).is_dir() else ():
        match = _TEMPORARY.match(entry.name)
        if match and entry.is_file():
            found.append((entry, int(match.group(1))))
    return sorted(found)


def readable_records(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file (a metrics log, a sweep's results), one a line; an unreadable line
    is dropped with a warning naming the file and the line."""
    records = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            record = json.loads(raw.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:  # JSON and UTF-8 errors alike
            warn(f"{path}:{number}: dropped an unreadable line (a write cut short, or damage): {raw[:60]!r}")
            continue
        records.append(record)
    return records
