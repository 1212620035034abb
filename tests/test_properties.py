"""Property tests (hypothesis) of the PGD step: inside the eps-ball and the clip
range, linf steps of at most step_size, l2 deltas of norm at most eps."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advprune import ops

shapes = st.tuples(st.integers(1, 6), st.integers(1, 3), st.integers(1, 19), st.integers(1, 23))
settings.register_profile("advprune", max_examples=60, deadline=None)
settings.load_profile("advprune")


def batch(shape, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x_nat = torch.rand(shape, generator=gen, dtype=dtype)
    grad = torch.randn(shape, generator=gen, dtype=dtype)
    return x_nat, grad, gen


@given(
    shape=shapes,
    seed=st.integers(0, 2**31 - 1),
    eps=st.floats(0.0, 0.5),
    step=st.floats(0.0, 0.3),
    lo=st.floats(0.0, 0.3),
    hi=st.floats(0.7, 1.0),
)
def test_linf_step_stays_in_ball_and_range_and_moves_at_most_step(shape, seed, eps, step, lo, hi):
    x_nat, grad, gen = batch(shape, seed)
    x_nat = x_nat.clamp(lo, hi)
    start = (x_nat + eps * (2 * torch.rand(shape, generator=gen) - 1)).clamp(lo, hi)  # a point inside both
    x_adv = start.clone()
    ops.pgd_step_(x_adv, grad, x_nat, eps=eps, step_size=step, clip_min=lo, clip_max=hi)
    tiny = 1e-6
    assert ((x_adv - x_nat).abs() <= eps + tiny).all()
    assert ((x_adv >= lo) & (x_adv <= hi)).all()
    assert ((x_adv - start).abs() <= step + tiny).all()


@given(
    shape=shapes,
    seed=st.integers(0, 2**31 - 1),
    eps=st.floats(0.0, 3.0),
    step=st.floats(0.0, 2.0),
    spread=st.floats(0.0, 4.0),
)
def test_l2_step_keeps_delta_norm_within_eps(shape, seed, eps, step, spread):
    x_nat, grad, gen = batch(shape, seed)
    x_adv = x_nat + spread * torch.randn(shape, generator=gen)
    ops.pgd_step_(x_adv, grad, x_nat, eps=eps, step_size=step, norm="l2")
    norms = (x_adv - x_nat).flatten(1).norm(dim=1)
    assert (norms <= eps * (1 + 1e-6) + 1e-7).all()
    assert ((x_adv >= 0) & (x_adv <= 1)).all()


@given(
    shape=shapes,
    seed=st.integers(0, 2**31 - 1),
    eps=st.floats(0.0, 1.0),
    norm=st.sampled_from(["linf", "l2"]),
)
def test_projection_is_idempotent(shape, seed, eps, norm):
    x_nat, grad, _ = batch(shape, seed)
    x_adv = x_nat + grad
    ops.project_(x_adv, x_nat, eps=eps, norm=norm)
    again = x_adv.clone()
    ops.project_(again, x_nat, eps=eps, norm=norm)
    torch.testing.assert_close(again, x_adv, rtol=1e-6, atol=1e-6)
