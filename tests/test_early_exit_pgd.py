"""Early-exit PGD (attacks.pgd_robust): a sample leaves the attack at its first misclassified iterate.
Checked against a full-batch PGD run that records every iterate, in float64 with noise keyed by sample id,
so that both meet each sample from the same start and only the batch composition differs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from advprune import attacks, ops
from advprune.evaluate import evaluate
from advprune.ids import KeyedNoise

EPS, STEP, STEPS = 0.1, 0.02, 8


class RowCounter(nn.Module):
    """The model, counting the rows it is given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += len(x)
        return self.model(x)


@pytest.fixture
def model64(trained):
    model, x, y = trained
    return copy.deepcopy(model).double().eval(), x.double(), y


def reference(model, x, y, ids, restarts: int = 1):
    """Full-batch PGD: per sample, whether the clean input or any iterate of any restart is misclassified,
    and the rows early exit needs (the clean forward, then for each sample not yet broken its iterates up
    to the first misclassified one)."""
    with torch.no_grad():
        broken = model(x).argmax(1) != y
    rows, noise = len(y), KeyedNoise(ids, seed=5, epoch=0)
    for _ in range(restarts):
        alive = ~broken
        first = torch.full((len(y),), STEPS + 1)  # each sample's first misclassified iterate (STEPS + 1: none)
        x_adv = attacks.random_init(x, EPS, "linf", noise)
        for step in range(STEPS + 1):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            first[(logits.argmax(1) != y) & (first > STEPS)] = step
            grad = torch.autograd.grad(nn.functional.cross_entropy(logits, y, reduction="sum"), x_adv)[0]
            x_adv = x_adv.detach()
            if step < STEPS:
                ops.pgd_step_(x_adv, grad, x, eps=EPS, step_size=STEP)
        rows += int((first[alive].clamp_max(STEPS) + 1).sum())
        broken |= alive & (first <= STEPS)
    return ~broken, rows


@pytest.mark.parametrize("restarts", [1, 3])
def test_early_exit_judges_each_sample_as_the_full_batch_run(model64, restarts):
    model, x, y = model64
    ids = torch.arange(len(y)) * 7 + 3
    expected, expected_rows = reference(model, x, y, ids, restarts)
    counter = RowCounter(model)
    robust = attacks.pgd_robust(
        counter, x, y, eps=EPS, step_size=STEP, steps=STEPS, restarts=restarts, generator=KeyedNoise(ids, 5, 0)
    )
    assert robust.dtype == torch.bool and torch.equal(robust, expected)
    assert 0 < int(robust.sum()) < int((model(x).argmax(1) == y).sum())  # the attack broke some, not all
    assert counter.rows == expected_rows  # a broken sample is never attacked again
    assert counter.rows < (STEPS + 1) * restarts * len(y) * 0.9


def test_early_exit_takes_the_callers_clean_verdicts(model64):
    """Given which samples the model classifies right (as evaluate has them), the same flags without the
    clean forward; a verdict the caller gives is used as it is (a sample called wrong is never attacked)."""
    model, x, y = model64
    ids, attack = torch.arange(len(y)), dict(eps=EPS, step_size=STEP, steps=STEPS)
    expected = attacks.pgd_robust(model, x, y, **attack, generator=KeyedNoise(ids, 2, 0))
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    counter = RowCounter(model)
    given = attacks.pgd_robust(counter, x, y, **attack, generator=KeyedNoise(ids, 2, 0), correct=correct)
    assert torch.equal(given, expected) and int(expected.sum()) > 0
    unaided = RowCounter(model)
    attacks.pgd_robust(unaided, x, y, **attack, generator=KeyedNoise(ids, 2, 0))
    assert counter.rows == unaided.rows - len(y)  # the one clean forward saved
    called_wrong = correct.clone()
    called_wrong[torch.nonzero(expected)[0]] = False
    flags = attacks.pgd_robust(model, x, y, **attack, generator=KeyedNoise(ids, 2, 0), correct=called_wrong)
    assert torch.equal(flags, expected & called_wrong)
    assert torch.equal(correct, model(x).argmax(1) == y)  # the caller's tensor is not written


@pytest.mark.parametrize(
    "correct, match",
    [
        (lambda y: (y > 4).int(), "bool per sample"),
        (lambda y: torch.ones(len(y) + 1, dtype=torch.bool), r"\(shape \[128\]\), got torch.bool of shape \[129\]"),
        (lambda y: [True] * len(y), "list"),
        (lambda y: torch.ones(len(y), dtype=torch.bool, device="meta"), "meta"),
    ],
)
def test_early_exit_refuses_bad_clean_verdicts(model64, correct, match):
    model, x, y = model64
    with pytest.raises(ValueError, match=match):
        attacks.pgd_robust(model, x, y, eps=EPS, step_size=STEP, steps=2, correct=correct(y))


def test_early_exit_is_at_least_as_strong_as_the_last_iterate(model64):
    """Over five random starts (one start's count of such samples is small and moves with the thread count's
    rounding: none at all in one run pinned to one core)."""
    model, x, y = model64
    ids, attack = torch.arange(len(y)), dict(eps=EPS, step_size=0.05, steps=20)  # a large step: iterates oscillate
    missed_by_last = 0
    for seed in range(5, 10):
        robust = attacks.pgd_robust(model, x, y, **attack, generator=KeyedNoise(ids, seed, 0))
        x_adv = attacks.pgd(model, x, y, **attack, generator=KeyedNoise(ids, seed, 0))
        with torch.no_grad():
            last_iterate = model(x_adv).argmax(1) == y
        assert not (robust & ~last_iterate).any()  # every sample the last iterate breaks is broken
        missed_by_last += int((last_iterate & ~robust).sum())
    assert missed_by_last > 0  # and some an earlier iterate broke that the last one missed


def test_evaluate_counts_pgd_with_early_exit(trained):
    model, x, y = trained
    result = evaluate(model, x, y, attack="pgd", eps=EPS, step_size=STEP, steps=STEPS, seed=4, batch_size=50)
    expected = sum(
        int(
            attacks.pgd_robust(
                model, x[i : i + 50], y[i : i + 50], eps=EPS, step_size=STEP, steps=STEPS, generator=generator
            ).sum()
        )
        for generator in [torch.Generator().manual_seed(4)]
        for i in range(0, len(y), 50)
    )
    assert result["robust_acc"] == expected / len(y) and 0 < result["robust_acc"] < result["clean_acc"]


def test_early_exit_refuses_bad_arguments(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="restarts"):
        attacks.pgd_robust(model, x, y, eps=EPS, step_size=STEP, steps=2, restarts=0)
    with pytest.raises(ValueError, match="loss"):
        attacks.pgd_robust(model, x, y, eps=EPS, step_size=STEP, steps=2, loss="hinge")
    with pytest.raises(TypeError, match="pgd_robust"):
        attacks.pgd_robust(model, x, y.int(), eps=EPS, step_size=STEP, steps=2)
