"""A static selection made inside the run: the first warm-up epochs train on the whole pool, then
every pooled sample is scored by the model as it is at the end of the warm-up (one scoring pass,
clean or adversarial as the score's name says, run by the training loop) and a selector (CCS,
hardest, ...) keeps a fraction for the remaining epochs.

Why a pass, not the scores the warm-up's own training steps computed: within an epoch the model
goes from its state at the epoch's start to its state at the end, so a score taken when a sample
was trained on mostly says where in the epoch it came (early samples look hard), not how hard it is.
Forgetting events are the exception: they compare a sample's presentations across epochs, so they
come from the warm-up's steps, and need at least two warm-up epochs.
"""

from __future__ import annotations

import torch

from advprune.ids import as_indices
from advprune.pruning.protocol import PrunerBase, ScoringRequest
from advprune.pruning.select import hardness, kept_count, select
from advprune.scores import ForgettingTracker

PASS_SCORES = ("loss", "margin", "el2n", "entropy", "confidence", "grand")  # scored on clean inputs
STEP_SCORES = ("forgetting",)  # counted by the warm-up's training steps
SCORES = (*PASS_SCORES, *(f"adv_{name}" for name in PASS_SCORES), "deepfool", *STEP_SCORES)


class WarmupSelector(PrunerBase):
    """Trains `warmup_epochs` epochs on the pool (default: all ids), then on
    select(score, fraction, method) of the pool for the rest of the run. score: one of SCORES
    (adv_ names: scored on the training attack's examples)."""

    def __init__(
        self,
        num_samples: int,
        fraction: float,
        method: str = "ccs",
        score: str = "el2n",
        *,
        warmup_epochs: int = 1,
        labels: torch.Tensor | None = None,
        class_balanced: bool = False,
        seed: int = 0,
        pool: object | None = None,
    ) -> None:
        if score not in SCORES:
            raise ValueError(f"in-run selection ranks by one of {', '.join(SCORES)}; got score {score!r}")
        if not isinstance(warmup_epochs, int) or warmup_epochs < 1:
            raise ValueError(f"warmup_epochs must be an int >= 1, got {warmup_epochs!r}")
        if score == "forgetting" and warmup_epochs < 2:
            raise ValueError(
                "forgetting events compare a sample's presentations across epochs: in-run selection by "
                f"forgetting needs at least 2 warm-up epochs (--score-epochs 2), got {warmup_epochs}"
            )
        self.pool = torch.arange(num_samples) if pool is None else torch.sort(as_indices(pool, num_samples)).values
        kept_count(fraction, len(self.pool))  # refuses a bad fraction now, not after the warm-up
        self.num_samples, self.fraction, self.method, self.score = num_samples, fraction, method, score
        self.warmup_epochs, self.labels, self.class_balanced, self.seed = warmup_epochs, labels, class_balanced, seed
        self.forgetting = ForgettingTracker(num_samples)
        self.values: dict[str, torch.Tensor] = {}  # the scoring pass's scores, over all ids (NaN off the pool)
        self.kept: torch.Tensor | None = None

    def on_batch(self, ids: torch.Tensor, scores, adv_loss: torch.Tensor) -> None:
        if self.kept is None:
            self.forgetting.on_batch(ids, scores, adv_loss)

    def scoring_request(self, epoch: int) -> ScoringRequest | None:
        """At the end of the warm-up, a pass over the pool (unless the score comes from the steps)."""
        if epoch < self.warmup_epochs or self.kept is not None or self.score in STEP_SCORES:
            return None
        return ScoringRequest(self.pool, adversarial=self.score.startswith("adv_"), deepfool=self.score == "deepfool")

    def set_scores(self, scores: dict[str, torch.Tensor]) -> None:
        """The scoring pass's per-sample scores (name -> [num_samples]; adversarial ones named adv_*)."""
        self.values = {name: torch.as_tensor(v).detach().cpu().float() for name, v in scores.items()}

    def scores(self) -> dict[str, torch.Tensor]:
        """The scores recorded so far, on the CPU: the pass's, and the forgetting counts."""
        return {**self.values, "forgetting": self.forgetting.scores()}

    def epoch_indices(self, epoch: int, num_samples: int | None = None) -> torch.Tensor:
        if num_samples is not None and num_samples != self.num_samples:
            raise ValueError(f"this selector covers {self.num_samples} samples, the loader serves {num_samples}")
        if epoch < self.warmup_epochs:
            return self.pool.clone()
        if self.kept is None:
            self.kept = self._select()
        return self.kept

    def _select(self) -> torch.Tensor:
        scores = self.scores()
        if self.score not in scores:
            raise RuntimeError(
                f"selecting by {self.score} needs the scoring pass of the end of the warm-up, which has not run: "
                "the training loop must run scoring_request() before epoch_indices()"
            )
        values = hardness(scores, self.score)[self.pool]
        labels = self.labels[self.pool] if self.labels is not None else None
        chosen = select(
            values, self.fraction, self.method, labels=labels, seed=self.seed, class_balanced=self.class_balanced
        )
        return self.pool[chosen]

    def state_dict(self) -> dict:
        return {
            "values": {k: v.clone() for k, v in self.values.items()},
            "forgetting": self.forgetting.state_dict(),
            "kept": self.kept,
        }

    def load_state_dict(self, state: dict) -> None:
        self.values = {k: v.clone() for k, v in state["values"].items()}
        self.forgetting.load_state_dict(state["forgetting"])
        self.kept = state["kept"]
