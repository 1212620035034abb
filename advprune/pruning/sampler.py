"""PrunedSampler for any torch DataLoader, and selections saved as .npy index files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler

from advprune.data.subset import as_indices


class PrunedSampler(Sampler[int]):
    """Yields the kept sample ids (a new order each epoch when shuffle=True, from (seed, epoch)).

    set_indices(ids) changes the subset from the next epoch on; len() follows it. Call
    set_epoch(e) to reproduce an epoch's order after a resume (each iteration advances it).
    """

    def __init__(self, indices: object, shuffle: bool = True, seed: int = 0, num_samples: int | None = None) -> None:
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.indices = self._checked(indices)

    def _checked(self, indices: object) -> torch.Tensor:
        limit = self.num_samples if self.num_samples is not None else 2**62
        return as_indices(indices, limit)

    def set_indices(self, indices: object) -> None:
        self.indices = self._checked(indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        order = self.indices
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = order[torch.randperm(len(order), generator=generator)]
        self.epoch += 1
        return iter(order.tolist())


def save_indices(path: str | Path, indices: object) -> Path:
    """Writes kept ids as an int64 .npy file, atomically (temporary file + rename)."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"an index file must end in .npy, got {path.name}")
    ids = as_indices(indices, 2**62).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npy")
    try:
        np.save(tmp, ids)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_indices(path: str | Path, num_samples: int | None = None) -> torch.Tensor:
    """Kept ids from a .npy file; ValueError when they are not distinct ids in [0, num_samples)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no index file at {path}")
    try:
        ids = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{path} is not a .npy array of sample ids ({exc})") from None
    try:
        return as_indices(ids, num_samples if num_samples is not None else 2**62)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
