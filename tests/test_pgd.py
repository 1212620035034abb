"""pgd_step_ and project_ against their float64 reference, on every dtype,
memory format and stride pattern, CPU and (when present) CUDA."""

from __future__ import annotations

import pytest
import torch

from advprune import ops, reference
from tests.helpers import FLOAT_DTYPES, assert_close_rel, pgd_inputs, stable_seed, tolerance

SHAPES = [(1, 3, 5, 7), (4, 3, 32, 32), (3, 1, 28, 28), (5, 37), (2, 3, 17, 13), (7,)]


def reference_step(x_adv, grad, x_nat, **kw):
    expected = x_adv.double().clone()
    reference.pgd_step_(expected, grad.double(), x_nat.double(), **kw)
    return expected


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("shape", SHAPES)
def test_pgd_step_matches_reference(device, dtype, norm, shape):
    gen = torch.Generator().manual_seed(stable_seed(shape, norm, str(dtype)))
    x_adv, grad, x_nat = pgd_inputs(shape, dtype, device, generator=gen)
    kw = dict(eps=0.3 if norm == "l2" else 8 / 255, step_size=0.1 if norm == "l2" else 2 / 255, norm=norm)
    expected = reference_step(x_adv, grad, x_nat, **kw)
    out = ops.pgd_step_(x_adv, grad, x_nat, **kw)
    assert out is x_adv
    assert_close_rel(x_adv, expected, tolerance(dtype))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_project_matches_reference(device, dtype, norm):
    gen = torch.Generator().manual_seed(7)
    x_adv, _, x_nat = pgd_inputs((6, 3, 9, 11), dtype, device, generator=gen)
    expected = x_adv.double().clone()
    reference.project_(expected, x_nat.double(), eps=0.25, norm=norm, clip_min=0.1, clip_max=0.9)
    assert ops.project_(x_adv, x_nat, eps=0.25, norm=norm, clip_min=0.1, clip_max=0.9) is x_adv
    assert_close_rel(x_adv, expected, tolerance(dtype))


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("mixed", [False, True])
def test_channels_last_keeps_format(device, norm, mixed):
    gen = torch.Generator().manual_seed(11)
    x_adv, grad, x_nat = pgd_inputs(
        (5, 3, 15, 9), torch.float32, device, generator=gen, memory_format=torch.channels_last
    )
    if mixed:  # grad and x_nat contiguous while x_adv is channels_last
        grad, x_nat = grad.contiguous(), x_nat.contiguous()
    ptr = x_adv.data_ptr()
    expected = reference_step(x_adv, grad, x_nat, eps=0.2, step_size=0.05, norm=norm)
    ops.pgd_step_(x_adv, grad, x_nat, eps=0.2, step_size=0.05, norm=norm)
    assert x_adv.is_contiguous(memory_format=torch.channels_last)
    assert x_adv.data_ptr() == ptr
    assert_close_rel(x_adv, expected, 1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_strided_view_is_updated_and_the_rest_untouched(device, norm):
    gen = torch.Generator().manual_seed(12)
    base, grad_full, nat_full = pgd_inputs((6, 3, 10, 8), torch.float32, device, generator=gen)
    view = base[::2, :, 1::3]  # not dense: the kernel works on a copy and writes back
    grad, x_nat = grad_full[::2, :, 1::3], nat_full[::2, :, 1::3].transpose(2, 3).contiguous().transpose(2, 3)
    before = base.clone()
    expected = reference_step(view, grad, x_nat, eps=0.1, step_size=0.03, norm=norm)
    ops.pgd_step_(view, grad, x_nat, eps=0.1, step_size=0.03, norm=norm)
    assert_close_rel(view, expected, 1e-6)
    untouched = torch.ones_like(base, dtype=torch.bool)
    untouched[::2, :, 1::3] = False
    assert torch.equal(base[untouched], before[untouched])


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_gradient_counts_as_zero(device, norm, dtype):
    gen = torch.Generator().manual_seed(13)
    x_adv, grad, x_nat = pgd_inputs((4, 3, 8, 8), dtype, device, generator=gen)
    grad[0, 0, 0, :5] = float("nan")
    grad[2] = float("nan")  # a whole sample: no step at all, only the projection
    zeroed = torch.where(torch.isnan(grad), torch.zeros_like(grad), grad)
    expected = reference_step(x_adv, zeroed, x_nat, eps=0.3, step_size=0.1, norm=norm)
    ops.pgd_step_(x_adv, grad, x_nat, eps=0.3, step_size=0.1, norm=norm)
    assert not torch.isnan(x_adv).any()
    assert_close_rel(x_adv, expected, tolerance(dtype))


def test_empty_batch_is_a_no_op(device):
    x = torch.empty(0, 3, 4, 4, device=device)
    assert ops.pgd_step_(x, x.clone(), x.clone(), eps=0.1, step_size=0.01) is x
    assert ops.project_(x, x.clone(), eps=0.1, norm="l2") is x


def test_large_odd_sample_uses_every_vector_lane(device):
    """A sample size that is no multiple of any vector width, big enough for several threads."""
    gen = torch.Generator().manual_seed(14)
    x_adv, grad, x_nat = pgd_inputs((3, 3, 61, 67), torch.float32, device, generator=gen)
    for norm in ("linf", "l2"):
        a = x_adv.clone()
        expected = reference_step(a, grad, x_nat, eps=0.5, step_size=0.2, norm=norm)
        ops.pgd_step_(a, grad, x_nat, eps=0.5, step_size=0.2, norm=norm)
        assert_close_rel(a, expected, 1e-6)
