"""Static selectors, the dynamic pruners, PrunedSampler and .npy selections, prune specs."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from advprune.prune_setup import dynamic_pruner
from advprune.pruning import (
    METHODS,
    DynamicPruner,
    KeepHardPruner,
    PrunedSampler,
    class_quotas,
    kept_count,
    load_indices,
    parse_spec,
    save_indices,
    select,
)


def random_scores(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 7, (n,), generator=g)
    return scores, labels


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n,fraction", [(1000, 0.3), (997, 0.05), (313, 0.5), (50, 1.0), (3, 0.5), (1234, 0.999)])
def test_exact_count_distinct_sorted_in_range(method, n, fraction):
    scores, labels = random_scores(n, seed=n)
    ids = select(scores, fraction, method, labels=labels if method == "balanced" else None, seed=1)
    assert len(ids) == math.floor(fraction * n + 0.5)
    assert ids.dtype == torch.int64 and len(torch.unique(ids)) == len(ids)
    assert int(ids.min()) >= 0 and int(ids.max()) < n
    assert torch.equal(ids, torch.sort(ids).values)


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_for_a_seed(method):
    scores, labels = random_scores(800, seed=3)
    kw = dict(labels=labels if method == "balanced" else None)
    first = select(scores, 0.4, method, seed=7, **kw)
    assert torch.equal(first, select(scores.clone(), 0.4, method, seed=7, **kw))
    if method in ("random", "balanced", "ccs"):
        assert not torch.equal(first, select(scores, 0.4, method, seed=8, **kw))


def test_kept_count_rounds_half_up_and_refuses_keeping_none():
    assert kept_count(0.5, 3) == 2 and kept_count(0.2, 10) == 2 and kept_count(1, 7) == 7
    with pytest.raises(ValueError, match="keeps none"):
        kept_count(0.001, 100)


@pytest.mark.parametrize("method", ["balanced", "hardest", "easiest", "both-ends", "ccs"])
def test_class_balanced_keeps_each_class_share(method):
    scores, _ = random_scores(1200, seed=5)
    labels = torch.cat([torch.full((600,), 0), torch.full((400,), 1), torch.full((200,), 2)])
    labels = labels[torch.randperm(1200, generator=torch.Generator().manual_seed(0))]
    ids = select(scores, 0.25, method, labels=labels, class_balanced=True)
    assert torch.bincount(labels[ids]).tolist() == [150, 100, 50]


def test_class_quotas_sum_exactly_by_largest_remainder():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    quotas = class_quotas(labels, 7)  # exact shares 3.5, 2.1, 1.4
    assert quotas.tolist() == [4, 2, 1] and int(quotas.sum()) == 7


def test_hardest_and_easiest_split_at_the_score():
    scores, _ = random_scores(500, seed=9)
    hard = select(scores, 0.2, "hardest")
    easy = select(scores, 0.2, "easiest")
    rest_hard = torch.ones(500, dtype=torch.bool)
    rest_hard[hard] = False
    assert scores[hard].min() >= scores[rest_hard].max()
    rest_easy = torch.ones(500, dtype=torch.bool)
    rest_easy[easy] = False
    assert scores[easy].max() <= scores[rest_easy].min()


@pytest.mark.parametrize("n,fraction", [(500, 0.2), (501, 0.3), (7, 3 / 7), (40, 1.0)])
def test_both_ends_keeps_the_hardest_half_and_the_easiest_half(n, fraction):
    """The seed paper's low+high: ceil(k / 2) from the top of the ranking and floor(k / 2) from its bottom."""
    scores, _ = random_scores(n, seed=n)
    ids = select(scores, fraction, "both-ends")
    k = kept_count(fraction, n)
    ranked = torch.argsort(scores, descending=True)
    expected = torch.cat([ranked[: k - k // 2], ranked[n - k // 2 :]])
    assert len(ids) == k and torch.equal(ids, torch.sort(expected).values)


def test_both_ends_inside_each_class():
    scores, _ = random_scores(900, seed=4)
    labels = torch.arange(900) % 3
    ids = select(scores, 0.2, "both-ends", labels=labels, class_balanced=True)
    for c in range(3):
        members = torch.nonzero(labels == c).squeeze(1)
        ranked = members[torch.argsort(scores[members], descending=True)]
        assert sorted(ids[labels[ids] == c].tolist()) == sorted([*ranked[:30].tolist(), *ranked[-30:].tolist()])


def test_ties_are_broken_by_the_seed_not_by_position():
    scores = torch.zeros(100)
    picks = {tuple(select(scores, 0.1, "hardest", seed=s).tolist()) for s in range(5)}
    assert len(picks) > 1 and all(len(p) == 10 for p in picks)


def test_ccs_drops_the_hardest_beta_and_covers_the_score_range():
    scores = torch.linspace(0, 1, 2000, dtype=torch.float64)[
        torch.randperm(2000, generator=torch.Generator().manual_seed(1))
    ]
    ids = select(scores, 0.3, "ccs", beta=0.1, strata=10, seed=2)
    kept = scores[ids]
    assert kept.max() < float(torch.quantile(scores, 0.9))  # none of the hardest 10%
    per_stratum = torch.histc(kept.float(), bins=9, min=0, max=0.9)  # the 9 strata left after the drop
    assert per_stratum.min() >= 60 and per_stratum.max() <= 70  # 600 spread evenly, about 66 each
    with pytest.raises(ValueError, match="leaves 1000 samples, fewer than the 1200"):
        select(scores, 0.6, "ccs", beta=0.5)


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda s, y: select(s, 0.0, "random"), ValueError, "fraction must be a number in (0, 1], got 0.0"),
        (lambda s, y: select(s, 1.5, "hardest"), ValueError, "fraction must be a number in (0, 1], got 1.5"),
        (lambda s, y: select(s, "0.5", "hardest"), ValueError, "got '0.5'"),
        (lambda s, y: select(s, True, "hardest"), ValueError, "got True"),
        (lambda s, y: select(s, 0.5, "median"), ValueError, "method must be one of"),
        (
            lambda s, y: select(s[:, None], 0.5, "hardest"),
            ValueError,
            "1-D tensor (one per sample), got shape [100, 1]",
        ),
        (lambda s, y: select(s, 0.5, "hardest", labels=y[:90]), ValueError, "labels must have shape [100]"),
        (lambda s, y: select(s, 0.5, "balanced"), ValueError, "'balanced' needs labels"),
        (lambda s, y: select(s, 0.5, "hardest", labels=y.float()), TypeError, "labels must be integer classes"),
        (lambda s, y: select(100, 0.5, "hardest"), TypeError, "needs a score per sample"),
        (lambda s, y: select(torch.full((100,), float("nan")), 0.5, "ccs"), ValueError, "100 NaN or infinite"),
    ],
)
def test_selectors_refuse_bad_input(call, error, message):
    scores, labels = random_scores(100, seed=0)
    with pytest.raises(error) as info:
        call(scores, labels)
    assert message in str(info.value)


def test_selectors_accept_numpy_and_a_count():
    scores, labels = random_scores(100, seed=0)
    assert torch.equal(select(scores.numpy(), 0.3, "hardest"), select(scores, 0.3, "hardest"))
    assert len(select(100, 0.3, "random")) == 30
    assert len(select(100, 0.3, "balanced", labels=labels.numpy())) == 30


# ------------------------------------------------------------------ sampler


def test_pruned_sampler_in_a_dataloader():
    dataset = TensorDataset(torch.arange(100) * 10)
    sampler = PrunedSampler(torch.tensor([5, 7, 11, 13, 17]), shuffle=True, seed=3, num_samples=100)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler)
    first = torch.cat([b[0] for b in loader]).tolist()
    second = torch.cat([b[0] for b in loader]).tolist()
    assert sorted(first) == sorted(second) == [50, 70, 110, 130, 170]
    assert first != second or len(first) < 3  # a new order each epoch
    sampler.set_epoch(0)
    assert torch.cat([b[0] for b in loader]).tolist() == first  # reproducible after a resume
    sampler.set_indices(np.array([1, 2, 3]))
    assert len(sampler) == 3 and len(loader) == 2
    assert list(PrunedSampler([4, 2, 9], shuffle=False)) == [4, 2, 9]
    with pytest.raises(ValueError, match="distinct"):
        sampler.set_indices([1, 1, 2])
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        sampler.set_indices([100])


def test_index_files_round_trip_and_refuse_bad_ones(tmp_path):
    ids = select(1000, 0.2, "random", seed=4)
    path = save_indices(tmp_path / "kept.npy", ids)
    assert torch.equal(load_indices(path, 1000), ids)
    assert [p.name for p in tmp_path.iterdir()] == ["kept.npy"]  # no temporary file left
    with pytest.raises(ValueError, match=r"lie in \[0, 100\)"):
        load_indices(path, 100)
    with pytest.raises(ValueError, match=re.escape("must end in .npy")):
        save_indices(tmp_path / "kept.txt", ids)
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match=re.escape("bad.npy is not a .npy array")):
        load_indices(tmp_path / "bad.npy")
    np.save(tmp_path / "floats.npy", np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="integer sample ids"):
        load_indices(tmp_path / "floats.npy")
    with pytest.raises(FileNotFoundError, match="no index file"):
        load_indices(tmp_path / "none.npy")


# ----------------------------------------------------------------- dynamic


def seen_pruner(n: int = 300, epochs: int = 10, ratio: float = 0.5, seed: int = 0):
    losses = torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 4
    pruner = DynamicPruner(n, epochs, ratio=ratio, seed=seed)
    pruner.update(torch.arange(n), losses)
    return pruner, losses


def test_dynamic_pruner_drops_only_below_mean_samples_and_reweights_them():
    pruner, losses = seen_pruner(ratio=0.4)
    ids = pruner.epoch_indices(1)
    below = losses < losses.mean()
    dropped = torch.ones(300, dtype=torch.bool)
    dropped[ids] = False
    assert not (dropped & ~below).any()  # above-mean samples are all kept
    assert int(dropped.sum()) == math.floor(0.4 * int(below.sum()) + 0.5)
    w = pruner.weights(ids)
    kept_below = below[ids]
    expected = int(below.sum()) / (int(below.sum()) - int(dropped.sum()))
    assert torch.allclose(w[kept_below], torch.tensor(expected)) and (w[~kept_below] == 1).all()
    assert abs(expected - 1 / (1 - 0.4)) < 0.02


def test_dynamic_pruner_weighted_loss_is_unbiased():
    """Over many epochs' draws the weighted loss sum of the kept samples has the full sum as its mean."""
    pruner, losses = seen_pruner(n=257, epochs=100_000, ratio=0.6, seed=11)
    totals = []
    for epoch in range(1, 3001):
        ids = pruner.epoch_indices(epoch)
        totals.append(float((pruner.weights(ids) * losses[ids]).sum()))
    totals = torch.tensor(totals, dtype=torch.float64)
    standard_error = totals.std() / math.sqrt(len(totals))
    assert totals.std() > 0  # the draws differ
    assert abs(float(totals.mean()) - float(losses.sum())) < 4 * float(standard_error)


def test_dynamic_pruner_first_epoch_unseen_samples_and_annealing():
    pruner = DynamicPruner(100, epochs=8, ratio=0.5, delta=0.875)
    assert torch.equal(pruner.epoch_indices(0), torch.arange(100))  # nothing seen yet
    losses = torch.rand(100, generator=torch.Generator().manual_seed(2))
    pruner.update(torch.arange(50), losses[:50])  # half seen
    ids = pruner.epoch_indices(1)
    assert set(range(50, 100)) <= set(ids.tolist())  # unseen count as high-loss: always kept
    assert len(ids) < 100
    assert pruner.stop_epoch == 7
    assert torch.equal(pruner.epoch_indices(7), torch.arange(100))  # annealing: the last epoch on all data
    assert (pruner.weights(torch.arange(100)) == 1).all()


def test_dynamic_pruner_keeps_one_below_mean_sample_when_the_ratio_rounds_to_all():
    pruner = DynamicPruner(3, epochs=10, ratio=0.9)
    pruner.update(torch.arange(3), torch.tensor([0.0, 1.0, 5.0]))  # two below the mean; round(0.9 * 2) = 2
    ids = pruner.epoch_indices(1)
    assert len(ids) == 2 and 2 in ids.tolist()
    assert torch.isfinite(pruner.weights(ids)).all() and pruner.weights(ids).max() == 2.0


def test_dynamic_pruner_state_reproduces_the_next_subset():
    pruner, _ = seen_pruner()
    state = pruner.state_dict()
    other = DynamicPruner(300, 10, ratio=0.5)
    other.load_state_dict(state)
    assert torch.equal(pruner.epoch_indices(3), other.epoch_indices(3))
    with pytest.raises(ValueError, match="tracks 300 samples, not 200"):
        DynamicPruner(200, 10).load_state_dict(state)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: DynamicPruner(10, 5, ratio=1.0), "ratio (the share of below-mean samples dropped) must be in [0, 1)"),
        (lambda: DynamicPruner(10, 5, delta=1.5), "delta"),
        (lambda: DynamicPruner(0, 5), "num_samples must be a positive int"),
        (lambda: KeepHardPruner(10, 5, keep=0.0), "fraction must be a number in (0, 1]"),
        (lambda: DynamicPruner(10, 5).update(torch.arange(3), torch.rand(2)), "same length, got 3 and 2"),
        (lambda: DynamicPruner(10, 5).update(torch.tensor([3, 10]), torch.rand(2)), r"lie in [0, 10)"),
        (lambda: DynamicPruner(10, 5).epoch_indices(1, 12), "tracks 10 samples, the loader serves 12"),
    ],
)
def test_dynamic_pruners_refuse_bad_input(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)


def test_keep_hard_pruner_keeps_the_highest_losses_and_explores():
    pruner = KeepHardPruner(1000, epochs=5, keep=0.2, explore=0.1, seed=1)
    first = pruner.epoch_indices(0)
    assert len(first) == 200  # all unseen: a random fifth
    losses = torch.rand(1000, generator=torch.Generator().manual_seed(3))
    pruner.update(torch.arange(1000), losses)
    ids = pruner.epoch_indices(1)
    top = set(torch.argsort(losses, descending=True)[:180].tolist())
    assert len(ids) == 200 and top <= set(ids.tolist())
    assert len(set(ids.tolist()) - top) == 20  # the exploration share
    again = KeepHardPruner(1000, 5, keep=0.2, explore=0.1, seed=1)
    again.load_state_dict(pruner.state_dict())
    assert torch.equal(ids, again.epoch_indices(1))  # the state reproduces the subset


def test_resample_draws_a_fresh_random_share_each_epoch_whatever_the_losses():
    pool = torch.arange(0, 1000, 2)  # validation ids (the odd ones) are never drawn
    pruner = dynamic_pruner(parse_spec("resample:0.2"), 1000, epochs=5, seed=4, pool=pool)
    pruner.update(pool, torch.arange(len(pool), dtype=torch.float32))  # losses that keep-hard would follow
    epochs = [pruner.epoch_indices(e) for e in range(5)]
    assert all(len(ids) == 100 and bool((ids % 2 == 0).all()) for ids in epochs)
    assert len(set().union(*(set(ids.tolist()) for ids in epochs))) > 300  # five fifths: most of the pool
    hardest = set(pool[-100:].tolist())
    assert len(set(epochs[1].tolist()) & hardest) < 50  # about 20 expected; keep-hard would take all 100


# -------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    "text,method,fraction,score",
    [
        ("random:0.2", "random", 0.2, None),
        ("balanced:1/5", "balanced", 0.2, None),
        ("el2n:0.4", "hardest", 0.4, "el2n"),
        ("forgetting:0.5", "hardest", 0.5, "forgetting"),
        ("ccs:0.3", "ccs", 0.3, "el2n"),
        ("easiest:0.3:margin", "easiest", 0.3, "margin"),
        ("low:0.4", "easiest", 0.4, "adv_loss"),
        ("high:0.4", "hardest", 0.4, "adv_loss"),
        ("low+high:0.2", "both-ends", 0.2, "adv_loss"),
        ("low+high:0.2:el2n", "both-ends", 0.2, "el2n"),
        ("both-ends:0.3:adv_el2n", "both-ends", 0.3, "adv_el2n"),
        ("dynamic:0.5", "dynamic", 0.5, None),
        ("keep-hard:0.5", "keep-hard", 0.5, None),
        ("resample:0.2", "resample", 0.2, None),
    ],
)
def test_parse_spec(text, method, fraction, score):
    spec = parse_spec(text)
    assert (spec.method, spec.fraction, spec.score) == (method, fraction, score)


@pytest.mark.parametrize(
    "text,message",
    [
        ("random", "a prune spec is METHOD:FRACTION"),
        ("random:x", "'x' is not a number"),
        ("random:1.5", "the kept fraction must be in (0, 1], got 1.5"),
        ("dynamic:1", "R in [0, 1), got 1.0"),
        ("median:0.5", "unknown method 'median'"),
        ("ccs:0.5:colour", "unknown score 'colour'"),
        ("random:0.5:el2n", "random takes no score"),
    ],
)
def test_parse_spec_refuses(text, message):
    with pytest.raises(ValueError) as info:
        parse_spec(text)
    assert message in str(info.value)


def test_warmup_selector_asks_for_one_scoring_pass_then_selects_from_it_and_resumes():
    from advprune.ops import SampleScores
    from advprune.pruning import WarmupSelector

    n = 400
    g = torch.Generator().manual_seed(0)
    el2n, loss = torch.rand(n, generator=g), torch.rand(n, generator=g)
    pool = torch.arange(0, n, 2)  # the odd ids are held out
    selector = WarmupSelector(n, 0.25, "hardest", "adv_el2n", warmup_epochs=2, pool=pool)
    for epoch in range(2):
        assert torch.equal(selector.epoch_indices(epoch, n), pool)
        assert selector.scoring_request(epoch) is None
        correct = torch.rand(n, generator=g) < 0.5
        for ids in pool.split(64):
            selector.on_batch(ids, SampleScores(loss[ids], -el2n[ids], el2n[ids], None, None, correct[ids]), loss[ids])
    request = selector.scoring_request(2)
    assert torch.equal(request.ids, pool) and request.adversarial
    with pytest.raises(RuntimeError, match="needs the scoring pass of the end of the warm-up"):
        selector.epoch_indices(2, n)
    scored = torch.full((n,), float("nan"))
    scored[pool] = el2n[pool]
    selector.set_scores({"adv_el2n": scored, "adv_loss": scored})
    kept = selector.epoch_indices(2, n)
    assert set(kept.tolist()) == set(pool[torch.argsort(el2n[pool], descending=True)[:50]].tolist())
    assert selector.scoring_request(3) is None  # selected once
    assert torch.equal(selector.epoch_indices(3, n), kept)
    again = WarmupSelector(n, 0.25, "hardest", "adv_el2n", warmup_epochs=2, pool=pool)
    again.load_state_dict(selector.state_dict())
    assert torch.equal(again.epoch_indices(4, n), kept)
    with pytest.raises(ValueError, match="in-run selection ranks by one of"):
        WarmupSelector(n, 0.25, score="aum")
    with pytest.raises(ValueError, match="needs at least 2 warm-up epochs"):
        WarmupSelector(n, 0.25, score="forgetting", warmup_epochs=1)
    with pytest.raises(ValueError, match="fraction must be a number in"):
        WarmupSelector(n, 0.0)
