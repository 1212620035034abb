"""advprune.ops.one_channel_conv2d (the small CNN's first layer): its input-gradient kernel against a float64
reference on fresh random inputs, its autograd against F.conv2d's (weights, bias, autocast, double backward),
its refusals, and the attacks running with the weights frozen so that the kernel alone serves them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from advprune import attacks, models, ops
from tests.helpers import FLOAT_DTYPES, ONE_CHANNEL_CONV_CASES, assert_close_rel, poison_allocator, tolerance

pytestmark = pytest.mark.skipif(not ops.extension_loaded(), reason="the compiled kernels are not loaded")

CASES = ONE_CHANNEL_CONV_CASES


def _operands(case, dtype, seed, memory_format=torch.channels_last):
    n, c, h, w, kh, kw, (ph, pw) = case
    gen = torch.Generator().manual_seed(seed)
    oh, ow = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    grad = torch.randn(n, c, oh, ow, generator=gen, dtype=torch.float64)
    weight = torch.randn(c, 1, kh, kw, generator=gen, dtype=torch.float64)
    return grad.to(dtype).contiguous(memory_format=memory_format), weight.to(dtype), (h, w)


def _reference(grad: torch.Tensor, weight: torch.Tensor, size, padding) -> torch.Tensor:
    """The input gradient in float64 from the definition: each tap's weighted sum of the gradient, shifted."""
    g64, w64 = grad.double(), weight.double()
    n, _, oh, ow = g64.shape
    ph, pw = padding
    out = torch.zeros(n, size[0] + 2 * ph, size[1] + 2 * pw, dtype=torch.float64)
    for a in range(w64.shape[2]):
        for b in range(w64.shape[3]):
            out[:, a : a + oh, b : b + ow] += torch.einsum("nchw,c->nhw", g64, w64[:, 0, a, b])
    return out[:, ph : ph + size[0], pw : pw + size[1]].unsqueeze(1)


LAYOUTS = [torch.channels_last, torch.contiguous_format]


@pytest.mark.parametrize("memory_format", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_input_gradient_equals_the_float64_reference(dtype, case, memory_format):
    grad, weight, size = _operands(case, dtype, seed=sum(case[:6]), memory_format=memory_format)
    assert grad.is_contiguous(memory_format=memory_format)
    padding = case[6]
    poison_allocator((case[0], 1, *size), device="cpu", dtype=dtype)
    got = torch.ops.advprune.one_channel_conv_input_grad(grad, weight, *padding)
    want = _reference(grad, weight, size, padding)
    assert got.dtype == dtype and got.shape == want.shape
    # float32 sums hundreds of products: a few units of rounding of the largest one
    assert_close_rel(got, want, max(tolerance(dtype), 1e-5))
    torch.testing.assert_close(
        want, torch.nn.grad.conv2d_input(want.shape, weight.double(), grad.double(), padding=padding)
    )
    assert got.abs().min() < got.abs().max()  # not a constant: every pixel written from its own taps


def test_a_gradient_in_neither_layout_gives_the_contiguous_result():
    grad, weight, size = _operands(CASES[1], torch.float32, seed=1, memory_format=torch.contiguous_format)
    strided = torch.randn(grad.shape[0], grad.shape[1] + 3, *grad.shape[2:])[:, 2 : 2 + grad.shape[1]]
    strided.copy_(grad)
    assert not strided.is_contiguous() and not strided.is_contiguous(memory_format=torch.channels_last)
    got = torch.ops.advprune.one_channel_conv_input_grad(strided, weight, 0, 0)
    assert torch.equal(got, torch.ops.advprune.one_channel_conv_input_grad(grad, weight, 0, 0))
    assert_close_rel(got, _reference(grad, weight, size, (0, 0)), 1e-5)


@pytest.mark.parametrize("memory_format", LAYOUTS)
def test_a_nan_reaches_exactly_the_pixels_under_its_taps(memory_format):
    grad, weight, size = _operands(CASES[0], torch.float32, seed=2, memory_format=memory_format)
    grad[1, 5, 10, 20] = float("nan")
    got = torch.ops.advprune.one_channel_conv_input_grad(grad, weight, 1, 1)
    want = _reference(grad, weight, size, (1, 1))
    assert torch.equal(got.isnan(), want.isnan()) and int(got.isnan().sum()) == 9
    assert_close_rel(got.nan_to_num(), want.nan_to_num(), 1e-5)


def _conv_and_grad(conv, x, grad):
    leaf = x.clone().requires_grad_(True)
    out = conv(leaf)
    return out, torch.autograd.grad(out, leaf, grad)[0]


def _frozen_operands(seed, shape=(6, 1, 12, 10), channels=16, memory_format=torch.contiguous_format):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen).contiguous(memory_format=memory_format)
    weight, bias = torch.randn(channels, 1, 3, 3, generator=gen), torch.randn(channels, generator=gen)
    return x, weight, bias, torch.randn(shape[0], channels, *shape[2:], generator=gen)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_values_and_input_gradient_match_conv2d(memory_format):
    x, weight, bias, grad = _frozen_operands(3, memory_format=memory_format)
    ours = _conv_and_grad(lambda t: ops.one_channel_conv2d(t, weight, bias, padding=(1, 1)), x, grad)
    theirs = _conv_and_grad(lambda t: F.conv2d(t, weight, bias, padding=1), x, grad)
    assert ours[0].grad_fn is not None and "FrozenOneChannel" in type(ours[0].grad_fn).__name__
    for got, want in zip(ours, theirs, strict=True):
        assert_close_rel(got, want, 1e-5)


def _backward_ops(x, weight, bias) -> set[str]:
    """The ops that the backward of ops.one_channel_conv2d to x runs."""
    out = ops.one_channel_conv2d(x, weight, bias, padding=(1, 1))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.autograd.grad(out.square().sum(), x)
    return {event.key for event in prof.key_averages()}


def test_frozen_weights_take_the_kernel_and_trained_ones_conv2d():
    x, weight, bias, _ = _frozen_operands(4)
    x.requires_grad_(True)
    frozen = _backward_ops(x, weight, bias)
    assert "advprune::one_channel_conv_input_grad" in frozen and "aten::convolution_backward" not in frozen
    # weights that require gradients (training's update) go through conv2d, whose engine skips what is not asked
    trained = _backward_ops(x, weight, bias.requires_grad_())
    assert "advprune::one_channel_conv_input_grad" not in trained and "aten::convolution_backward" in trained


def test_autocast_casts_as_for_conv2d():
    x, weight, bias, grad = _frozen_operands(5, shape=(4, 1, 9, 9), channels=8)
    results = []
    for conv in (
        lambda t: ops.one_channel_conv2d(t, weight, bias, padding=(1, 1)),
        lambda t: F.conv2d(t, weight, bias, padding=1),
    ):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(_conv_and_grad(conv, x, grad.bfloat16()))
    for got, want in zip(*results, strict=True):
        assert got.dtype == want.dtype
        assert_close_rel(got, want, 2 * tolerance(torch.bfloat16))
    assert results[0][0].dtype == torch.bfloat16 and results[0][1].dtype == torch.float32


def test_double_backward_and_gradcheck_in_float64():
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(2, 1, 5, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    weight, bias = torch.randn(3, 1, 3, 3, generator=gen, dtype=torch.float64), torch.randn(3, dtype=torch.float64)

    def conv(t):
        return ops.one_channel_conv2d(t, weight, bias, padding=(1, 1)).square()  # nonlinear: a second derivative

    assert torch.autograd.gradcheck(conv, (x,))
    assert torch.autograd.gradgradcheck(conv, (x,))


def test_other_inputs_are_plain_conv2d():
    x, weight = torch.rand(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    out = ops.one_channel_conv2d(x, weight, None, padding=(1, 1))
    assert out.grad_fn is None and torch.equal(out, F.conv2d(x, weight, padding=1))


def test_the_kernel_refuses_bad_operands_naming_them():
    grad, weight = torch.randn(2, 4, 6, 6), torch.randn(4, 1, 3, 3)
    op = torch.ops.advprune.one_channel_conv_input_grad
    with pytest.raises(
        ValueError, match=r"weight must be \[C, 1, KH, KW\] with grad's C = 4, got shape \[4, 2, 3, 3\]"
    ):
        op(grad, torch.randn(4, 2, 3, 3), 1, 1)
    with pytest.raises(TypeError, match=r"weight has dtype torch\.float64 but grad has dtype torch\.float32"):
        op(grad, weight.double(), 1, 1)
    with pytest.raises(ValueError, match=r"padding must be >= 0, got \(-1, 1\)"):
        op(grad, weight, -1, 1)
    with pytest.raises(ValueError, match=r"padding \(4, 1\) imply an input of 0x6"):
        op(torch.randn(2, 4, 6, 6), weight, 4, 1)
    with pytest.raises(ValueError, match=r"grad must be 4-D \[N, C, OH, OW\], got shape \[4, 6, 6\]"):
        op(grad[0], weight, 1, 1)
    with pytest.raises(TypeError, match=r"grad must be float32, float64, float16 or bfloat16, got torch\.int64"):
        op(grad.long(), weight, 1, 1)


def test_opcheck_and_compile():
    grad, weight, _ = _operands(CASES[1], torch.float32, seed=6)
    torch.library.opcheck(torch.ops.advprune.one_channel_conv_input_grad.default, (grad, weight, 0, 0))
    x = torch.rand(3, 1, 7, 9)
    conv = torch.compile(lambda t: ops.one_channel_conv2d(t, weight, None, padding=(0, 0)), fullgraph=True)
    leaf = x.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(conv(leaf), leaf, grad)
    assert_close_rel(got, _reference(grad, weight, (7, 9), (0, 0)), 1e-5)


def test_the_small_cnn_keeps_its_state_dict_and_gradients():
    torch.manual_seed(0)
    ours = models.create("small-cnn").to(memory_format=torch.channels_last)
    assert type(ours.body[0]).__name__ == "FirstConv2d"
    theirs = models.create("small-cnn").to(memory_format=torch.channels_last)
    theirs.body[0] = torch.nn.Conv2d(1, 32, 3, padding=1)
    theirs.load_state_dict(ours.state_dict())  # the same keys
    x = torch.rand(16, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    grads = []
    for model in (ours, theirs):
        leaf = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(F.cross_entropy(model(leaf), y), [leaf, *model.parameters()]))
        with attacks.weights_frozen(model):  # as an attack runs it: the kernel
            leaf = x.clone().requires_grad_(True)
            grads[-1] += torch.autograd.grad(F.cross_entropy(model(leaf), y), leaf)
    for a, b in zip(*grads, strict=True):
        assert_close_rel(a, b, 1e-5)


def test_first_conv2d_refuses_other_geometry_and_converts_to_a_plain_conv2d():
    with pytest.raises(ValueError, match=r"FirstConv2d takes stride 1.*got stride=\(2, 2\)"):
        models.small_cnn.FirstConv2d(1, 8, 3, stride=2)
    with pytest.raises(ValueError, match=r"padding='same'"):
        models.small_cnn.FirstConv2d(1, 8, 3, padding="same")
    first = models.small_cnn.FirstConv2d(1, 8, 3, padding=1)
    plain = first.as_conv2d()
    x = torch.rand(2, 1, 6, 6)
    assert type(plain) is torch.nn.Conv2d and plain.padding == (1, 1)
    assert torch.equal(plain(x), first(x)) and plain.weight is not first.weight


@pytest.mark.parametrize("attack", ["pgd", "pgd_robust", "fgsm_rs", "trades"])
def test_attacks_run_with_the_weights_frozen_and_restore_them(attack):
    model = models.create("small-cnn")
    model.linear.bias.requires_grad_(False)  # a user's partly frozen model gets its own flags back
    before = [p.requires_grad for p in model.parameters()]
    seen = []
    model.register_forward_hook(lambda *_: seen.append(any(p.requires_grad for p in model.parameters())))
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    if attack == "trades":
        attacks.trades_perturb(model, x, eps=0.1, step_size=0.02, steps=2)
    elif attack == "fgsm_rs":
        attacks.fgsm_rs(model, x, y, eps=0.1)
    else:
        getattr(attacks, attack)(model, x, y, eps=0.1, step_size=0.02, steps=2)
    assert seen and not any(seen)
    assert [p.requires_grad for p in model.parameters()] == before
