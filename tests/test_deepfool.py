"""DeepFool distances: exact for a linear model in one step, sane for a CNN, kept by sample id through a scoring
pass, and usable as a prune score (`deepfool:F` keeps the samples nearest the boundary)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advprune.deepfool import deepfool_distance
from advprune.pruning import parse_spec
from advprune.pruning.select import hardness
from advprune.scores import score_pass


def linear_model(seed: int, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, classes)).double()
    with torch.no_grad():
        model[1].weight.mul_(4)
    return model.eval()


def exact_linear_distance(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The distance to the nearest facet of the region where y wins: min over k != y of
    |f_k - f_y| / ||w_k - w_y|| (the region is a convex polytope)."""
    w, b = model[1].weight, model[1].bias
    f = x.flatten(1) @ w.T + b
    margins = (f - f.gather(1, y[:, None])).abs()
    norms = (w[None, :, :] - w[y][:, None, :]).norm(dim=2)
    ratio = margins / norms
    ratio.scatter_(1, y[:, None], float("inf"))
    return ratio.min(1).values


@pytest.mark.parametrize(("seed", "classes"), [(0, 5), (1, 5), (2, 5), (5, 2)])  # 2: one other class, one pass
def test_one_deepfool_step_is_exact_for_a_linear_model(seed, classes):
    model = linear_model(seed, classes)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, 2, 2, dtype=torch.float64, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    wrong = torch.arange(0, 64, 9)
    y[wrong] = (y[wrong] + 1) % classes  # misclassified as they are: distance 0
    got = deepfool_distance(model, x, y, max_iter=1, overshoot=0.02)
    want = exact_linear_distance(model, x, y)
    right = torch.ones(64, dtype=torch.bool)
    right[wrong] = False
    assert got.dtype == torch.float32 and torch.equal(got[wrong], torch.zeros(len(wrong)))
    assert want[right].min() > 1e-3  # the test means something: no sample sits on a boundary
    # exact but for the step's nudge past the boundary: NUDGE / ||w_k - w_y||, a few 1e-5 here
    torch.testing.assert_close(got[right].double(), want[right], rtol=1e-5, atol=1e-4)
    assert (got[right].double() >= want[right] - 1e-9).all()  # never short of the boundary


def test_deepfool_on_a_cnn_flips_every_correct_sample_at_a_positive_distance(trained):
    model, x, y = trained
    x, y = x[:48], y[:48]
    distance = deepfool_distance(model, x, y)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert torch.isfinite(distance).all() and (distance[correct] > 0).all() and (distance[~correct] == 0).all()
    assert torch.equal(distance, deepfool_distance(model, x, y))  # deterministic
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="max_iter"):
        deepfool_distance(model, x, y, max_iter=0)


def test_deepfool_spends_no_gradients_on_a_sample_already_misclassified():
    model = linear_model(3)
    x = torch.randn(40, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:30] = (y[:30] + 1) % 5  # 30 of 40 misclassified as they are
    rows_with_gradients = []

    class Counting(nn.Module):
        def forward(self, v):
            if torch.is_grad_enabled():
                rows_with_gradients.append(len(v))
            return model(v)

    distance = deepfool_distance(Counting(), x, y, max_iter=1)
    assert rows_with_gradients == [10]  # one step, on the ten classified right; none after the last check
    assert torch.equal(distance[:30], torch.zeros(30)) and (distance[30:] > 0).all()


def test_a_scoring_pass_keeps_each_distance_with_its_sample(trained):
    model, x, y = trained
    x, y = x[:40], y[:40]
    ids = torch.randperm(40, generator=torch.Generator().manual_seed(3))  # the batches serve ids out of order
    batches = [(x[ids[i : i + 16]], y[ids[i : i + 16]], ids[i : i + 16]) for i in range(0, 40, 16)]
    scores = score_pass(model, batches, 40, deepfool=True)
    torch.testing.assert_close(scores["deepfool"], deepfool_distance(model, x, y), rtol=1e-4, atol=1e-6)
    assert "deepfool" not in score_pass(model, batches, 40)


def test_deepfool_as_a_prune_score_keeps_the_nearest_to_the_boundary():
    spec = parse_spec("deepfool:0.25")
    assert (spec.method, spec.score) == ("hardest", "deepfool")
    distances = {"deepfool": torch.tensor([0.5, 0.1, float("inf"), 2.0, 0.3])}
    ranked = hardness(distances, "deepfool")
    assert ranked.argmax() == 1 and ranked.argmin() == 2  # the nearest is the hardest, one never moved the easiest
    assert torch.isfinite(ranked).all()  # so that the selectors take it
