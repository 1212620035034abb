"""Sample ids and the seeded random choices made over them, shared by data/, pruning/ and the
Trainer (a neutral module: it imports nothing else of advprune).

Every sample carries its id, its index in the full training set. Every random choice over
ids takes a seed, so that a run with the same seed repeats it exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def epoch_generator(seed: int, epoch: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of one epoch's random choices: a run with the same seed repeats them, epoch by epoch."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


def as_indices(indices: object, n: int | None) -> torch.Tensor:
    """A 1-D int64 CPU tensor of distinct sample ids in [0, n) (n None: any id >= 0); ValueError/TypeError
    naming the problem."""
    t = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
    if t.numel() and (t.dtype == torch.bool or t.is_floating_point() or t.is_complex()):  # [] comes as float64
        raise TypeError(f"indices must be integer sample ids, got {t.dtype}")
    t = t.to(device="cpu", dtype=torch.int64).reshape(-1) if t.dim() <= 1 else t
    if t.dim() != 1:
        raise ValueError(f"indices must be 1-D, got shape {list(t.shape)}")
    if len(t) and (int(t.min()) < 0 or (n is not None and int(t.max()) >= n)):
        bounds = f"[0, {n})" if n is not None else ">= 0"
        raise ValueError(f"indices must lie in {bounds}, got values from {int(t.min())} to {int(t.max())}")
    if len(torch.unique(t)) != len(t):
        raise ValueError(f"indices must be distinct: {len(t) - len(torch.unique(t))} repeat")
    return t


def class_quotas(labels: torch.Tensor, k: int) -> torch.Tensor:
    """How many of each class to keep: proportional to the class sizes (each class keeps the
    same fraction), rounded by largest remainder so that the quotas sum to exactly k."""
    sizes = torch.bincount(labels).to(torch.float64)
    exact = sizes * (k / len(labels))
    quotas = exact.floor().to(torch.int64)
    short = k - int(quotas.sum())
    if short:
        remainder = exact - quotas
        order = torch.argsort(-remainder, stable=True)  # ties: the lower class first
        quotas[order[:short]] += 1
    return quotas


def holdout_split(labels: object, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept ids, held-out ids), both sorted: `count` samples held out for validation, each class
    in proportion to its size, chosen at random for the seed. The held-out ids are never trained on."""
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).reshape(-1)
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"labels must be integer classes, got {y.dtype}")
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < len(y):
        raise ValueError(
            f"the held-out count must be an int in [0, {len(y)}) (samples left to train on), got {count!r}"
        )
    y = y.to("cpu", torch.int64)
    generator = torch.Generator().manual_seed(seed)
    held = [torch.zeros(0, dtype=torch.int64)]
    for c, quota in enumerate(class_quotas(y, count).tolist()):
        members = torch.nonzero(y == c).squeeze(1)
        held.append(members[torch.randperm(len(members), generator=generator)[:quota]])
    held_out = torch.sort(torch.cat(held)).values
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[held_out] = False
    return torch.nonzero(keep).squeeze(1), held_out


def shard_order(order: torch.Tensor, batch_size: int, rank: int, world: int, drop_last: bool = False) -> torch.Tensor:
    """This rank's share of an epoch's order of ids, for `world` ranks that each take batches of batch_size:
    every global batch (batch_size * world consecutive ids) is cut into `world` slices and the rank takes
    its own, so that the ranks' batches of a step together are the one-process batch of that step. A
    last, shorter global batch is padded by repeating the order's first ids until every rank gets as many
    (or dropped, with drop_last): equal shares, equal batch counts, disjoint but for that padding."""
    if world == 1:
        return order
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    full = len(order) // (batch_size * world) * batch_size * world
    share = order[:full].view(-1, world, batch_size)[:, rank].reshape(-1)
    rest = order[full:]
    if len(rest) == 0 or drop_last:
        return share
    per_rank = -(-len(rest) // world)
    missing = per_rank * world - len(rest)
    filler = order.repeat(-(-missing // len(order)))[:missing]
    padded = torch.cat([rest, filler])
    return torch.cat([share, padded[rank * per_rank : (rank + 1) * per_rank]])


def shard_length(count: int, batch_size: int, world: int, drop_last: bool = False) -> int:
    """How many ids shard_order gives each rank out of `count`."""
    full = count // (batch_size * world)
    rest = count - full * batch_size * world
    return full * batch_size + (0 if drop_last or rest == 0 else -(-rest // world))


_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor | int):
    """A 32-bit integer hash (xor-shift-multiply), on int64 tensors holding values below 2**32 (or ints)."""
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


class KeyedNoise:
    """Random numbers keyed by sample id: draw k of sample i at position j depends on (seed, epoch, k, i, j)
    only, not on which batch, rank or process draws it. The attacks' random starts take it in place of a
    torch.Generator, so that a run gives the same noise to each sample whatever the number of ranks."""

    def __init__(self, ids: torch.Tensor, seed: int, epoch: int) -> None:
        self.ids = ids.to(torch.int64)
        self.key = int(_mix32((seed * 1_000_003 + epoch) & _MASK32))
        self.draws = 0

    def rows(self, index: torch.Tensor) -> KeyedNoise:
        """The same noise for a subset of the rows (a restart on the samples still unbroken)."""
        part = KeyedNoise.__new__(KeyedNoise)
        part.ids, part.key, part.draws = self.ids[index.to(self.ids.device)], self.key, self.draws
        return part

    def _bits(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """24 random bits per element of `shape` (rows: the samples), as int64."""
        if len(self.ids) != shape[0]:
            raise ValueError(f"keyed noise for {len(self.ids)} samples cannot fill shape {list(shape)}")
        self.draws += 1
        per_row = math.prod(shape[1:])
        rows = _mix32((self.ids.to(device) & _MASK32) ^ int(_mix32((self.key + 0x9E3779B1 * self.draws) & _MASK32)))
        cols = torch.arange(per_row, device=device, dtype=torch.int64) * 0x9E3779B1
        bits = _mix32(((rows[:, None] + cols[None, :]) & _MASK32) ^ (rows[:, None] >> 5))
        return (bits >> 8).view(shape)

    def rand(self, shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Uniform in [0, 1)."""
        return (self._bits(tuple(shape), device).to(torch.float64) / 2**24).to(dtype)

    def randn(self, shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Standard normal (Box-Muller on two uniforms)."""
        u1 = (self._bits(tuple(shape), device).to(torch.float64) + 1) / (2**24 + 1)  # in (0, 1): log is finite
        u2 = self._bits(tuple(shape), device).to(torch.float64) / 2**24
        return (torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).to(dtype)
