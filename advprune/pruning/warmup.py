"""A static selection from the scores the training step already computes: the first
warm-up epochs train on all the data while each sample's adversarial EL2N, loss, margin
and forgetting events are recorded (the Trainer's on_batch hook, no extra pass); then a
selector (CCS, hardest, ...) keeps a fraction of the data for the remaining epochs."""

from __future__ import annotations

import torch

from advprune.pruning.select import hardness, kept_count, select
from advprune.scores import ForgettingTracker

STEP_SCORES = ("adv_el2n", "adv_loss", "adv_margin", "forgetting")


class WarmupSelector:
    """Trains `warmup_epochs` epochs on all data, then on select(score, fraction, method) for
    the rest of the run. score is one of STEP_SCORES (the adversarial logits of training)."""

    def __init__(
        self,
        num_samples: int,
        fraction: float,
        method: str = "ccs",
        score: str = "adv_el2n",
        *,
        warmup_epochs: int = 1,
        labels: torch.Tensor | None = None,
        class_balanced: bool = False,
        seed: int = 0,
    ) -> None:
        if score not in STEP_SCORES:
            raise ValueError(f"the training step records {', '.join(STEP_SCORES)}; got score {score!r}")
        if not isinstance(warmup_epochs, int) or warmup_epochs < 1:
            raise ValueError(f"warmup_epochs must be an int >= 1, got {warmup_epochs!r}")
        kept_count(fraction, num_samples)  # refuses a bad fraction now, not after the warm-up
        self.num_samples, self.fraction, self.method, self.score = num_samples, fraction, method, score
        self.warmup_epochs, self.labels, self.class_balanced, self.seed = warmup_epochs, labels, class_balanced, seed
        self.values = {name: torch.zeros(num_samples) for name in STEP_SCORES[:3]}
        self.forgetting = ForgettingTracker(num_samples)
        self.kept: torch.Tensor | None = None

    def on_batch(self, ids: torch.Tensor, scores, adv_loss: torch.Tensor) -> None:
        if self.kept is not None:
            return  # selected: later epochs do not change it
        for name, values in (("adv_el2n", scores.el2n), ("adv_loss", adv_loss), ("adv_margin", scores.margin)):
            if self.values[name].device != ids.device:
                self.values[name] = self.values[name].to(ids.device)
            self.values[name][ids] = values.detach().float()
        self.forgetting.on_batch(ids, scores, adv_loss)

    def scores(self) -> dict[str, torch.Tensor]:
        """The recorded scores, on the CPU."""
        return {**{k: v.cpu() for k, v in self.values.items()}, "forgetting": self.forgetting.scores()}

    def epoch_indices(self, epoch: int, num_samples: int | None = None) -> torch.Tensor:
        if num_samples is not None and num_samples != self.num_samples:
            raise ValueError(f"this selector covers {self.num_samples} samples, the loader serves {num_samples}")
        if epoch < self.warmup_epochs:
            return torch.arange(self.num_samples)
        if self.kept is None:
            self.kept = select(hardness(self.scores(), self.score), self.fraction, self.method, labels=self.labels,
                               seed=self.seed, class_balanced=self.class_balanced)  # fmt: skip
        return self.kept

    def state_dict(self) -> dict:
        return {"values": {k: v.cpu().clone() for k, v in self.values.items()},
                "forgetting": self.forgetting.state_dict(), "kept": self.kept}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.values = {k: v.clone() for k, v in state["values"].items()}
        self.forgetting.load_state_dict(state["forgetting"])
        self.kept = state["kept"]
