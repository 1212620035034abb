"""PrunedSampler for any torch DataLoader, and selections saved as .npy index files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler

from advprune._files import write_atomic
from advprune.data.subset import as_indices, epoch_generator


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
        self.indices = as_indices(indices, num_samples)

    def set_indices(self, indices: object) -> None:
        self.indices = as_indices(indices, self.num_samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=epoch_generator(self.seed, self.epoch))]
        self.epoch += 1
        return iter(order.tolist())


def save_indices(path: str | Path, indices: object) -> Path:
    """Writes kept ids as an int64 .npy file, atomically (temporary file + rename)."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"an index file must end in .npy, got {path.name}")
    ids = as_indices(indices, None).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: np.save(tmp, ids))


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
        return as_indices(ids, num_samples)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
