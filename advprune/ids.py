"""Sample ids and the seeded random choices made over them, shared by data/, pruning/ and the
Trainer (a neutral module: it imports nothing else of advprune).

Every sample carries its id, its index in the full training set. Every random choice over
ids takes a seed, so that a run with the same seed repeats it exactly.
"""

from __future__ import annotations

import numpy as np
import torch


def epoch_generator(seed: int, epoch: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of one epoch's random choices: a run with the same seed repeats them, epoch by epoch."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


def as_indices(indices: object, n: int | None) -> torch.Tensor:
    """A 1-D int64 CPU tensor of distinct sample ids in [0, n) (n None: any id >= 0); ValueError/TypeError
    naming the problem."""
    t = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
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
