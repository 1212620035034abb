"""Evaluation: clean, PGD-K with restarts, and AutoAttack with the official settings, stage by stage."""

from __future__ import annotations

import copy

import pytest
import torch

from advprune import attacks, autoattack
from advprune.evaluate import evaluate, format_result


def test_clean_and_pgd_accuracy(trained):
    model, x, y = trained
    clean = evaluate(model, x, y, attack="clean", eps=0.1, n=100)
    assert clean["n"] == 100 and 0.5 < clean["clean_acc"] <= 1
    robust = evaluate(model, x, y, attack="pgd", eps=0.1, steps=5, restarts=2, n=100)
    assert robust["clean_acc"] == clean["clean_acc"]
    assert robust["robust_acc"] < clean["clean_acc"]
    text = format_result(robust)
    assert "PGD-5" in text and '"robust_acc"' in text


def test_more_restarts_never_raise_robust_accuracy(trained):
    model, x, y = trained
    accs = [evaluate(model, x, y, attack="pgd", eps=0.06, steps=2, restarts=r, seed=3)["robust_acc"] for r in (1, 4)]
    assert accs[1] <= accs[0]


def test_autoattack_stages_have_the_official_settings(trained):
    pytest.importorskip("torchattacks")
    model, _, _ = trained
    apgd, apgdt, fabt, square = (
        autoattack.stage_attack(name, model, eps=0.1, norm="linf", num_classes=10, seed=0) for name in autoattack.STAGES
    )
    assert apgd.steps == 100 and apgd.n_restarts == 1 and apgd.loss == "ce" and apgd.thr_decr == 0.75
    assert apgdt.steps == 100 and apgdt.n_restarts == 1 and apgdt.n_target_classes == 9
    assert fabt.steps == 100 and fabt.n_restarts == 1 and fabt.multi_targeted and fabt.n_target_classes == 9
    assert square.n_queries == 5000 and square.p_init == 0.8 and square.n_restarts == 1
    assert square.rescale_schedule is False  # torchattacks' default rescales the schedule; the official does not
    hundred = autoattack.stage_attack("apgd-t", model, eps=0.1, norm="l2", num_classes=100, seed=0)
    assert hundred.n_target_classes == 9 and hundred.norm == "L2"  # 9 targets, as the official, not 99
    few = autoattack.stage_attack("fab-t", model, eps=0.1, norm="linf", num_classes=3, seed=0)
    assert few.n_target_classes == 2


def test_autoattack_runs_each_stage_on_the_samples_still_robust(trained, monkeypatch):
    pytest.importorskip("torchattacks")
    model, x, y = trained
    model = copy.deepcopy(model)
    seen: dict[str, int] = {}
    real = autoattack.stage_attack

    def counting(name, *args, **kwargs):
        attack = real(name, *args, **kwargs)

        def run(images, labels):
            seen[name] = seen.get(name, 0) + len(labels)
            return attack(images, labels)

        return run

    monkeypatch.setattr(autoattack, "stage_attack", counting)
    state = torch.get_rng_state()
    # a large eps breaks this (non-robust) model in APGD-CE already, which keeps the run short
    pgd = evaluate(model, x, y, attack="pgd", eps=0.25, steps=10, n=24)
    result = evaluate(model, x, y, attack="autoattack", eps=0.25, n=24, batch_size=8)
    stages = result["stages"]
    assert list(stages) == list(autoattack.STAGES) and result["version"] == "standard"
    assert result["clean_acc"] >= stages["apgd-ce"] >= stages["apgd-t"] >= stages["fab-t"] >= stages["square"]
    assert result["robust_acc"] == stages["square"] <= pgd["robust_acc"] + 1e-9
    assert seen["apgd-ce"] == round(24 * result["clean_acc"])  # only the correctly classified are attacked
    assert seen.get("apgd-t", 0) == round(24 * stages["apgd-ce"])
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), state)  # torchattacks' reseeding does not leak out
    text = format_result(result)
    assert "apgd-ce" in text and "AutoAttack" in text


def test_autoattack_attacks_with_the_weights_frozen_and_restores_them(trained, monkeypatch):
    pytest.importorskip("torchattacks")
    model, x, y = trained
    model = copy.deepcopy(model)
    model.linear.bias.requires_grad_(False)  # a user's partly frozen model gets its own flags back
    before = [p.requires_grad for p in model.parameters()]
    real, frozen_during = autoattack.stage_attack, []

    def watching(name, *args, **kwargs):
        attack = real(name, *args, **kwargs)

        def run(images, labels):
            frozen_during.append(not any(p.requires_grad for p in model.parameters()))
            return attack(images, labels)

        return run

    monkeypatch.setattr(autoattack, "stage_attack", watching)
    evaluate(model, x, y, attack="autoattack", eps=0.05, n=8, batch_size=4, stages=("apgd-ce",))
    assert frozen_during and all(frozen_during)
    assert [p.requires_grad for p in model.parameters()] == before
    with pytest.raises(KeyboardInterrupt), attacks.weights_frozen(model):
        raise KeyboardInterrupt
    assert [p.requires_grad for p in model.parameters()] == before


def test_frozen_weights_give_fab_the_same_examples(trained):
    pytest.importorskip("torchattacks")
    model, x, y = trained
    model = copy.deepcopy(model).eval()
    # the same arithmetic frozen or not: an nn.Conv2d first layer (FirstConv2d takes advprune's kernel when frozen:
    # rounding differs), and the second block's layers in turn (a hooked layer is never fused)
    model.body[0] = model.body[0].as_conv2d()
    model.body[4].register_forward_hook(lambda *_: None)

    def fab_examples():
        attack = autoattack.stage_attack("fab-t", model, eps=0.05, norm="linf", num_classes=10, seed=0)
        attack.n_target_classes = 1
        return attack(x[:4], y[:4])

    with attacks.weights_frozen(model):
        frozen = fab_examples()
    assert torch.equal(fab_examples(), frozen) and not torch.equal(frozen, x[:4])
    model.zero_grad(set_to_none=True)


def test_autoattack_subset_of_stages_and_bad_names(trained):
    pytest.importorskip("torchattacks")
    model, x, y = trained
    result = evaluate(model, x, y, attack="autoattack", eps=0.25, n=8, stages=("apgd-ce",))
    assert list(result["stages"]) == ["apgd-ce"] and result["version"] == "custom: apgd-ce"
    with pytest.raises(ValueError, match="unknown AutoAttack stages"):
        evaluate(model, x, y, attack="autoattack", eps=0.25, n=8, stages=("apgd-dlr",))


def test_unknown_attack(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="attack must be one of"):
        evaluate(model, x, y, attack="cw", eps=0.1)
