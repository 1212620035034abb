"""Bad input: a clear exception that names what was received, and x_adv untouched."""

from __future__ import annotations

import pytest
import torch

from advprune import ops


@pytest.fixture
def batch(device):
    gen = torch.Generator().manual_seed(0)
    x_nat = torch.rand(4, 3, 8, 8, generator=gen).to(device)
    x_adv = (x_nat + 0.1 * torch.randn(4, 3, 8, 8, generator=gen).to(device)).clamp(0, 1)
    grad = torch.randn(4, 3, 8, 8, generator=gen).to(device)
    return x_adv, grad, x_nat


def bad_pgd_calls(x_adv, grad, x_nat):
    ok = dict(eps=0.1, step_size=0.01)
    return [
        ("grad has shape", ValueError, (x_adv, grad[:, :, :4], x_nat), ok),
        ("x_nat has shape", ValueError, (x_adv, grad, x_nat[:3]), ok),
        ("grad has dtype torch.float64", TypeError, (x_adv, grad.double(), x_nat), ok),
        ("x_nat has dtype", TypeError, (x_adv, grad, x_nat.half()), ok),
        (
            "grad must be float32, float64, float16 or bfloat16, got torch.int64",
            TypeError,
            (x_adv, grad.long(), x_nat),
            ok,
        ),
        (
            "x_nat must be float32, float64, float16 or bfloat16, got torch.bool",
            TypeError,
            (x_adv, grad, x_nat > 0.5),
            ok,
        ),
        (
            "eps must be finite and >= 0, got -0.1",
            ValueError,
            (x_adv, grad, x_nat),
            dict(eps=-0.1, step_size=0.01),
        ),
        (
            "eps must be finite and >= 0, got nan",
            ValueError,
            (x_adv, grad, x_nat),
            dict(eps=float("nan"), step_size=0.01),
        ),
        (
            "step_size must be finite and >= 0, got -1",
            ValueError,
            (x_adv, grad, x_nat),
            dict(eps=0.1, step_size=-1),
        ),
        (
            "clip_min must be <= clip_max, got clip_min=1.0 and clip_max=0.0",
            ValueError,
            (x_adv, grad, x_nat),
            dict(ok, clip_min=1.0, clip_max=0.0),
        ),
        ('norm must be "linf" or "l2", got \'l1\'', ValueError, (x_adv, grad, x_nat), dict(ok, norm="l1")),
        (
            "eps must be a real number, got str '8/255'",
            TypeError,
            (x_adv, grad, x_nat),
            dict(eps="8/255", step_size=0.01),
        ),
        ("grad must be a tensor, got list", TypeError, (x_adv, [0.0], x_nat), ok),
    ]


@pytest.mark.parametrize("case", range(13))
def test_bad_pgd_arguments_raise_and_write_nothing(batch, case):
    x_adv = batch[0]
    message, error, args, kwargs = bad_pgd_calls(*batch)[case]
    before = x_adv.clone()
    with pytest.raises(error) as info:
        ops.pgd_step_(*args, **kwargs)
    assert message in str(info.value)
    assert torch.equal(x_adv, before)


def test_integer_x_adv_is_refused(device):
    x = torch.randint(0, 255, (2, 3, 4, 4), device=device)
    with pytest.raises(TypeError, match="x_adv must be float32, float64, float16 or bfloat16, got"):
        ops.pgd_step_(x, x.clone(), x.clone(), eps=8, step_size=2)
    with pytest.raises(TypeError, match="x_adv must be float32"):
        ops.project_(x, x.clone(), eps=8)


def test_project_checks_its_arguments(batch):
    x_adv, _, x_nat = batch
    before = x_adv.clone()
    with pytest.raises(ValueError, match=r"x_nat has shape \[4, 3, 8, 4\] but x_adv has shape \[4, 3, 8, 8\]"):
        ops.project_(x_adv, x_nat[..., :4], eps=0.1)
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        ops.project_(x_adv, x_nat, eps=float("inf"))
    assert torch.equal(x_adv, before)


def test_zero_dim_x_adv_is_refused(device):
    x = torch.tensor(0.5, device=device)
    with pytest.raises(ValueError, match="x_adv must have a batch dimension"):
        ops.pgd_step_(x, x.clone(), x.clone(), eps=0.1, step_size=0.1)


@pytest.mark.parametrize(
    "logits_shape,labels,error,message",
    [
        ((4,), [0, 1, 2, 3], ValueError, r"logits must be 2-D \[N, C\], got shape \[4\]"),
        ((4, 1), [0, 0, 0, 0], ValueError, r"logits need at least 2 classes, got shape \[4, 1\]"),
        ((4, 5), [0, 1, 2], ValueError, r"labels must have shape \[4\] to match logits \[4, 5\], got \[3\]"),
        ((4, 5), [0, 1, 2, 5], ValueError, r"labels must lie in \[0, 5\), got values from 0 to 5"),
        ((4, 5), [-1, 1, 2, 3], ValueError, r"labels must lie in \[0, 5\), got values from -1 to 3"),
    ],
)
def test_bad_scores_arguments(device, logits_shape, labels, error, message):
    logits = torch.randn(*logits_shape, device=device)
    with pytest.raises(error, match=message):
        ops.sample_scores(logits, torch.tensor(labels, device=device))


def test_scores_need_int64_labels_and_float_logits(device):
    logits = torch.randn(3, 4, device=device)
    with pytest.raises(TypeError, match=r"labels must be int64, got torch\.int32"):
        ops.sample_scores(logits, torch.tensor([0, 1, 2], dtype=torch.int32, device=device))
    with pytest.raises(TypeError, match=r"logits must be float32, float64, float16 or bfloat16, got torch\.int64"):
        ops.sample_scores(logits.long(), torch.tensor([0, 1, 2], device=device))


def test_bad_kl_arguments(device):
    p = torch.randn(3, 4, device=device)
    with pytest.raises(ValueError, match=r"logits_q has shape \[3, 5\] but logits_p has shape \[3, 4\]"):
        ops.kl_rows(p, torch.randn(3, 5, device=device))
    with pytest.raises(TypeError, match=r"logits_q has dtype torch\.float64 but logits_p has dtype torch\.float32"):
        ops.kl_rows(p, p.double())
    with pytest.raises(ValueError, match="logits_p must be 2-D"):
        ops.kl_rows(p[0], p[0])
    with pytest.raises(ValueError, match="logits need at least 2 classes"):
        ops.kl_rows(p[:, :1], p[:, :1])


def test_tensors_on_different_devices_are_refused():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x = torch.rand(2, 3)
    with pytest.raises(ValueError, match="x_nat is on cuda"):
        ops.pgd_step_(x, x.clone(), x.cuda(), eps=0.1, step_size=0.1)


# The same bad input, through torch.ops.advprune.* directly: the C++ checks, which the Python wrappers
# above pre-empt, must say the same (a caller of the raw op, or torch.compile's graph, meets these).
RAW_PGD_CASES = [  # (index into bad_pgd_calls, the C++ message when it differs from the Python one)
    (0, None),
    (1, None),
    (2, None),
    (3, None),
    (4, None),
    (5, None),
    (6, None),
    (7, None),
    (8, None),
    (9, "clip_min must be <= clip_max, got clip_min=1 and clip_max=0"),
    (10, 'norm must be "linf" or "l2", got "l1"'),
]


@pytest.mark.parametrize("case,cpp_message", RAW_PGD_CASES)
def test_the_compiled_op_gives_the_same_messages(batch, case, cpp_message):
    x_adv = batch[0]
    message, error, args, kwargs = bad_pgd_calls(*batch)[case]
    before = x_adv.clone()
    with pytest.raises(error) as info:
        torch.ops.advprune.pgd_step_(*args, **kwargs)
    assert (cpp_message or message) in str(info.value) and "advprune.pgd_step_" in str(info.value)
    assert torch.equal(x_adv, before)


def test_the_compiled_scores_and_kl_ops_check_their_arguments(device):
    logits = torch.randn(4, 5, device=device)
    with pytest.raises(
        ValueError, match=r"advprune.sample_scores: labels must lie in \[0, 5\), got values from 0 to 5"
    ):
        torch.ops.advprune.sample_scores(logits, torch.tensor([0, 1, 2, 5], device=device))
    with pytest.raises(TypeError, match=r"advprune.sample_scores: labels must be int64, got torch\.int32"):
        torch.ops.advprune.sample_scores(logits, torch.tensor([0, 1, 2, 3], dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match=r"logits must be 2-D \[N, C\], got shape \[4\]"):
        torch.ops.advprune.sample_scores(logits[:, 0], torch.tensor([0, 1, 2, 3], device=device))
    with pytest.raises(ValueError, match=r"logits_q has shape \[4, 3\] but logits_p has shape \[4, 5\]"):
        torch.ops.advprune.kl_rows(logits, logits[:, :3])
    with pytest.raises(TypeError, match=r"logits_q has dtype torch\.float64 but logits_p has dtype torch\.float32"):
        torch.ops.advprune.kl_rows(logits, logits.double())
    with pytest.raises(TypeError, match=r"x_adv must be float32, float64, float16 or bfloat16, got torch\.int64"):
        x = torch.zeros(2, 3, dtype=torch.int64, device=device)
        torch.ops.advprune.project_(x, x.clone(), eps=0.1)
