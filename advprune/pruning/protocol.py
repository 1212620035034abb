"""What a pruner offers the Trainer (or any training loop), written down once.

A loop feeds every observer (pruners, and trackers such as scores.ForgettingTracker) each batch's
sample ids, ops.sample_scores of the logits the step computed and the per-sample adversarial loss.
A pruner also chooses each epoch's ids, may weight the per-sample losses, and may ask, before an
epoch, for a scoring pass: every sample of `ids` scored by the model as it is then (the loop runs
it, since pruners never hold a model). PrunerBase gives the optional parts their do-nothing
defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from advprune._types import SampleScores


@dataclass(frozen=True)
class ScoringRequest:
    """A pruner's request for a scoring pass before an epoch: every sample of `ids` scored by the
    current model, on clean inputs or on adversarial ones (the training attack)."""

    ids: torch.Tensor
    adversarial: bool
    deepfool: bool = False  # each sample's DeepFool distance too (clean passes)


@runtime_checkable
class BatchObserver(Protocol):
    """Fed with each training batch's results; its state is saved in checkpoints."""

    def on_batch(self, ids: torch.Tensor, scores: SampleScores, adv_loss: torch.Tensor) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class Pruner(BatchObserver, Protocol):
    """Chooses the ids of each epoch (None: no change) and the per-sample loss weights (None: all 1)."""

    def epoch_indices(self, epoch: int, num_samples: int | None = None) -> torch.Tensor | None: ...

    def weights(self, ids: torch.Tensor) -> torch.Tensor | None: ...

    def scoring_request(self, epoch: int) -> ScoringRequest | None: ...

    def set_scores(self, scores: dict[str, torch.Tensor]) -> None: ...


def missing_methods(obj: object, protocol: type) -> list[str]:
    """The methods of `protocol` that `obj` lacks (for an error message that names them)."""
    names = [
        n
        for n in (
            "on_batch",
            "state_dict",
            "load_state_dict",
            "epoch_indices",
            "weights",
            "scoring_request",
            "set_scores",
        )
        if hasattr(protocol, n)
    ]
    return [n for n in names if not callable(getattr(obj, n, None))]


class PrunerBase:
    """Defaults for the optional parts of a Pruner: no weights, no scoring pass, no state."""

    def on_batch(self, ids: torch.Tensor, scores: SampleScores, adv_loss: torch.Tensor) -> None:
        return None

    def weights(self, ids: torch.Tensor) -> torch.Tensor | None:
        return None

    def scoring_request(self, epoch: int) -> ScoringRequest | None:
        return None

    def set_scores(self, scores: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError(f"{type(self).__name__} asked for no scoring pass")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None
