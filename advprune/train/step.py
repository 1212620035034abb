"""One training step: craft the batch's adversarial examples (input gradients only: no weight
gradient is computed or accumulated), take the loss (per sample, weighted by the pruner), step the
optimiser, and hand the per-sample results to the observers (pruners, trackers)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from advprune import attacks, ops
from advprune.pruning.protocol import BatchObserver
from advprune.train.config import AttackConfig


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf: the run stopped, its last good checkpoint is kept."""


class AdversarialStep:
    """The attack and the optimiser step of one batch. `forward` is the model or its compiled form."""

    def __init__(
        self,
        model: nn.Module,
        forward: Callable,
        attack: AttackConfig,
        optimizer: torch.optim.Optimizer,
        amp_dtype: torch.dtype | None,
        device: torch.device,
    ) -> None:
        self.model, self.forward, self.attack, self.optimizer = model, forward, attack, optimizer
        self.amp_dtype, self.device = amp_dtype, device
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def perturb(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The training attack's examples of (x, y), crafted with the model in eval mode for pgd and trades."""
        a = self.attack
        with self.autocast():
            if a.kind == "pgd":
                return attacks.pgd(
                    self.forward,
                    x,
                    y,
                    eps=a.eps,
                    step_size=a.step_size,
                    steps=a.steps,
                    norm=a.norm,
                    generator=generator,
                )
            if a.kind == "fgsm_rs":
                return attacks.fgsm_rs(self.forward, x, y, eps=a.eps, step_size=a.step_size, generator=generator)
            if a.kind == "trades":
                return attacks.trades_perturb(
                    self.forward, x, eps=a.eps, step_size=a.step_size, steps=a.steps, generator=generator
                )
        return x

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        ids: torch.Tensor,
        *,
        generator: torch.Generator,
        weights: torch.Tensor | None,
        batch_size: int | None,
        observers: Sequence[BatchObserver],
        timing: dict,
        epoch: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step; returns (per-sample loss, logits), detached. The loss is the weighted sum over
        the batch divided by batch_size (the loader's, default len(y)), so that a short last batch (common on
        pruned data) moves the weights in proportion to its samples, not as a full one."""
        t0 = time.perf_counter()
        x_adv = self.perturb(x, y, generator)
        t1 = time.perf_counter()
        self.model.train()
        with self.autocast():
            logits = self.forward(x_adv)
            if self.attack.kind == "trades":
                per_sample, _ = attacks.trades_loss(self.forward(x), logits, y, self.attack.beta)
            else:
                per_sample = F.cross_entropy(logits.float(), y, reduction="none")
        weighted = per_sample * weights.to(per_sample) if weights is not None else per_sample
        loss = weighted.sum() / max(batch_size or 0, len(y))
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss.item()} at epoch {epoch}: lower the learning rate or use amp=None; "
                "the last good checkpoint is kept"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        t2 = time.perf_counter()
        if observers:
            scores, adv_loss = ops.sample_scores(logits.detach(), y), per_sample.detach()
            for observer in observers:
                observer.on_batch(ids, scores, adv_loss)
        timing["attack"] += t1 - t0
        timing["update"] += t2 - t1
        timing["scoring"] += time.perf_counter() - t2
        return per_sample.detach(), logits.detach()
