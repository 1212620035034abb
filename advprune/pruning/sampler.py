"""PrunedSampler for any torch DataLoader (and PrunerSampler, driven by a pruner), and selections
saved as .npy index files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Sampler

from advprune._files import write_atomic
from advprune.ids import as_indices, epoch_generator, shard_length, shard_order

if TYPE_CHECKING:
    from advprune.pruning.protocol import Pruner


class PrunedSampler(Sampler[int]):
    """Yields the kept sample ids (a new order each epoch when shuffle=True, from (seed, epoch)).

    set_indices(ids) changes the subset from the next epoch on; len() follows it. Call
    set_epoch(e) to reproduce an epoch's order after a resume (each iteration advances it).
    Under torch.distributed, set_shard(rank, world, batch_size) serves this rank's share of the
    one order all ranks draw (ids.shard_order: equal shares, a few ids repeated to even them).
    """

    def __init__(self, indices: object, shuffle: bool = True, seed: int = 0, num_samples: int | None = None) -> None:
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.rank, self.world, self.batch_size = 0, 1, 1
        self.indices = as_indices(indices, num_samples)

    def set_indices(self, indices: object) -> None:
        self.indices = as_indices(indices, self.num_samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_shard(self, rank: int, world: int, batch_size: int) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}), got {rank}")
        self.rank, self.world, self.batch_size = rank, world, batch_size

    def __len__(self) -> int:
        return shard_length(len(self.indices), self.batch_size, self.world)

    def __iter__(self) -> Iterator[int]:
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=epoch_generator(self.seed, self.epoch))]
        self.epoch += 1
        return iter(shard_order(order, self.batch_size, self.rank, self.world).tolist())


class PrunerSampler(PrunedSampler):
    """A PrunedSampler that asks its pruner for the ids of each epoch by itself (before len() or iteration),
    so that a loop of your own needs no set_indices call: DataLoader(dataset, sampler=pruner.sampler())."""

    def __init__(self, pruner: Pruner, shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(pruner.pool, shuffle, seed, pruner.num_samples)
        self.pruner = pruner
        self._prepared: int | None = None
        self._iterating = False

    def _prepare(self) -> None:
        if self._prepared != self.epoch:
            ids = self.pruner.epoch_indices(self.epoch, self.num_samples)
            if ids is not None:
                self.set_indices(ids)
            self._prepared = self.epoch

    def __len__(self) -> int:
        if not self._iterating:  # during an epoch, its length; the next epoch's ids wait for its updates
            self._prepare()
        return super().__len__()

    def __iter__(self) -> Iterator[int]:
        self._prepare()
        self._iterating = True
        try:
            yield from super().__iter__()
        finally:
            self._iterating = False


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
