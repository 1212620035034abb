"""Static selectors: per-sample scores in, a sorted tensor of kept sample ids out.

Convention: a higher score means a harder (less typical) sample, as for EL2N,
the loss, the GraNd proxy and the count of forgetting events. Every selector
keeps exactly round(fraction * N) distinct ids in [0, N) and is deterministic
for a seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from advprune.ids import class_quotas

METHODS = ("random", "balanced", "hardest", "easiest", "both-ends", "ccs")
# negated to rank hardest-first (deepfool: the distance to the boundary, far = easy)
EASY_IS_HIGH = ("margin", "confidence", "adv_margin", "adv_confidence", "deepfool")


def hardness(scores: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """The named score of a dict of scores with higher = harder; ValueError listing the scores there are."""
    if name not in scores:
        raise ValueError(f"the scores hold no {name!r} (they hold {', '.join(sorted(scores))})")
    values = torch.as_tensor(scores[name]).to(torch.float64)
    if name == "deepfool":  # inf: not moved across the boundary within DeepFool's iterations, the farthest of all
        finite = values[torch.isfinite(values)]
        values = torch.where(values == float("inf"), (finite.max() + 1) if len(finite) else 1.0, values)
    return -values if name in EASY_IS_HIGH else values


def kept_count(fraction: float, n: int) -> int:
    """round(fraction * n), halves rounded up; ValueError when fraction is outside (0, 1] or keeps nothing."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    k = math.floor(fraction * n + 0.5)
    if k < 1:
        raise ValueError(f"fraction {fraction} of {n} samples keeps none: keep at least one")
    return k


def _as_scores(scores: object, method: str) -> torch.Tensor:
    if isinstance(scores, int) and not isinstance(scores, bool):
        if method not in ("random", "balanced"):
            raise TypeError(f"method {method!r} needs a score per sample, got only the count {scores}")
        if scores < 1:
            raise ValueError(f"the number of samples must be >= 1, got {scores}")
        return torch.zeros(scores, dtype=torch.float64)
    t = torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor) else scores)
    if t.dim() != 1 or len(t) == 0:
        raise ValueError(f"scores must be a non-empty 1-D tensor (one per sample), got shape {list(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"scores must be real numbers, got {t.dtype}")
    t = t.detach().to("cpu", torch.float64)
    if not torch.isfinite(t).all() and method not in ("random", "balanced"):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"scores hold {bad} NaN or infinite values: score every sample first")
    return t


def _as_labels(labels: object, n: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"labels must be integer classes, got {t.dtype}")
    if t.shape != (n,):
        raise ValueError(f"labels must have shape [{n}] (one per score), got {list(t.shape)}")
    if int(t.min()) < 0:
        raise ValueError(f"labels must be >= 0, got {int(t.min())}")
    return t.to("cpu", torch.int64)


def _ranked(scores: torch.Tensor, k: int, hardest: bool, generator: torch.Generator) -> torch.Tensor:
    """The positions of the k highest (or lowest) scores; ties broken at random for the seed."""
    shuffle = torch.randperm(len(scores), generator=generator)
    keys = scores[shuffle]
    order = torch.argsort(-keys if hardest else keys, stable=True)
    return shuffle[order[:k]]


def _both_ends(scores: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """The hardest ceil(k / 2) and the easiest floor(k / 2) (Kaufmann et al. 2022's low+high)."""
    order = _ranked(scores, len(scores), hardest=True, generator=generator)
    easy = k // 2
    return torch.cat([order[: k - easy], order[len(order) - easy :]])


def _random(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=generator)[:k]


def _stratified(scores: torch.Tensor, k: int, generator: torch.Generator, strata: int) -> torch.Tensor:
    """Coverage-centric sampling (Zheng et al. 2023): split the score range into equal-width
    strata and spend the budget evenly over them, the smallest stratum first, at random inside each."""
    lo, hi = float(scores.min()), float(scores.max())
    width = (hi - lo) / strata or 1.0
    bins = ((scores - lo) / width).floor().clamp_(0, strata - 1).to(torch.int64)
    members = [torch.nonzero(bins == b).squeeze(1) for b in range(strata)]
    members = [m for m in members if len(m)]
    members.sort(key=len)
    kept, budget = [], k
    for i, m in enumerate(members):
        take = min(len(m), budget // (len(members) - i))
        kept.append(m[torch.randperm(len(m), generator=generator)[:take]])
        budget -= take
    return torch.cat(kept)


def _ccs(scores: torch.Tensor, k: int, generator: torch.Generator, beta: float | None, strata: int) -> torch.Tensor:
    n = len(scores)
    if beta is None:
        beta = min(0.1, 1 - k / n)  # drop the hardest 10% (mislabelled, ambiguous) when the budget allows
    if not 0 <= beta < 1:
        raise ValueError(f"ccs beta (the hardest share dropped) must be in [0, 1), got {beta}")
    drop = math.floor(beta * n)
    if n - drop < k:
        raise ValueError(f"ccs: dropping the hardest {beta:.3g} leaves {n - drop} samples, fewer than the {k} to keep")
    pool = _ranked(scores, n - drop, hardest=False, generator=generator)  # all but the hardest `drop`
    return pool[_stratified(scores[pool], k, generator, strata)]


def select(
    scores: object,
    fraction: float,
    method: str = "random",
    *,
    labels: object | None = None,
    seed: int = 0,
    class_balanced: bool | None = None,
    beta: float | None = None,
    strata: int = 50,
) -> torch.Tensor:
    """The sorted int64 ids of the samples to keep: exactly round(fraction * N), distinct, in [0, N).

    scores: one per sample, higher = harder (for random and balanced only its length counts; an
    int N works too). method: random; balanced (class-balanced random, needs labels); hardest /
    easiest (the highest / lowest scores); both-ends (half from each end: the paper's low+high);
    ccs (coverage-centric: drop the hardest beta, default 0.1, then sample evenly across `strata`
    equal-width score strata). class_balanced=True (or
    labels given to any method but random) applies the method inside each class, each class
    keeping the same fraction.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    values = _as_scores(scores, method)
    n = len(values)
    k = kept_count(fraction, n)
    if method == "balanced":
        if labels is None:
            raise ValueError("method 'balanced' needs labels (one class per sample)")
        class_balanced = True
    if class_balanced is None:
        class_balanced = labels is not None and method != "random"
    if class_balanced and labels is None:
        raise ValueError("class_balanced=True needs labels (one class per sample)")
    if strata < 1:
        raise ValueError(f"strata must be >= 1, got {strata}")
    generator = torch.Generator().manual_seed(seed)

    def pick(part: torch.Tensor, count: int) -> torch.Tensor:
        if method in ("random", "balanced"):
            return _random(len(part), count, generator)
        if method == "ccs":
            return _ccs(part, count, generator, beta, strata)
        if method == "both-ends":
            return _both_ends(part, count, generator)
        return _ranked(part, count, hardest=method == "hardest", generator=generator)

    if not class_balanced:
        kept = pick(values, k)
    else:
        classes = _as_labels(labels, n)
        parts = []
        for c, quota in enumerate(class_quotas(classes, k).tolist()):
            if quota:
                members = torch.nonzero(classes == c).squeeze(1)
                parts.append(members[pick(values[members], quota)])
        kept = torch.cat(parts)
    return torch.sort(kept).values
