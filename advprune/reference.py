"""Pure-PyTorch reference of every advprune op.

The tests run these in float64 against the kernels; they also serve, with one
warning, when the compiled extension is missing. Half-precision inputs are
computed in float32 and rounded once, as the kernels do.
"""

from __future__ import annotations

import torch

from advprune import _checks
from advprune._types import SampleScores


def _opmath(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def pgd_step_(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_nat: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    norm: str = "linf",
    clip_min: float = 0.0,
    clip_max: float = 1.0,
) -> torch.Tensor:
    """One PGD ascent step on x_adv in place; NaN gradient entries count as 0."""
    _checks.check_pgd("advprune.pgd_step_", x_adv, grad, x_nat, eps, step_size, norm, clip_min, clip_max)
    if x_adv.numel() == 0:
        return x_adv
    x, n = _opmath(x_adv), _opmath(x_nat)
    g = _opmath(grad)
    g = torch.where(torch.isnan(g), torch.zeros_like(g), g)
    if norm == "linf":
        out = _project_linf(x + step_size * torch.sign(g), n, eps, clip_min, clip_max)
    else:
        flat_g = g.reshape(g.shape[0], -1)
        gnorm = flat_g.norm(dim=1).clamp_min(1e-12)
        step = (step_size / gnorm).reshape(-1, *([1] * (x.dim() - 1)))
        out = _project_l2(x + step * g, n, eps, clip_min, clip_max)
    x_adv.copy_(out)
    return x_adv


def project_(
    x_adv: torch.Tensor,
    x_nat: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    clip_min: float = 0.0,
    clip_max: float = 1.0,
) -> torch.Tensor:
    """Projects x_adv in place onto the eps-ball around x_nat, then the clip range."""
    _checks.check_pgd("advprune.project_", x_adv, None, x_nat, eps, None, norm, clip_min, clip_max)
    if x_adv.numel() == 0:
        return x_adv
    x, n = _opmath(x_adv), _opmath(x_nat)
    out = _project_linf(x, n, eps, clip_min, clip_max) if norm == "linf" else _project_l2(x, n, eps, clip_min, clip_max)
    x_adv.copy_(out)
    return x_adv


def _project_linf(x: torch.Tensor, n: torch.Tensor, eps: float, lo: float, hi: float) -> torch.Tensor:
    return torch.clamp(torch.minimum(torch.maximum(x, n - eps), n + eps), lo, hi)


def _project_l2(x: torch.Tensor, n: torch.Tensor, eps: float, lo: float, hi: float) -> torch.Tensor:
    delta = x - n
    dnorm = delta.reshape(delta.shape[0], -1).norm(dim=1)
    scale = torch.where(dnorm > eps, eps / dnorm.clamp_min(torch.finfo(dnorm.dtype).tiny), torch.ones_like(dnorm))
    return torch.clamp(n + delta * scale.reshape(-1, *([1] * (x.dim() - 1))), lo, hi)


def sample_scores(logits: torch.Tensor, labels: torch.Tensor) -> SampleScores:
    """Per-sample cross-entropy, margin, EL2N, entropy, confidence and correctness."""
    _checks.check_scores(logits, labels)
    z = _opmath(logits)
    y = labels.unsqueeze(1)
    logp = torch.log_softmax(z, dim=1)
    p = logp.exp()
    loss = -logp.gather(1, y).squeeze(1)
    z_y = z.gather(1, y).squeeze(1)
    other = z.scatter(1, y, float("-inf")).amax(dim=1) if z.shape[0] else z_y
    onehot = torch.zeros_like(p).scatter_(1, y, 1.0)
    el2n = (p - onehot).norm(dim=1)
    entropy = -(p * logp).sum(dim=1)
    confidence = p.gather(1, y).squeeze(1)
    correct = z.argmax(dim=1) == labels if z.shape[0] else torch.zeros_like(labels, dtype=torch.bool)
    f32 = torch.float32
    return SampleScores(loss.to(f32), (z_y - other).to(f32), el2n.to(f32), entropy.to(f32), confidence.to(f32), correct)


def kl_rows(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Per-row KL(softmax(p) || softmax(q)), differentiable through autograd."""
    _checks.check_kl("advprune.kl_rows", logits_p, logits_q)
    logp = torch.log_softmax(_opmath(logits_p), dim=1)
    logq = torch.log_softmax(_opmath(logits_q), dim=1)
    return (logp.exp() * (logp - logq)).sum(dim=1).to(logits_p.dtype)


def kl_rows_backward(
    grad: torch.Tensor, logits_p: torch.Tensor, logits_q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of sum(grad * kl_rows(p, q)) with respect to p and q, in closed form."""
    _checks.check_kl("advprune.kl_rows_backward", logits_p, logits_q)
    logp = torch.log_softmax(_opmath(logits_p), dim=1)
    logq = torch.log_softmax(_opmath(logits_q), dim=1)
    p = logp.exp()
    kl = (p * (logp - logq)).sum(dim=1, keepdim=True)
    g = _opmath(grad).to(p.dtype).unsqueeze(1)
    dp = g * p * (logp - logq - kl)
    dq = g * (logq.exp() - p)
    return dp.to(logits_p.dtype), dq.to(logits_q.dtype)
