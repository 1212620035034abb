"""DeepFool distances (Moosavi-Dezfooli et al. 2016) as a hardness score: each sample's l2 distance to
the model's decision boundary, found by batched DeepFool iterations (linearise every class's margin to
the labelled class, step to the nearest linearised boundary, repeat until the prediction changes).
For a linear model the first step lands exactly on the boundary, so the distance is exact there.
A small distance means a sample near the boundary: hard. The score is named `deepfool`."""

from __future__ import annotations

import torch
from torch import nn

from advprune.attacks import model_mode

NUDGE = 1e-4  # logit units added to each step, so that it crosses the linearised boundary


def deepfool_distance(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, max_iter: int = 50, overshoot: float = 0.02
) -> torch.Tensor:
    """[N] float32 distances: the l2 norm of the accumulated DeepFool step at the first iterate, taken with
    the step scaled by (1 + overshoot), that the model no longer assigns to y; 0 for a sample it already
    misclassifies, inf for one still unchanged after max_iter steps. Input space distances, not clipped
    to [0, 1]. Each iteration judges the samples left with one forward without gradients, then steps only
    those still assigned to y: a forward and a backward per other class (model in eval mode)."""
    if max_iter < 1 or overshoot < 0:
        raise ValueError(f"max_iter must be >= 1 and overshoot >= 0, got {max_iter} and {overshoot}")
    x, y = x.detach(), y.detach()
    distance = torch.full((len(y),), float("inf"), device=x.device)
    total = torch.zeros_like(x)  # each sample's accumulated step
    left = torch.arange(len(y), device=x.device)  # the samples still classified as y
    # float32 whatever the caller's autocast (bfloat16 logits cannot resolve the small steps near a boundary),
    # and gradients also inside a caller's no_grad (scoring passes)
    no_autocast = torch.autocast(x.device.type, enabled=False)
    with model_mode(model, "eval"), no_autocast:
        for iteration in range(max_iter + 1):
            x_try = x[left] + (1 + overshoot) * total[left]
            with torch.no_grad():  # a sample that flipped needs no gradients: early on, most of them
                flipped = model(x_try).float().argmax(1) != y[left]
            distance[left[flipped]] = total[left[flipped]].flatten(1).norm(dim=1).float()
            left, x_try = left[~flipped], x_try[~flipped]
            if len(left) == 0 or iteration == max_iter:
                break
            with torch.enable_grad():
                x_try.requires_grad_(True)
                total[left] += _nearest_boundary_step(model(x_try).float(), x_try, y[left])
    return distance


def _nearest_boundary_step(logits: torch.Tensor, x_try: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The step r = (|f_k| + NUDGE) / ||w_k||^2 * w_k to the nearest linearised boundary, with f_k = logit_k -
    logit_y and w_k its input gradient, k over the other classes. C - 1 backward passes: pass j takes each
    row's class (y + j) mod C, so that no pass is spent on a row's own (zero) margin."""
    n_classes = logits.shape[1]
    margins = logits - logits.gather(1, y[:, None])  # [n, C]: 0 in the labelled class
    others = (y[:, None] + torch.arange(1, n_classes, device=y.device)) % n_classes  # [n, C - 1]
    others_margins = margins.gather(1, others)
    grads = []
    for j in range(n_classes - 1):  # each row's gradient is its own: the model is in eval mode
        (g,) = torch.autograd.grad(others_margins[:, j].sum(), x_try, retain_graph=j + 2 < n_classes)
        grads.append(g.flatten(1))
    w = torch.stack(grads, dim=1)  # [n, C - 1, D]
    f = others_margins.detach()
    norms = w.norm(dim=2).clamp_min(1e-12)
    k = (f.abs() / norms).argmin(1)
    rows = torch.arange(len(k), device=k.device)
    scale = (f[rows, k].abs() + NUDGE) / norms[rows, k] ** 2
    return (scale[:, None] * w[rows, k]).view_as(x_try).to(x_try.dtype)
