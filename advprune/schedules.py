"""Learning-rate schedules defined on training progress in epochs, t = epoch + i / n for
step i of an epoch of n steps, so they stay right when the number of steps per epoch
changes from epoch to epoch (as it does under dynamic pruning)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SCHEDULES = ("piecewise", "cosine", "onecycle", "constant")


def progress_in_epochs(epoch: int, step: int, steps_in_epoch: int | None) -> float:
    """Training progress in epochs at step `step` of `epoch`: epoch + step / steps_in_epoch; data of unknown
    length (steps_in_epoch None) stay at the epoch's start. The learning rate and the eps warm-up follow it."""
    return epoch + step / steps_in_epoch if steps_in_epoch else float(epoch)


class LRSchedule:
    """lr(t) for t in [0, epochs]:

    - piecewise (Madry; Rice et al. 2020): base_lr, times gamma at each milestone
      (fractions of the run, default 0.5 and 0.75);
    - cosine: base_lr * (1 + cos(pi t / epochs)) / 2;
    - onecycle (Wong et al. 2020): linear from 0 up to base_lr at peak (fraction, default
      0.4), then linear down to 0 at the end;
    - constant.
    """

    def __init__(
        self,
        kind: str,
        base_lr: float,
        epochs: int,
        *,
        milestones: Sequence[float] = (0.5, 0.75),
        gamma: float = 0.1,
        peak: float = 0.4,
    ) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"lr schedule must be one of {SCHEDULES}, got {kind!r}")
        if not (base_lr > 0 and math.isfinite(base_lr)):
            raise ValueError(f"base_lr must be a positive number, got {base_lr}")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if not 0 < peak < 1:
            raise ValueError(f"peak must lie in (0, 1), got {peak}")
        self.kind, self.base_lr, self.epochs = kind, float(base_lr), int(epochs)
        self.milestones, self.gamma, self.peak = tuple(float(m) for m in milestones), float(gamma), float(peak)

    def lr_at(self, t: float) -> float:
        """The learning rate at progress t (in epochs)."""
        frac = min(max(t / self.epochs, 0.0), 1.0)
        if self.kind == "piecewise":
            return self.base_lr * self.gamma ** sum(frac >= m for m in self.milestones)
        if self.kind == "cosine":
            return self.base_lr * 0.5 * (1 + math.cos(math.pi * frac))
        if self.kind == "onecycle":
            return self.base_lr * (frac / self.peak if frac < self.peak else (1 - frac) / (1 - self.peak))
        return self.base_lr

    def factor(self, t: float) -> float:
        """lr(t) / base_lr: what each parameter group's own base rate is multiplied by at progress t."""
        return self.lr_at(t) / self.base_lr

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int, step: int, steps_in_epoch: int | None) -> float:
        """Sets the learning rate of every parameter group for step `step` of `epoch`: the group's own base
        rate (its lr when first scheduled, kept in the group as "initial_lr") times factor(t), so that groups
        with different rates keep their ratios. steps_in_epoch None (data of unknown length): the rate stays
        at the epoch's start value through the epoch. Returns group 0's rate."""
        factor = self.factor(progress_in_epochs(epoch, step, steps_in_epoch))
        for group in optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
        return optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "base_lr": self.base_lr,
            "epochs": self.epochs,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
            "peak": self.peak,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> LRSchedule:
        return cls(
            state["kind"],
            state["base_lr"],
            state["epochs"],
            milestones=state["milestones"],
            gamma=state["gamma"],
            peak=state["peak"],
        )
