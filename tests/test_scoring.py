"""Scoring passes, forgetting events, the GraNd proxy, and score files."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advprune import ops
from advprune.data import from_arrays
from advprune.prune_setup import score_model, static_indices
from advprune.pruning import parse_spec
from advprune.pruning.select import hardness
from advprune.scores import ForgettingTracker, average_scores, load_scores, save_scores, score_pass


def batches_of(x, y, size=50, order=None):
    order = torch.arange(len(y)) if order is None else order
    for i in range(0, len(order), size):
        ids = order[i : i + size]
        yield x[ids], y[ids], ids


def test_forgetting_events_and_never_learned():
    tracker = ForgettingTracker(4)
    ids = torch.arange(4)
    for flags in ([1, 0, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 1, 0]):
        tracker.on_batch(ids, ops.SampleScores(*[None] * 5, torch.tensor(flags, dtype=torch.bool)), None)
    # sample 0: right, wrong, right, wrong -> 2 events; 1 never learned; 2: one event; 3 never learned
    assert tracker.events.tolist() == [2, 0, 1, 0]
    assert tracker.scores().tolist() == [2.0, 3.0, 1.0, 3.0]  # never learned ranks above all (max + 1)
    other = ForgettingTracker(4)
    other.load_state_dict(tracker.state_dict())
    assert torch.equal(other.scores(), tracker.scores())


def test_score_pass_matches_the_ops_and_the_grand_formula(trained):
    model, x, y = trained
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # ids arrive in any order
    scores = score_pass(model, batches_of(x, y, order=order), len(y))
    with torch.no_grad():
        h = model.features(x).double()
        logits = model.linear(h.float()).double()
    p = F.softmax(logits, 1)
    el2n = (p - F.one_hot(y, 10).double()).norm(dim=1)
    assert torch.allclose(scores["el2n"].double(), el2n, rtol=1e-4, atol=1e-5)
    assert torch.allclose(scores["loss"].double(), F.cross_entropy(logits, y, reduction="none"), rtol=1e-4, atol=1e-5)
    grand = el2n * torch.sqrt(h.pow(2).sum(1) + 1)
    assert torch.allclose(scores["grand"].double(), grand, rtol=1e-4, atol=1e-4)
    assert torch.equal(scores["correct"], logits.argmax(1) == y)


def test_adversarial_scores_are_higher_and_every_sample_must_be_covered(trained):
    model, x, y = trained
    clean = score_pass(model, batches_of(x, y), len(y))
    adv = score_pass(model, batches_of(x, y), len(y), attack="pgd", eps=0.1, steps=3)
    assert adv["loss"].mean() > clean["loss"].mean() + 0.1
    with pytest.raises(ValueError, match="covered 100 of the 128 samples"):
        score_pass(model, batches_of(x[:100], y[:100]), 128)
    part = score_pass(model, batches_of(x[:100], y[:100]), 128, covering=torch.arange(100))
    assert torch.isfinite(part["loss"][:100]).all() and torch.isnan(part["loss"][100:]).all()
    with pytest.raises(ValueError, match="covered 100 of the 101 samples"):
        score_pass(model, batches_of(x[:100], y[:100]), 128, covering=torch.arange(101))
    with pytest.raises(ValueError, match="needs eps > 0"):
        score_pass(model, batches_of(x, y), len(y), attack="fgsm")


def test_score_model_adds_adversarial_names_and_averages(trained):
    model, x, y = trained
    data = from_arrays((x[:, 0] * 255).round().to(torch.uint8).numpy()[..., None], y.numpy())
    a = score_model(model, data, attack="fgsm", eps=0.1, batch_size=40)
    assert {"el2n", "grand", "adv_el2n", "adv_loss", "adv_correct"} <= set(a)
    b = {k: v * 3 for k, v in a.items()}
    mean = average_scores([a, b])
    assert torch.allclose(mean["el2n"], a["el2n"] * 2)
    with pytest.raises(ValueError, match="different scores"):
        average_scores([a, {"el2n": a["el2n"]}])


def test_score_files_round_trip_atomically_and_refuse_bad_ones(tmp_path):
    scores = {"el2n": torch.rand(10), "forgetting": torch.arange(10.0)}
    path = save_scores(tmp_path / "s.npz", scores, {"seconds": 1.5})
    loaded, meta = load_scores(path)
    assert torch.equal(loaded["el2n"], scores["el2n"]) and meta["seconds"] == 1.5 and meta["num_samples"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.npz"]
    with pytest.raises(ValueError, match="one value per sample"):
        save_scores(tmp_path / "t.npz", {"a": torch.rand(3), "b": torch.rand(4)})
    np.savez(tmp_path / "shuffled.npz", ids=np.array([2, 0, 1]), el2n=np.array([0.2, 0.0, 0.1]))
    assert load_scores(tmp_path / "shuffled.npz")[0]["el2n"].tolist() == [0.0, 0.1, 0.2]  # put in id order
    np.savez(tmp_path / "gaps.npz", ids=np.array([0, 0, 5]), el2n=np.zeros(3))
    with pytest.raises(ValueError, match=re.escape("the ids are not 0..2")):
        load_scores(tmp_path / "gaps.npz")
    (tmp_path / "junk.npz").write_text("junk")
    with pytest.raises(ValueError, match=re.escape("is not a scores .npz file")):
        load_scores(tmp_path / "junk.npz")


def test_static_indices_from_scores():
    scores = {"el2n": torch.rand(100), "margin": torch.randn(100)}
    labels = torch.arange(100) % 4
    hard = static_indices(parse_spec("el2n:0.3"), 100, labels, scores=scores)
    assert set(hard.tolist()) == set(torch.argsort(scores["el2n"], descending=True)[:30].tolist())
    low_margin = static_indices(parse_spec("hardest:0.3:margin"), 100, labels, scores=scores)
    assert set(low_margin.tolist()) == set(torch.argsort(scores["margin"])[:30].tolist())  # low margin = hard
    balanced = static_indices(parse_spec("el2n:0.2"), 100, labels, scores=scores, class_balanced=True)
    assert torch.bincount(labels[balanced]).tolist() == [5, 5, 5, 5]
    with pytest.raises(ValueError, match="the scores cover 100 samples but the training set has 90"):
        static_indices(parse_spec("el2n:0.3"), 90, labels[:90], scores=scores)
    with pytest.raises(ValueError, match="hold no 'grand'"):
        hardness(scores, "grand")
