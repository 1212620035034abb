"""Evaluation: clean, PGD-K with restarts, AutoAttack through torchattacks."""

from __future__ import annotations

import copy

import pytest

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


def test_autoattack_is_at_least_as_strong_as_pgd(trained):
    pytest.importorskip("torchattacks")
    model, x, y = trained
    model = copy.deepcopy(model)
    # a large eps breaks this (non-robust) model in APGD-CE already, which keeps the run short
    pgd = evaluate(model, x, y, attack="pgd", eps=0.25, steps=10, n=16)
    aa = evaluate(model, x, y, attack="autoattack", eps=0.25, n=16)
    assert aa["n"] == 16 and aa["robust_acc"] <= pgd["robust_acc"] + 1e-9
    assert all(p.grad is None for p in model.parameters())


def test_unknown_attack(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="attack must be one of"):
        evaluate(model, x, y, attack="cw", eps=0.1)
