"""Checkpoints written atomically (temporary file, fsync, rename) and read with
torch.load(weights_only=True): a crash never leaves a half-written checkpoint,
and loading one never runs code."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from advprune._files import write_atomic


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """torch.save(state) to path through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: torch.save(state, tmp), durable=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint written by save_checkpoint; ValueError naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises assorted errors on a foreign or damaged file
        raise ValueError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not an advprune checkpoint (no 'model' entry)")
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
