"""The served subset of sample ids and its per-epoch order, shared by the loaders.

Every epoch draws its order from a generator seeded by (seed, epoch), so a run
with the same seed serves the same batches, epoch after epoch, and a resumed
run can continue the sequence by setting `epoch`. Under torch.distributed each
rank serves its share of that one order (set_shard; ids.shard_order): the
ranks' batches of a step together are the one-process batch of that step.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from advprune.ids import as_indices, epoch_generator, shard_length, shard_order

ORDERS = ("random", "sequential")


class SubsetSchedule:
    """Which ids an epoch serves, in which order, in which batches."""

    def __init__(
        self,
        n: int,
        indices: object | None,
        *,
        batch_size: int,
        order: str = "random",
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        self.n = n
        self.batch_size = batch_size
        self.order = order
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.rank, self.world = 0, 1
        self.indices = torch.arange(n) if indices is None else as_indices(indices, n)

    def set_indices(self, indices: object) -> None:
        self.indices = as_indices(indices, self.n)

    def set_shard(self, rank: int, world: int) -> None:
        """Serve rank `rank`'s share of each epoch's order among `world` ranks."""
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}), got {rank}")
        self.rank, self.world = rank, world

    def num_batches(self) -> int:
        """This rank's batches of an epoch of the served ids."""
        return self._batches(shard_length(len(self.indices), self.batch_size, self.world, self.drop_last))

    def _batches(self, count: int) -> int:
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def next_epoch(self) -> tuple[torch.Tensor, torch.Generator]:
        """This epoch's order of the ids (this rank's share of it), and its generator (for augmentation);
        advances the epoch."""
        generator = epoch_generator(self.seed, self.epoch)
        self.epoch += 1
        order = self.indices.clone()
        if self.order == "random":
            order = self.indices[torch.randperm(len(self.indices), generator=generator)]
        return shard_order(order, self.batch_size, self.rank, self.world, self.drop_last), generator

    def batch_bounds(self, count: int) -> Iterator[tuple[int, int]]:
        """The [start, end) of each batch of an epoch's order of `count` ids (this rank's share)."""
        for b in range(self._batches(count)):
            yield b * self.batch_size, min((b + 1) * self.batch_size, count)


class SubsetLoader:
    """What both loaders share: the served ids, set_indices for the next epoch, and len()."""

    schedule: SubsetSchedule

    @property
    def indices(self) -> torch.Tensor:
        return self.schedule.indices

    def set_indices(self, indices: object) -> None:
        """Serve exactly these sample ids from the next epoch on (no rebuild)."""
        self.schedule.set_indices(indices)

    def set_shard(self, rank: int, world: int) -> None:
        """Serve rank `rank`'s share of each epoch among `world` ranks (see SubsetSchedule.set_shard)."""
        self.schedule.set_shard(rank, world)

    def __len__(self) -> int:
        return self.schedule.num_batches()
