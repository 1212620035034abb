"""Checkpoints written atomically (serialised in memory, then temporary file, fsync, rename) and read
with torch.load(weights_only=True): a crash never leaves a half-written checkpoint, a full disk is
reported before anything is written, and loading one never runs code."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from advprune._files import write_bytes_atomic


class CheckpointError(ValueError):
    """A file that is not a readable advprune checkpoint (damaged, truncated, foreign)."""


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """torch.save(state) to path: serialised in memory first (so its size is known: DiskFull, naming the
    file and the space it needs, when it cannot fit), then a temporary file in the same folder and a rename."""
    return write_checkpoint_bytes(path, checkpoint_bytes(state))


def checkpoint_bytes(state: dict) -> memoryview:
    """torch.save(state) into memory: a snapshot of the state as it is now (tensors on a GPU are copied to
    the host), which write_checkpoint_bytes can write later, on another thread."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer()


def write_checkpoint_bytes(path: str | Path, data: memoryview | bytes) -> Path:
    """The serialised checkpoint `data` written to path atomically and durably (fsync before the rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(path, data, durable=True)


def _first_line(exc: Exception, limit: int = 160) -> str:
    line = (str(exc).strip().splitlines() or [""])[0].split(". ", 1)[0]  # torch's first sentence says what failed
    return f"{type(exc).__name__}: {line[:limit]}{'...' if len(line) > limit else ''}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint written by save_checkpoint; CheckpointError (a ValueError) naming the file when it is
    not one, with the first line of what torch said."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises assorted errors on a foreign or damaged file
        raise CheckpointError(
            f"{path} is not a readable checkpoint, damaged or truncated ({_first_line(exc)})"
        ) from exc
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not an advprune checkpoint (no 'model' entry)")
    return state


def rng_state() -> dict:
    """Every random generator a CPU run draws from, in types weights_only loading accepts."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restores the generators saved by rng_state()."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    random.setstate(_literal(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _literal(text: str):
    import ast

    return ast.literal_eval(text)
