"""sample_scores against its float64 reference: all dtypes, odd sizes, C up to 1000."""

from __future__ import annotations

import pytest
import torch

from advprune import ops, reference
from tests.helpers import FLOAT_DTYPES, assert_close_rel, logits_and_labels, poison_allocator, tolerance

FIELDS = ("loss", "margin", "el2n", "entropy", "confidence")


def check_against_reference(logits, labels, rel):
    n = labels.shape[0]
    poison_allocator(*[(n,)] * 5, device=logits.device)
    got = ops.sample_scores(logits, labels)
    want = reference.sample_scores(logits.double(), labels)
    for field in FIELDS:
        value = getattr(got, field)
        assert value.dtype == torch.float32 and value.shape == labels.shape, field
        assert_close_rel(value, getattr(want, field), rel)
    assert got.correct.dtype == torch.bool
    assert torch.equal(got.correct.cpu(), want.correct.cpu())
    return got


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
# C chooses the CUDA kernel's lanes a row: 1 (C <= 16), 2 (17), 4 (40), 8 (100), 16 (200), 32 (1000)
@pytest.mark.parametrize(
    "n,c", [(1, 2), (7, 3), (33, 10), (257, 16), (9, 17), (70, 40), (64, 100), (37, 200), (5, 1000), (300, 10)]
)
def test_scores_match_reference(device, dtype, n, c):
    gen = torch.Generator().manual_seed(n * 1000 + c)
    logits, labels = logits_and_labels(n, c, dtype, device, generator=gen)
    # half inputs are exact in float64, so only the float32 accumulation differs
    check_against_reference(logits, labels, max(tolerance(dtype), 1e-6) if dtype != torch.float64 else 1e-12)


@pytest.mark.parametrize("c", [10, 1000])
def test_confident_rows_keep_small_losses_exact(device, c):
    """A confidently right sample has a loss near 1e-9: it must not come out as 0."""
    gen = torch.Generator().manual_seed(c)
    logits, labels = logits_and_labels(16, c, torch.float32, device, generator=gen, scale=1.0)
    logits[torch.arange(16), labels] += 25.0
    got = ops.sample_scores(logits, labels)
    want = reference.sample_scores(logits.double(), labels)
    assert (got.loss > 0).all()
    torch.testing.assert_close(got.loss.double().cpu(), want.loss.double().cpu(), rtol=1e-5, atol=0)
    torch.testing.assert_close(got.el2n.double().cpu(), want.el2n.double().cpu(), rtol=1e-5, atol=0)
    assert got.correct.all()


def test_ties_take_the_first_index_like_argmax(device):
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.5]] * 3, device=device)
    labels = torch.tensor([1, 2, 0], device=device)
    got = ops.sample_scores(logits, labels)
    assert got.correct.tolist() == [True, False, False]
    assert got.margin.tolist() == [0.0, 0.0, -2.0]


def test_non_contiguous_logits(device):
    gen = torch.Generator().manual_seed(3)
    logits, labels = logits_and_labels(40, 12, torch.float32, device, generator=gen)
    check_against_reference(logits.t().contiguous().t(), labels, 1e-6)
    check_against_reference(logits[::2, 1:], labels[::2].clamp(max=10), 1e-6)


def test_empty_batch_gives_empty_scores(device):
    got = ops.sample_scores(torch.empty(0, 10, device=device), torch.empty(0, dtype=torch.long, device=device))
    assert all(t.shape == (0,) for t in got)
    assert got.loss.dtype == torch.float32 and got.correct.dtype == torch.bool


def test_scores_are_a_named_tuple(device):
    logits, labels = logits_and_labels(4, 5, torch.float32, device, generator=torch.Generator().manual_seed(0))
    got = ops.sample_scores(logits, labels)
    assert isinstance(got, ops.SampleScores)
    assert got._fields == (*FIELDS, "correct")


@pytest.mark.parametrize("c", [3, 10, 128, 129, 1000])  # the lane path (C <= 128) and the row path
def test_unchecked_labels_out_of_range_score_as_no_class(device, c):
    """check_labels=False skips the range check (a GPU sync); a bad label must then neither read outside its
    row nor disturb the other rows: it scores as no class (loss inf, confidence ~0, correct False)."""
    gen = torch.Generator().manual_seed(c + 7)
    logits, labels = logits_and_labels(40, c, torch.float32, device, generator=gen)
    bad = torch.arange(0, 40, 5, device=device)
    labels[bad] = torch.tensor([-1, c, c + 7, -(2**40), 2**40, -c, c + 1, 2**62], device=device)
    with pytest.raises(ValueError, match=rf"labels must lie in \[0, {c}\)"):
        ops.sample_scores(logits, labels)
    for got in (
        ops.sample_scores(logits, labels, check_labels=False),
        ops.SampleScores(*torch.ops.advprune.sample_scores(logits, labels, check_labels=False)),
    ):
        good = torch.ones(40, dtype=torch.bool, device=device)
        good[bad] = False
        want = reference.sample_scores(logits[good].double(), labels[good])
        for field in FIELDS:
            assert_close_rel(getattr(got, field)[good], getattr(want, field), 1e-6)
        assert torch.equal(got.correct[good].cpu(), want.correct.cpu())
        assert torch.isinf(got.loss[bad]).all() and (got.loss[bad] > 0).all()
        assert (got.confidence[bad] < 1e-30).all() and not got.correct[bad].any()
