"""From a prune spec to what a training run needs: the kept ids of a static selector (over
scores from a file, or from short warm-up runs scored here), a selector scored in the run by
its own training steps, or a dynamic pruner. Used by the `advprune` command; the pieces work
on their own too."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from advprune.data import make_loader
from advprune.data.readers import Dataset
from advprune.pruning import DynamicPruner, KeepHardPruner, PruneSpec, WarmupSelector, select
from advprune.pruning.select import hardness
from advprune.pruning.warmup import SCORES as IN_RUN_SCORES
from advprune.scores import ForgettingTracker, average_scores, score_pass


def score_model(
    model: nn.Module,
    data: Dataset,
    *,
    attack: str = "fgsm",
    eps: float = 0.0,
    steps: int = 2,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    seed: int = 0,
    deepfool: bool = False,
) -> dict[str, torch.Tensor]:
    """Clean scores of every sample (with deepfool=True its DeepFool distance too), and with attack fgsm
    or pgd the same on adversarial inputs under names prefixed adv_ (adv_el2n, adv_loss, ...)."""

    def batches():
        return make_loader(
            data, backend="memory", batch_size=batch_size, order="sequential", augment=False, device=device
        )

    model = model.to(device)
    scores = score_pass(model, batches(), len(data), device=device, deepfool=deepfool)
    if attack != "none":
        adv = score_pass(model, batches(), len(data), attack=attack, eps=eps, steps=steps, seed=seed, device=device)
        scores.update({f"adv_{name}": values for name, values in adv.items()})
    return scores


def warmup_scores(
    train_briefly: Callable[[int, ForgettingTracker], nn.Module],
    data: Dataset,
    *,
    seeds: int = 1,
    **score_kwargs,
) -> dict[str, torch.Tensor]:
    """Scores averaged over `seeds` short runs: train_briefly(seed, tracker) trains a fresh model
    for the warm-up epochs (feeding the tracker) and returns it; each is scored on all data."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    runs = []
    for seed in range(seeds):
        tracker = ForgettingTracker(len(data))
        model = train_briefly(seed, tracker)
        scores = score_model(model, data, seed=seed, **score_kwargs)
        scores["forgetting"] = tracker.scores().to(torch.float32)
        runs.append(scores)
    return average_scores(runs)


def static_indices(
    spec: PruneSpec,
    num_samples: int,
    labels: torch.Tensor,
    *,
    scores: dict[str, torch.Tensor] | None = None,
    class_balanced: bool = False,
    seed: int = 0,
    pool: torch.Tensor | None = None,
) -> torch.Tensor:
    """The kept ids of a static spec (random, balanced, hardest/easiest/ccs by a score), chosen from
    `pool` (default: all ids; the fraction is of the pool)."""
    pool = torch.arange(num_samples) if pool is None else pool
    if spec.is_dynamic:
        raise ValueError(f"{spec.method} prunes each epoch: it has no fixed selection")
    if spec.needs_scores:
        if scores is None:
            raise ValueError(f"{spec.method}:{spec.fraction} ranks by {spec.score}: it needs scores")
        values = hardness(scores, spec.score)
        if len(values) != num_samples:
            raise ValueError(
                f"the scores cover {len(values)} samples but the training set has {num_samples}: "
                "score the same data (the same --limit)"
            )
        values = values[pool]
    else:
        values = len(pool)
    kept = select(values, spec.fraction, spec.method, labels=labels[pool], seed=seed, class_balanced=class_balanced)
    return pool[kept]


def dynamic_pruner(
    spec: PruneSpec, num_samples: int, epochs: int, seed: int = 0, pool: torch.Tensor | None = None
) -> DynamicPruner | KeepHardPruner:
    """dynamic:R drops a share R of the below-mean-loss samples each epoch; keep-hard:F keeps a share F,
    hardest first; resample:F a fresh random share F each epoch (static random's budget, all the data seen)."""
    if spec.method == "dynamic":
        return DynamicPruner(num_samples, epochs, ratio=spec.fraction, seed=seed, pool=pool)
    if spec.method == "keep-hard":
        return KeepHardPruner(num_samples, epochs, keep=spec.fraction, seed=seed, pool=pool)
    if spec.method == "resample":  # keep-hard's choice with all of the budget explored: no loss consulted
        return KeepHardPruner(num_samples, epochs, keep=spec.fraction, explore=1.0, seed=seed, pool=pool)
    raise ValueError(f"{spec.method} is a static selector, not a dynamic pruner")


def warmup_selector(
    spec: PruneSpec,
    num_samples: int,
    labels: torch.Tensor,
    *,
    warmup_epochs: int = 1,
    class_balanced: bool = False,
    seed: int = 0,
    pool: torch.Tensor | None = None,
) -> WarmupSelector:
    """In-run selection of a score-based spec: the warm-up epochs train on the whole pool, a scoring pass at
    their end scores every pooled sample with the model as it is then, and the spec's selector keeps its
    fraction (forgetting: counted by the warm-up's steps instead)."""
    if spec.score not in IN_RUN_SCORES:
        raise ValueError(
            f"{spec.score} cannot be scored in the run (in-run scores: {', '.join(IN_RUN_SCORES)}): "
            "add --score-pass or --scores FILE"
        )
    return WarmupSelector(
        num_samples,
        spec.fraction,
        spec.method,
        spec.score,
        warmup_epochs=warmup_epochs,
        labels=labels,
        class_balanced=class_balanced,
        seed=seed,
        pool=pool,
    )


class Stopwatch:
    """Seconds spent in a block, accumulated."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds += time.perf_counter() - self._start
