"""Attacks: inside the ball and [0, 1], stronger than clean, as strong as torchattacks,
fine under autocast and channels_last, and no weight gradient left behind."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from advprune import attacks


@pytest.mark.parametrize("norm,eps,step", [("linf", 0.1, 0.025), ("l2", 1.5, 0.4)])
def test_pgd_stays_in_ball_and_raises_the_loss(trained, norm, eps, step):
    model, x, y = trained
    x_adv = attacks.pgd(
        model, x, y, eps=eps, step_size=step, steps=5, norm=norm, generator=torch.Generator().manual_seed(1)
    )
    delta = (x_adv - x).flatten(1)
    if norm == "linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert (delta.norm(dim=1) <= eps * (1 + 1e-5)).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y) + 0.1
    assert all(p.grad is None for p in model.parameters())


def test_pgd_at_least_as_strong_as_torchattacks(trained):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = trained
    torch.manual_seed(2)
    theirs = torchattacks.PGD(model, eps=0.1, alpha=0.025, steps=10, random_start=True)(x, y)
    ours = attacks.pgd(model, x, y, eps=0.1, step_size=0.025, steps=10, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        acc_theirs = (model(theirs).argmax(1) == y).float().mean().item()
        acc_ours = (model(ours).argmax(1) == y).float().mean().item()
        clean = (model(x).argmax(1) == y).float().mean().item()
    assert acc_ours < clean - 0.1
    assert acc_ours <= acc_theirs + 0.02, (acc_ours, acc_theirs)


def test_restarts_keep_the_strongest_example(trained):
    model, x, y = trained
    single = attacks.pgd(model, x, y, eps=0.1, step_size=0.025, steps=3, generator=torch.Generator().manual_seed(3))
    multi = attacks.pgd(
        model, x, y, eps=0.1, step_size=0.025, steps=3, restarts=3, generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        l_single = F.cross_entropy(model(single), y, reduction="none")
        l_multi = F.cross_entropy(model(multi), y, reduction="none")
    assert (l_multi >= l_single - 1e-5).all()  # the first restart is the single run


def test_fgsm_rs_and_trades(trained):
    model, x, y = trained
    gen = torch.Generator().manual_seed(4)
    x_fgsm = attacks.fgsm_rs(model, x, y, eps=0.1, generator=gen)
    assert (x_fgsm - x).abs().max() <= 0.1 + 1e-6
    x_trades = attacks.trades_perturb(model, x, eps=0.1, step_size=0.025, steps=3, generator=gen)
    assert (x_trades - x).abs().max() <= 0.1 + 1e-6
    logits_clean = model(x)
    logits_adv = model(x_trades)
    per_sample, loss = attacks.trades_loss(logits_clean, logits_adv, y, beta=6.0)
    assert per_sample.shape == (128,) and loss > F.cross_entropy(logits_clean, y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_autocast_and_channels_last(trained):
    model, x, y = trained
    model_cl = model.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = attacks.pgd(
            model_cl, x_cl, y, eps=0.1, step_size=0.025, steps=3, generator=torch.Generator().manual_seed(5)
        )
    assert x_adv.dtype == torch.float32 and x_adv.is_contiguous(memory_format=torch.channels_last)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
    model.to(memory_format=torch.contiguous_format)


def test_mode_is_restored_and_bad_options_refused(trained):
    model, x, y = trained
    model.train()
    attacks.pgd(model, x[:8], y[:8], eps=0.1, step_size=0.05, steps=1)
    assert model.training
    model.eval()
    with pytest.raises(ValueError, match="loss must be one of"):
        attacks.pgd(model, x, y, eps=0.1, step_size=0.05, steps=1, loss="hinge")
    with pytest.raises(ValueError, match='mode must be "eval", "train" or "keep"'):
        attacks.pgd(model, x, y, eps=0.1, step_size=0.05, steps=1, mode="frozen")
