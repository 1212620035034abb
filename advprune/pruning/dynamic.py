"""Dynamic pruning with no scoring pass, fed with the adversarial losses the training
step already computed (the Trainer's on_batch hook, or `update` in a foreign loop).

DynamicPruner (InfoBatch, Qin et al. 2024, on adversarial losses): each epoch, drop at
random a share `ratio` of the samples whose last loss is below the mean, and weight the
kept below-mean samples by 1/(1 - ratio) so that the expected gradient stays the full
data's; from epoch floor(delta * epochs) on, train on all data. KeepHardPruner: each
epoch the samples with the highest last loss, plus a small random share for exploration.
Samples not seen yet count as high-loss in both. The state (last losses, seen flags) is
saved in the trainer's checkpoints: a resumed run selects the same subsets. Both choose from a
pool of ids (default: all), so that held-out validation ids are never trained on.

In a loop of your own, three lines (as InfoBatch):

    pruner = DynamicPruner(len(dataset), epochs, ratio=0.5)
    loader = DataLoader(with_ids(dataset), batch_size=128, sampler=pruner.sampler())
    loss = pruner.update(ids, F.cross_entropy(model(x_adv), y, reduction="none"))  # weighted mean
"""

from __future__ import annotations

import math

import torch

from advprune.ids import as_indices, epoch_generator
from advprune.pruning.protocol import PrunerBase
from advprune.pruning.sampler import PrunerSampler
from advprune.pruning.select import kept_count


class LossMemory(PrunerBase):
    """The last training loss of every sample, and whether it was seen yet. `pool`: the ids that may
    be trained on (default: all of [0, num_samples))."""

    def __init__(self, num_samples: int, epochs: int, seed: int = 0, pool: object | None = None) -> None:
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        self.num_samples, self.epochs, self.seed = num_samples, epochs, seed
        self.pool = torch.arange(num_samples) if pool is None else torch.sort(as_indices(pool, num_samples)).values
        if len(self.pool) == 0:
            raise ValueError("the pool of trainable ids is empty")
        self.last_loss = torch.zeros(num_samples, dtype=torch.float32)
        self.seen = torch.zeros(num_samples, dtype=torch.bool)

    def sampler(self, shuffle: bool = True, seed: int | None = None) -> PrunerSampler:
        """A Sampler for a torch DataLoader that serves this pruner's ids of each epoch by itself."""
        return PrunerSampler(self, shuffle=shuffle, seed=self.seed if seed is None else seed)

    def update(self, ids: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """Records the per-sample losses of a batch (ids: sample ids in [0, num_samples)) and returns their
        mean weighted by weights(ids), with the losses' gradient: the loss to minimise in a loop of your own."""
        losses = torch.as_tensor(losses)
        ids = torch.as_tensor(ids).to(losses.device)
        self.record(ids, losses)
        weights = self.weights(ids.reshape(-1))
        return (losses.reshape(-1) * weights.to(losses)).mean() if weights is not None else losses.mean()

    def record(self, ids: torch.Tensor, losses: torch.Tensor, *, check: bool = True) -> None:
        """Records the per-sample losses of a batch. The memory lives on the device of the updates (no host
        sync per batch); check=False skips the id range check (for trusted callers such as the Trainer)."""
        ids = torch.as_tensor(ids).detach().reshape(-1)
        losses = torch.as_tensor(losses).detach().reshape(-1)
        if ids.shape != losses.shape:
            raise ValueError(f"ids and losses must have the same length, got {len(ids)} and {len(losses)}")
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError(f"ids must be integer sample ids, got {ids.dtype}")
        if check and len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= self.num_samples):
            raise ValueError(f"ids must lie in [0, {self.num_samples}), got {int(ids.min())}..{int(ids.max())}")
        if self.last_loss.device != ids.device:
            self.last_loss, self.seen = self.last_loss.to(ids.device), self.seen.to(ids.device)
        self.last_loss[ids] = losses.to(torch.float32)
        self.seen[ids] = True

    def on_batch(self, ids: torch.Tensor, scores, adv_loss: torch.Tensor) -> None:
        """The Trainer's hook: the adversarial loss of each trained sample (ids come from the loader)."""
        self.record(ids, adv_loss, check=False)

    def _check(self, num_samples: int | None) -> None:
        if num_samples is not None and num_samples != self.num_samples:
            raise ValueError(f"this pruner tracks {self.num_samples} samples, the loader serves {num_samples}")

    def _memory(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The last losses and seen flags of the pool, on the CPU (one transfer per epoch)."""
        return self.last_loss.cpu()[self.pool], self.seen.cpu()[self.pool]

    def state_dict(self) -> dict:
        return {"last_loss": self.last_loss.cpu().clone(), "seen": self.seen.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        if state["last_loss"].shape != (self.num_samples,):
            raise ValueError(f"the saved pruner state tracks {len(state['last_loss'])} samples, not {self.num_samples}")
        self.last_loss = state["last_loss"].to("cpu", torch.float32).clone()
        self.seen = state["seen"].to("cpu", torch.bool).clone()


class DynamicPruner(LossMemory):
    """InfoBatch-style pruning of below-mean-loss samples with unbiased loss weights.

    Use: `indices = pruner.epoch_indices(epoch)` before an epoch, `pruner.weights(ids)` to
    weight each batch's per-sample losses, `pruner.update(ids, losses)` after it.
    """

    def __init__(
        self,
        num_samples: int,
        epochs: int,
        ratio: float = 0.5,
        delta: float = 0.875,
        seed: int = 0,
        pool: object | None = None,
    ) -> None:
        super().__init__(num_samples, epochs, seed, pool)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise ValueError(f"ratio (the share of below-mean samples dropped) must be in [0, 1), got {ratio!r}")
        if not 0 <= delta <= 1:
            raise ValueError(f"delta (the share of epochs that prune) must be in [0, 1], got {delta!r}")
        self.ratio, self.delta = float(ratio), float(delta)
        self._weights = torch.ones(num_samples, dtype=torch.float32)

    @property
    def stop_epoch(self) -> int:
        """The first epoch trained on all data (annealing)."""
        return math.floor(self.delta * self.epochs)

    def epoch_indices(self, epoch: int, num_samples: int | None = None) -> torch.Tensor:
        """The sorted ids (of the pool) to train on in `epoch`; sets the loss weights that weights() returns."""
        self._check(num_samples)
        self._weights = torch.ones(self.num_samples, dtype=torch.float32)
        last_loss, seen = self._memory()
        if epoch >= self.stop_epoch or not seen.any():
            return self.pool.clone()
        mean = last_loss[seen].mean()
        well_learned = self.pool[seen & (last_loss < mean)]
        # keep at least one below-mean sample: its weight W / (W - m) must stay finite
        dropped_count = min(math.floor(self.ratio * len(well_learned) + 0.5), len(well_learned) - 1)
        if dropped_count == 0:
            return self.pool.clone()
        order = torch.randperm(len(well_learned), generator=epoch_generator(self.seed, epoch))
        dropped, kept = well_learned[order[:dropped_count]], well_learned[order[dropped_count:]]
        # each below-mean sample is kept with probability (W - m) / W: weight it by the inverse
        self._weights[kept] = len(well_learned) / (len(well_learned) - dropped_count)
        keep = torch.zeros(self.num_samples, dtype=torch.bool)
        keep[self.pool] = True
        keep[dropped] = False
        return torch.nonzero(keep).squeeze(1)

    def weights(self, ids: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights of a batch: 1/(1 - ratio) for kept below-mean samples, else 1."""
        if self._weights.device != ids.device:
            self._weights = self._weights.to(ids.device)
        return self._weights[ids]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "weights": self._weights.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._weights = state["weights"].to("cpu", torch.float32).clone()


class KeepHardPruner(LossMemory):
    """Each epoch, a share `keep` of the data: the highest last losses (unseen samples first),
    and a random `explore` share of that budget from the rest. No loss weights (a biased
    choice by design: it spends the epoch where the model is weakest)."""

    def __init__(
        self,
        num_samples: int,
        epochs: int,
        keep: float = 0.5,
        explore: float = 0.1,
        seed: int = 0,
        pool: object | None = None,
    ) -> None:
        super().__init__(num_samples, epochs, seed, pool)
        self.count = kept_count(keep, len(self.pool))
        if not 0 <= explore <= 1:
            raise ValueError(f"explore (the random share of each epoch's subset) must be in [0, 1], got {explore!r}")
        self.keep, self.explore = keep, explore

    def epoch_indices(self, epoch: int, num_samples: int | None = None) -> torch.Tensor:
        self._check(num_samples)
        generator = epoch_generator(self.seed, epoch)
        explore_count = math.floor(self.explore * self.count + 0.5)
        last_loss, seen = self._memory()
        loss = torch.where(seen, last_loss, torch.tensor(float("inf")))
        shuffle = torch.randperm(len(self.pool), generator=generator)  # ties at random
        ranked = shuffle[torch.argsort(-loss[shuffle], stable=True)]
        hard, rest = ranked[: self.count - explore_count], ranked[self.count - explore_count :]
        explored = rest[torch.randperm(len(rest), generator=generator)[:explore_count]]
        return torch.sort(self.pool[torch.cat([hard, explored])]).values
