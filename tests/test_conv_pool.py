"""advprune.ops.one_channel_conv_max_pool2x2 (the small CNN's first convolution and pooling in one kernel, with
frozen weights): its forward and input gradient against float64 references on fresh random inputs, its autograd
against the two ops in turn (autocast, double backward), when it serves, its refusals, and the small CNN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from advprune import attacks, models, ops
from tests.helpers import FLOAT_DTYPES, ONE_CHANNEL_CONV_CASES, assert_close_rel, poison_allocator, tolerance

pytestmark = pytest.mark.skipif(not ops.extension_loaded(), reason="the compiled kernels are not loaded")

CASES = ONE_CHANNEL_CONV_CASES
FORWARD = torch.ops.advprune.one_channel_conv_max_pool2x2
INPUT_GRAD = torch.ops.advprune.one_channel_conv_max_pool2x2_input_grad


def _operands(case, dtype, seed):
    n, c, h, w, kh, kw, _ = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(c, 1, kh, kw, generator=gen, dtype=torch.float64)
    bias = torch.randn(c, generator=gen, dtype=torch.float64)
    return x.to(dtype), weight.to(dtype), bias.to(dtype)


def _conv64(x, weight, bias, padding, dtype):
    """The convolution in float64, rounded once to dtype as an unfused convolution's output is."""
    return F.conv2d(x.double(), weight.double(), bias.double(), padding=padding).to(dtype).double()


def _codes(indices: torch.Tensor, width: int) -> torch.Tensor:
    """max_pool2d's flat indices as window positions dy * 2 + dx."""
    return (indices // width % 2) * 2 + indices % width % 2


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_forward_equals_the_float64_reference(dtype, case, relu):
    x, weight, bias = _operands(case, dtype, seed=sum(case[:6]))
    padding = case[6]
    conv = _conv64(x, weight, bias, padding, dtype)
    pooled, indices = F.max_pool2d(conv, 2, return_indices=True)
    codes = _codes(indices, conv.shape[3])
    want, codes = (pooled.relu(), codes.where(pooled > 0, 4)) if relu else (pooled, codes)  # 4: no gradient
    poison_allocator(tuple(want.shape), device="cpu", dtype=dtype)
    got, argmax = FORWARD(x, weight, bias, *padding, relu)
    assert got.dtype == dtype and got.shape == want.shape and argmax.dtype == torch.uint8
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert_close_rel(got, want, max(tolerance(dtype), 1e-5))
    agree = (argmax.long() == codes).double().mean()
    # a winner may differ where two values of a window round alike (often in 16 bits), never in 64 or 32
    assert agree == 1.0 if dtype in (torch.float32, torch.float64) else agree > 0.97
    assert got.abs().min() < got.abs().max()
    assert not relu or (0 < (argmax == 4).double().mean() < 1)  # ReLU zeroed some windows, not all


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_input_gradient_equals_the_float64_reference(dtype, case, relu):
    x, weight, bias = _operands(case, dtype, seed=7 + sum(case[:6]))
    padding = case[6]
    _, argmax = FORWARD(x, weight, bias, *padding, relu)
    grad = torch.randn(argmax.shape, dtype=torch.float64).to(dtype).contiguous(memory_format=torch.channels_last)
    poison_allocator(tuple(x.shape), device="cpu", dtype=dtype)
    got = INPUT_GRAD(grad, argmax, weight, *padding, *x.shape[2:])
    # the reference: each pooled gradient to its window's winner (the kernel's own; none for code 4: ReLU zeroed
    # the window), then conv2d's input gradient
    conv_size = (x.shape[2] + 2 * padding[0] - case[4] + 1, x.shape[3] + 2 * padding[1] - case[5] + 1)
    conv_grad = torch.zeros(argmax.shape[0], argmax.shape[1], *conv_size, dtype=torch.float64)
    code = argmax.long()
    for dy in range(2):
        for dx in range(2):
            ph, pw = argmax.shape[2:]
            conv_grad[:, :, dy : 2 * ph : 2, dx : 2 * pw : 2] = grad.double() * (code == dy * 2 + dx)
    want = torch.nn.grad.conv2d_input(x.shape, weight.double(), conv_grad, padding=padding)
    assert got.dtype == dtype and got.shape == x.shape
    assert_close_rel(got, want, max(tolerance(dtype), 1e-5))
    assert got.abs().min() < got.abs().max()


def test_no_bias_is_a_zero_bias():
    x, weight, _ = _operands(CASES[1], torch.float32, seed=11)
    got, _ = FORWARD(x, weight, None, 0, 0)
    assert_close_rel(got, F.max_pool2d(F.conv2d(x.double(), weight.double()), 2), 1e-5)


@pytest.mark.parametrize("relu", [False, True])
def test_a_nan_input_pixel_wins_every_window_it_reaches(relu):
    x, weight, bias = _operands(CASES[0], torch.float32, seed=3)
    x[1, 0, 10, 20] = float("nan")
    got, argmax = FORWARD(x, weight, bias, 1, 1, relu)
    want = F.max_pool2d(F.conv2d(x, weight, bias, padding=1), 2)
    want = F.relu(want) if relu else want
    assert torch.equal(got.isnan(), want.isnan()) and int(got.isnan().sum()) == 4 * 32  # 3x3 taps: 2x2 windows
    assert not relu or bool((argmax[got.isnan()] == 4).all())  # ReLU's backward passes nothing at a NaN
    assert_close_rel(got.nan_to_num(), want.nan_to_num(), 1e-5)


def _frozen(seed, channels=16, size=(6, 1, 12, 10)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(size, generator=gen)
    weight = torch.randn(channels, 1, 3, 3, generator=gen).to(memory_format=torch.channels_last)  # restrided
    return x, weight, torch.randn(channels, generator=gen)


def _value_and_grad(fn, x, seed=0):
    leaf = x.clone().requires_grad_(True)
    out = fn(leaf)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return out, torch.autograd.grad(out, leaf, grad)[0]


@pytest.mark.parametrize("relu", [False, True])
def test_values_and_input_gradient_match_the_ops_in_turn(relu):
    x, weight, bias = _frozen(1)

    def in_turn(t):
        out = F.max_pool2d(F.conv2d(t, weight, bias, padding=1), 2)
        return F.relu(out) if relu else out

    ours = _value_and_grad(lambda t: ops.one_channel_conv_max_pool2x2(t, weight, bias, (1, 1), relu=relu), x)
    theirs = _value_and_grad(in_turn, x)
    assert "FrozenOneChannelConvPool" in type(ours[0].grad_fn).__name__
    for got, want in zip(ours, theirs, strict=True):
        assert_close_rel(got, want, 1e-5)


def _ops_run(x, weight, bias) -> set[str]:
    """The ops that the forward and backward of ops.one_channel_conv_max_pool2x2 run."""
    leaf = x.clone().requires_grad_(True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = ops.one_channel_conv_max_pool2x2(leaf, weight, bias, (1, 1))
        torch.autograd.grad(out.square().sum(), leaf)
    return {event.key for event in prof.key_averages()}


def test_the_kernel_serves_frozen_channels_last_weights_only():
    x, weight, bias = _frozen(2)
    fused = {"advprune::one_channel_conv_max_pool2x2", "advprune::one_channel_conv_max_pool2x2_input_grad"}
    assert fused <= _ops_run(x, weight, bias)
    # contiguous weights (a contiguous model: conv2d's output would be contiguous) and trained weights: the two ops
    assert not fused & _ops_run(x, weight.clone(memory_format=torch.contiguous_format), bias)
    assert not fused & _ops_run(x, weight, bias.clone().requires_grad_())


def test_autocast_bfloat16_matches_the_two_ops_under_autocast():
    x, weight, bias = _frozen(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _value_and_grad(lambda t: ops.one_channel_conv_max_pool2x2(t, weight, bias, (1, 1)), x)
        theirs = _value_and_grad(lambda t: F.max_pool2d(F.conv2d(t, weight, bias, padding=1), 2), x)
    assert ours[0].dtype == theirs[0].dtype == torch.bfloat16
    assert_close_rel(ours[0], theirs[0], 2 * tolerance(torch.bfloat16))
    # a window's winner may differ where its values round alike: the gradients agree up to those few
    assert (ours[1] - theirs[1]).abs().max() < 0.05 * theirs[1].abs().max()


def test_gradcheck_and_double_backward():
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, 1, 6, 5, generator=gen, dtype=torch.float64)
    weight = torch.randn(3, 1, 3, 3, generator=gen, dtype=torch.float64).to(memory_format=torch.channels_last)
    bias = torch.randn(3, generator=gen, dtype=torch.float64)

    for relu in (False, True):

        def block(t, relu=relu):  # nonlinear: a second derivative
            return ops.one_channel_conv_max_pool2x2(t, weight, bias, (1, 1), relu=relu).square()

        assert "FrozenOneChannelConvPool" in type(block(x.requires_grad_()).grad_fn.next_functions[0][0]).__name__
        assert torch.autograd.gradcheck(block, (x,))
        assert torch.autograd.gradgradcheck(block, (x,))


def test_the_kernels_refuse_bad_operands_naming_them():
    x, weight, bias = _frozen(5)
    with pytest.raises(ValueError, match=r"x must be \[N, 1, H, W\] \(one channel\), got shape \[6, 2, 12, 10\]"):
        FORWARD(x.expand(6, 2, 12, 10), weight, bias, 1, 1)
    with pytest.raises(ValueError, match=r"bias must be \[C\] with C = 16, got shape \[15\]"):
        FORWARD(x, weight, bias[:15], 1, 1)
    with pytest.raises(TypeError, match=r"weight has dtype torch\.float64 but x has dtype torch\.float32"):
        FORWARD(x, weight.double(), bias, 1, 1)
    with pytest.raises(ValueError, match=r"give a convolution output of 1x1; pooling needs 2x2 or more"):
        FORWARD(x[:, :, :3, :3], weight, bias, 0, 0)
    _, argmax = FORWARD(x, weight, bias, 1, 1)
    grad = torch.randn(argmax.shape)
    with pytest.raises(ValueError, match=r"which is not the pooled convolution output \(12x12 pooled to 6x6\)"):
        INPUT_GRAD(grad, argmax, weight, 1, 1, 12, 12)
    with pytest.raises(TypeError, match=r"argmax must be uint8"):
        INPUT_GRAD(grad, argmax.long(), weight, 1, 1, 12, 10)
    with pytest.raises(
        ValueError, match=r"weight must be \[C, 1, KH, KW\] with grad's C = 16, got shape \[8, 1, 3, 3\]"
    ):
        INPUT_GRAD(grad, argmax, weight[:8], 1, 1, 12, 10)


def test_opcheck_and_compile():
    x, weight, bias = _frozen(6)
    torch.library.opcheck(FORWARD.default, (x, weight, bias, 1, 1))
    torch.library.opcheck(FORWARD.default, (x, weight, bias, 1, 1, True))
    _, argmax = FORWARD(x, weight, bias, 1, 1)
    grad = torch.randn(argmax.shape).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(INPUT_GRAD.default, (grad, argmax, weight, 1, 1, 12, 10))
    block = torch.compile(lambda t: ops.one_channel_conv_max_pool2x2(t, weight, bias, (1, 1)), fullgraph=True)
    ours = _value_and_grad(block, x)
    theirs = _value_and_grad(lambda t: F.max_pool2d(F.conv2d(t, weight, bias, padding=1), 2), x)
    for got, want in zip(ours, theirs, strict=True):
        assert_close_rel(got, want, 1e-5)


def test_the_small_cnn_fuses_under_attack_and_not_when_hooked():
    torch.manual_seed(0)
    model = models.create("small-cnn").to(memory_format=torch.channels_last).eval()
    x = torch.rand(8, 1, 28, 28)
    with attacks.weights_frozen(model):
        fused = _value_and_grad(model, x)
        assert {"advprune::one_channel_conv_max_pool2x2"} <= {e.key for e in _profile_forward(model, x)}
        seen = []
        handle = model.body[1].register_forward_hook(lambda *_: seen.append(True))
        unfused = _value_and_grad(model, x)
        handle.remove()
    assert seen == [True]  # the hook ran: a hooked layer is called, not fused
    for got, want in zip(fused, unfused, strict=True):
        assert_close_rel(got, want, 1e-5)


def _profile_forward(model, x):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    return prof.key_averages()
