"""kl_rows and its fused backward against the float64 reference; gradcheck."""

from __future__ import annotations

import pytest
import torch

from advprune import ops, reference
from tests.helpers import FLOAT_DTYPES, assert_close_rel, logits_and_labels, poison_allocator, tolerance


def pair(n, c, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    p, _ = logits_and_labels(n, c, dtype, device, generator=gen)
    q, _ = logits_and_labels(n, c, dtype, device, generator=gen, scale=1.0)
    return p, q


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n,c", [(1, 2), (13, 10), (8, 33), (37, 200), (3, 1000)])
def test_kl_matches_reference(device, dtype, n, c):
    p, q = pair(n, c, dtype, device, n + c)
    poison_allocator((n,), device=device, dtype=dtype)
    got = ops.kl_rows(p, q)
    assert got.dtype == dtype and got.shape == (n,)
    assert_close_rel(got, reference.kl_rows(p.double(), q.double()), tolerance(dtype))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n,c", [(1, 2), (13, 10), (3, 1000)])
def test_kl_backward_matches_reference(device, dtype, n, c):
    p, q = pair(n, c, dtype, device, 2 * n + c)
    grad = torch.randn(n, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    poison_allocator((n, c), (n, c), device=device, dtype=dtype)
    got_p, got_q = torch.ops.advprune.kl_rows_backward(grad, p, q)
    want_p, want_q = reference.kl_rows_backward(grad.double(), p.double(), q.double())
    assert_close_rel(got_p, want_p, 4 * tolerance(dtype))
    assert_close_rel(got_q, want_q, 4 * tolerance(dtype))


def test_autograd_reaches_both_inputs(device):
    p, q = pair(6, 10, torch.float32, device, 5)
    p.requires_grad_(True)
    q.requires_grad_(True)
    weights = torch.rand(6, device=device)
    (ops.kl_rows(p, q) * weights).sum().backward()
    p64, q64 = p.detach().double().requires_grad_(True), q.detach().double().requires_grad_(True)
    (reference.kl_rows(p64, q64) * weights.double()).sum().backward()
    assert_close_rel(p.grad, p64.grad, 4e-6)
    assert_close_rel(q.grad, q64.grad, 4e-6)


def test_gradient_to_one_input_only(device):
    p, q = pair(4, 7, torch.float32, device, 6)
    q.requires_grad_(True)
    ops.kl_rows(p, q).sum().backward()
    assert q.grad is not None and p.grad is None


def test_gradcheck_float64(device):
    p, q = pair(5, 7, torch.float64, device, 8)
    p.requires_grad_(True)
    q.requires_grad_(True)
    assert torch.autograd.gradcheck(ops.kl_rows, (p, q))


def test_kl_of_identical_rows_is_zero(device):
    p, _ = pair(9, 10, torch.float32, device, 9)
    assert ops.kl_rows(p, p.clone()).abs().max() < 1e-6
