"""Writing files atomically: into a temporary file in the same folder, then a rename, so
that a crash or an error never leaves a half-written checkpoint, .beton, score or index file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | Path, write: Callable[[Path], object], *, durable: bool = False) -> Path:
    """Calls write(tmp) on a temporary path beside `path` (same suffix), then renames it to `path`;
    the temporary file is removed if anything fails. durable=True fsyncs it before the rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
