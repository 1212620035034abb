"""One training step: craft the batch's adversarial examples (input gradients only: no weight
gradient is computed or accumulated), take the loss (per sample, weighted by the pruner), step the
optimiser, and hand the per-sample results to the observers (pruners, trackers).

Under DistributedDataParallel the attack runs on the bare module: its forwards and input-gradient
backwards never touch DDP's hooks, so they cost no gradient all-reduce; only the update's forward
goes through DDP. The observers see every rank's results (gathered), so that all ranks keep the same
pruner state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from advprune import attacks, ops
from advprune._types import SampleScores
from advprune.data.augmentation import Augmentation
from advprune.distributed import World
from advprune.pruning.protocol import BatchObserver
from advprune.train.config import AttackConfig
from advprune.train.perturbation_memory import PerturbationMemory
from advprune.train.weight_average import WeightAverage

FINITE_CHECK_EVERY = 50  # steps between reads of the finite-loss flag on a GPU


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf: the run stopped, its last good checkpoint is kept."""


def craft(
    a: AttackConfig,
    forward: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step_size: float,
    generator: attacks.Randomness,
    start: torch.Tensor | None,
) -> torch.Tensor:
    """The examples of attack `a` (its kind, norm and steps) at this eps and step size; clean: x itself."""
    if a.kind == "pgd":
        return attacks.pgd(forward, x, y, eps=eps, step_size=step_size, steps=a.steps, norm=a.norm,
                           generator=generator, start=start)  # fmt: skip
    if a.kind == "fgsm_rs":
        return attacks.fgsm_rs(forward, x, y, eps=eps, step_size=step_size, generator=generator, start=start)
    if a.kind == "n_fgsm":
        return attacks.n_fgsm(forward, x, y, eps=eps, step_size=step_size, generator=generator)
    if a.kind == "trades":
        return attacks.trades_perturb(forward, x, eps=eps, step_size=step_size, steps=a.steps, generator=generator,
                                      start=start)  # fmt: skip
    return x


class AdversarialStep:
    """The attack and the optimiser step of one batch. attack_forward: the model (or its compiled form) for
    the attack and for TRADES' clean logits; train_forward: what the update's forward goes through (the
    DDP wrapper under torch.distributed, else the same)."""

    def __init__(
        self,
        model: nn.Module,
        attack_forward: Callable,
        train_forward: Callable,
        attack: AttackConfig,
        optimizer: torch.optim.Optimizer,
        amp_dtype: torch.dtype | None,
        device: torch.device,
        world: World,
    ) -> None:
        self.model, self.attack_forward, self.train_forward = model, attack_forward, train_forward
        self.attack, self.optimizer, self.amp_dtype, self.device, self.world = (
            attack,
            optimizer,
            amp_dtype,
            device,
            world,
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=device)  # a NaN or Inf loss since the last read
        self._unchecked = 0
        self.check_every = 1 if device.type == "cpu" else FINITE_CHECK_EVERY
        self.memory: PerturbationMemory | None = None  # made at the first batch when attack.reuse is set
        self.average: WeightAverage | None = None  # the weight average (OptimConfig.ema), set by the Trainer
        self.progress = 0.0  # epochs trained so far, fractional; set by run_epoch before each step (eps warm-up)

    def ensure_memory(self, num_samples: int, x: torch.Tensor, augmentation: Augmentation) -> None:
        """Makes the perturbation memory (attack.reuse) for num_samples ids and the batches' padded frame."""
        if self.memory is not None or self.attack.reuse is None:
            return
        c, h, w = x.shape[1:]
        p = augmentation.padding
        self.memory = PerturbationMemory(
            num_samples, (c, h + 2 * p, w + 2 * p), eps=self.attack.eps, storage=self.attack.reuse,
            refresh=self.attack.reuse_refresh, device=self.device, shared=self.world.distributed,
        )  # fmt: skip

    def check_finite(self, epoch: int) -> None:
        """Reads the finite-loss flag (a host sync on a GPU, hence every `check_every` steps and at the end of
        each epoch) and stops the run if a loss since the last read was NaN or Inf. On the CPU, where a read is
        free, every step is checked before its update; on a GPU a diverged step may update the weights in
        memory, but the run stops before the epoch ends, so no checkpoint is written from them."""
        steps, self._unchecked = self._unchecked, 0
        if bool(self._nonfinite):
            raise TrainingDiverged(
                f"the training loss became NaN or Inf at epoch {epoch} (within its last {max(steps, 1)} step(s)): "
                "lower the learning rate or use amp=None; the last good checkpoint is kept"
            )

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def perturb(
        self, x: torch.Tensor, y: torch.Tensor, generator: attacks.Randomness, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The training attack's examples of (x, y), crafted with the model in eval mode for pgd and trades,
        from `start` (perturbation memory) or the attack's random start, at the strength of the eps warm-up."""
        eps, step_size = self.attack.strength_at(self.progress)
        with self.autocast():
            return craft(self.attack, self.attack_forward, x, y, eps, step_size, generator, start)

    def random_start(self, x: torch.Tensor, generator: attacks.Randomness) -> torch.Tensor:
        """The attack's own first iterate (what a sample without a remembered perturbation starts from)."""
        a = self.attack
        eps, _ = a.strength_at(self.progress)
        if a.kind == "trades":
            return attacks.trades_start(x, eps, generator)
        return attacks.random_init(x, eps, a.norm, generator)

    def perturb_from_memory(self, x, y, ids, generator, augmentation: Augmentation | None) -> torch.Tensor:
        """The attack, started from each sample's remembered perturbation when the memory is on; the final
        perturbations are remembered for the next epoch."""
        if self.memory is None:
            return self.perturb(x, y, generator)
        augmentation = augmentation.to(x.device)
        start = self.memory.starts(x, ids, augmentation, lambda v: self.random_start(v, generator), generator)
        x_adv = self.perturb(x, y, generator, start)
        self.memory.remember(x, x_adv, ids, augmentation)
        return x_adv

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        ids: torch.Tensor,
        *,
        generator: attacks.Randomness,
        weights: torch.Tensor | None,
        batch_size: int | None,
        observers: Sequence[BatchObserver],
        timing: dict,
        epoch: int,
        augmentation: Augmentation | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step; returns (per-sample loss, logits), detached. The loss is the weighted sum over
        the batch divided by batch_size (the loader's, default len(y)), so that a short last batch (common on
        pruned data) moves the weights in proportion to its samples, not as a full one; DDP then averages
        over the ranks, which makes it the one-process step of the global batch."""
        t0 = time.perf_counter()
        x_adv = self.perturb_from_memory(x, y, ids, generator, augmentation)
        t1 = time.perf_counter()
        self.model.train()
        with self.autocast():
            logits = self.train_forward(x_adv)
            if self.attack.kind == "trades":
                per_sample, _ = attacks.trades_loss(self.attack_forward(x), logits, y, self.attack.beta)
            else:
                per_sample = F.cross_entropy(logits.float(), y, reduction="none")
        weighted = per_sample * weights.to(per_sample) if weights is not None else per_sample
        loss = weighted.sum() / max(batch_size or 0, len(y))
        self._nonfinite |= ~torch.isfinite(loss)  # on the device: no host sync
        self._unchecked += 1
        if self._unchecked >= self.check_every:
            self.check_finite(epoch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.average is not None:
            self.average.update(self.model)
        t2 = time.perf_counter()
        if observers:
            scores = ops.sample_scores(logits.detach(), y, check_labels=False)  # the loss has checked y: no sync
            self._observe(observers, ids, scores, per_sample.detach())
        timing["attack"] += t1 - t0
        timing["update"] += t2 - t1
        timing["scoring"] += time.perf_counter() - t2
        return per_sample.detach(), logits.detach()

    def _observe(self, observers, ids: torch.Tensor, scores: SampleScores, adv_loss: torch.Tensor) -> None:
        """Every observer gets the batch's results of all ranks (the ranks' batches of a step are equal in size)."""
        if self.world.distributed:
            ids, adv_loss, *fields = self.world.gather_columns([ids, adv_loss, *scores])
            scores = SampleScores(*fields)
        for observer in observers:
            observer.on_batch(ids, scores, adv_loss)
