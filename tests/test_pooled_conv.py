"""advprune.ops.conv_max_pool2x2 (the small CNN's second block: conv2d, max_pool2x2 and ReLU, whose input gradient
with frozen 3x3 weights comes from the pooled gradient in one kernel): the kernel against a float64 reference on
fresh random inputs and window positions, its autograd against the ops in turn (autocast, double backward), when it
serves, its refusals, and the small CNN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from advprune import attacks, models, ops
from tests.helpers import FLOAT_DTYPES, assert_close_rel, poison_allocator, tolerance

pytestmark = pytest.mark.skipif(not ops.extension_loaded(), reason="the compiled kernels are not loaded")

INPUT_GRAD = torch.ops.advprune.conv3x3_max_pool2x2_input_grad
# (n, c_in, c_out, h, w, padding): the small CNN's block; input channels that fill no whole vector (5, 17: a
# partial last chunk) or one lane (1); convolution outputs of odd size (a row or column in no window)
CASES = [
    (5, 32, 64, 14, 14, (1, 1)),
    (3, 5, 7, 9, 11, (0, 0)),
    (2, 12, 3, 6, 5, (2, 1)),
    (2, 17, 9, 7, 7, (1, 1)),
    (2, 1, 4, 4, 5, (0, 0)),
]


def _gradient_operands(case, dtype, seed):
    """The pooled gradient, window positions (0-3 a winner; 4 and 5: none, as where a ReLU zeroed the window) and
    channels_last weights."""
    n, c_in, c_out, h, w, (pad_h, pad_w) = case
    gen = torch.Generator().manual_seed(seed)
    pooled = (n, c_out, (h + 2 * pad_h - 2) // 2, (w + 2 * pad_w - 2) // 2)
    grad = torch.randn(pooled, generator=gen, dtype=torch.float64).to(dtype)
    codes = torch.randint(0, 6, pooled, generator=gen, dtype=torch.uint8)
    weight = torch.randn(c_out, c_in, 3, 3, generator=gen, dtype=torch.float64).to(dtype)
    cl = torch.channels_last
    return grad.contiguous(memory_format=cl), codes.contiguous(memory_format=cl), weight.contiguous(memory_format=cl)


def _reference(grad, codes, weight, input_size, padding):
    """Each pooled gradient to its window's winner in float64 (none for codes 4 and up), then conv2d's input
    gradient."""
    n, c_out, ph, pw = grad.shape
    height, width = input_size
    conv_grad = torch.zeros(n, c_out, height + 2 * padding[0] - 2, width + 2 * padding[1] - 2, dtype=torch.float64)
    for dy in range(2):
        for dx in range(2):
            conv_grad[:, :, dy : 2 * ph : 2, dx : 2 * pw : 2] = grad.double() * (codes.long() == dy * 2 + dx)
    shape = (n, weight.shape[1], height, width)
    return torch.nn.grad.conv2d_input(shape, weight.double(), conv_grad, padding=padding)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_input_gradient_equals_the_float64_reference(dtype, case):
    grad, codes, weight = _gradient_operands(case, dtype, seed=sum(case[:5]))
    n, c_in, _, h, w, padding = case
    poison_allocator((n, c_in, h, w), device="cpu", dtype=dtype)
    got = INPUT_GRAD(grad, codes, weight, *padding, h, w)
    want = _reference(grad, codes, weight, (h, w), padding)
    assert got.dtype == dtype and got.shape == (n, c_in, h, w)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert_close_rel(got, want, max(tolerance(dtype), 1e-5))
    assert got.abs().max() > 0


def test_input_gradient_of_contiguous_operands():
    grad, codes, weight = _gradient_operands(CASES[1], torch.float32, seed=2)
    got = INPUT_GRAD(grad.contiguous(), codes.contiguous(), weight.contiguous(), 0, 0, 9, 11)
    assert_close_rel(got, _reference(grad, codes, weight, (9, 11), (0, 0)), 1e-5)


def test_a_nan_gradient_reaches_its_winners_taps_only():
    grad, codes, weight = _gradient_operands(CASES[0], torch.float32, seed=3)
    grad[1, 5, 2, 3], codes[1, 5, 2, 3] = float("nan"), 3  # the winner: conv output pixel (5, 7)
    got = INPUT_GRAD(grad, codes, weight, 1, 1, 14, 14)
    want = torch.zeros_like(got, dtype=torch.bool)
    want[1, :, 4:7, 6:9] = True  # its 3x3 taps, every input channel
    assert torch.equal(got.isnan(), want)


def _frozen(seed, c_in=8, c_out=12, size=(6, 14, 12)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(size[0], c_in, *size[1:], generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c_in, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last)
    return x, weight, torch.randn(c_out, generator=gen)


def _value_and_grad(fn, x, seed=0):
    leaf = x.clone().requires_grad_(True)
    out = fn(leaf)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return out, torch.autograd.grad(out, leaf, grad)[0]


def _in_turn(weight, bias, relu):
    def block(t):
        out = F.max_pool2d(F.conv2d(t, weight, bias, padding=1), 2)
        return F.relu(out) if relu else out

    return block


@pytest.mark.parametrize("relu", [False, True])
def test_values_and_input_gradient_match_the_ops_in_turn(relu):
    x, weight, bias = _frozen(1)
    ours = _value_and_grad(lambda t: ops.conv_max_pool2x2(t, weight, bias, (1, 1), relu=relu), x)
    theirs = _value_and_grad(_in_turn(weight, bias, relu), x)
    assert "FrozenConvPool" in type(ours[0].grad_fn).__name__
    for got, want in zip(ours, theirs, strict=True):
        assert_close_rel(got, want, 1e-5)


def test_relu_passes_no_gradient_where_its_output_is_zero():
    """Windows whose maximum is <= 0 give no gradient (nn.ReLU's rule), and a NaN maximum passes it (as nn.ReLU's)."""
    x, weight, bias = _frozen(7)
    bias = bias - 6.0  # many windows negative
    x[2, :, 5, 5] = float("nan")
    ours = _value_and_grad(lambda t: ops.conv_max_pool2x2(t, weight, bias, (1, 1), relu=True), x)
    theirs = _value_and_grad(_in_turn(weight, bias, True), x)
    assert 0.1 < float((theirs[0] == 0).double().mean()) < 0.9
    assert torch.equal(ours[0].isnan(), theirs[0].isnan()) and int(theirs[0].isnan().sum()) == 4 * 12
    for got, want in zip(ours, theirs, strict=True):
        assert_close_rel(got.nan_to_num(), want.nan_to_num(), 1e-5)


def _ops_run(x, weight, bias) -> set[str]:
    leaf = x.clone().requires_grad_(True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = ops.conv_max_pool2x2(leaf, weight, bias, (1, 1))
        torch.autograd.grad(out.square().sum(), leaf)
    return {event.key for event in prof.key_averages()}


def test_the_kernel_serves_frozen_channels_last_3x3_weights_only():
    x, weight, bias = _frozen(2)
    assert "advprune::conv3x3_max_pool2x2_input_grad" in _ops_run(x, weight, bias)
    contiguous = x.contiguous(), weight.contiguous()
    assert "advprune::conv3x3_max_pool2x2_input_grad" not in _ops_run(*contiguous, bias)
    assert "advprune::conv3x3_max_pool2x2_input_grad" not in _ops_run(x, weight, bias.clone().requires_grad_())
    five = torch.randn(12, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    assert "advprune::conv3x3_max_pool2x2_input_grad" not in _ops_run(x, five, bias)


def test_autocast_bfloat16_matches_the_ops_under_autocast():
    x, weight, bias = _frozen(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _value_and_grad(lambda t: ops.conv_max_pool2x2(t, weight, bias, (1, 1), relu=True), x)
        theirs = _value_and_grad(_in_turn(weight, bias, True), x)
    assert ours[0].dtype == theirs[0].dtype == torch.bfloat16
    assert torch.equal(ours[0], theirs[0])  # the same convolution and pooling: bit for bit
    assert_close_rel(ours[1], theirs[1], 4 * tolerance(torch.bfloat16))


def test_gradcheck_and_double_backward():
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 6, 5, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    bias = torch.randn(4, generator=gen, dtype=torch.float64)
    for relu in (False, True):

        def block(t, relu=relu):  # nonlinear: a second derivative
            return ops.conv_max_pool2x2(t, weight, bias, (1, 1), relu=relu).square()

        assert "FrozenConvPool" in type(block(x.requires_grad_()).grad_fn.next_functions[0][0]).__name__
        assert torch.autograd.gradcheck(block, (x,))
        assert torch.autograd.gradgradcheck(block, (x,))


def test_the_kernel_refuses_bad_operands_naming_them():
    grad, codes, weight = _gradient_operands(CASES[0], torch.float32, seed=5)
    with pytest.raises(ValueError, match=r"weight must be \[C_out, C_in, 3, 3\] with grad's C_out = 64, got shape"):
        INPUT_GRAD(grad, codes, weight[:, :, :2], 1, 1, 14, 14)
    with pytest.raises(ValueError, match=r"with grad's C_out = 64, got shape \[32, 32, 3, 3\]"):
        INPUT_GRAD(grad, codes, weight[:32], 1, 1, 14, 14)
    with pytest.raises(TypeError, match=r"weight has dtype torch\.float64 but grad has dtype torch\.float32"):
        INPUT_GRAD(grad, codes, weight.double(), 1, 1, 14, 14)
    with pytest.raises(ValueError, match=r"not the pooled convolution output \(14x12 pooled to 7x6\)"):
        INPUT_GRAD(grad, codes, weight, 1, 1, 14, 12)
    with pytest.raises(TypeError, match=r"argmax must be uint8"):
        INPUT_GRAD(grad, codes.long(), weight, 1, 1, 14, 14)
    with pytest.raises(ValueError, match=r"argmax has shape \[5, 64, 7, 6\]"):
        INPUT_GRAD(grad, codes[..., :6], weight, 1, 1, 14, 14)
    with pytest.raises(ValueError, match=r"padding must be >= 0, got \(-1, 1\)"):
        INPUT_GRAD(grad, codes, weight, -1, 1, 14, 14)


def test_opcheck_and_compile():
    grad, codes, weight = _gradient_operands(CASES[3], torch.float32, seed=6)
    torch.library.opcheck(INPUT_GRAD.default, (grad, codes, weight, 1, 1, 7, 7))
    x, weight, bias = _frozen(6)
    block = torch.compile(lambda t: ops.conv_max_pool2x2(t, weight, bias, (1, 1), relu=True), fullgraph=True)
    ours = _value_and_grad(block, x)
    theirs = _value_and_grad(_in_turn(weight, bias, True), x)
    for got, want in zip(ours, theirs, strict=True):
        assert_close_rel(got, want, 1e-5)


def test_the_small_cnn_uses_it_under_attack_and_not_when_hooked():
    torch.manual_seed(0)
    model = models.create("small-cnn").to(memory_format=torch.channels_last).eval()
    x = torch.rand(8, 1, 28, 28)
    with attacks.weights_frozen(model):
        fused = _value_and_grad(model, x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _value_and_grad(model, x)
        assert "advprune::conv3x3_max_pool2x2_input_grad" in {e.key for e in prof.key_averages()}
        seen = []
        handle = model.body[4].register_forward_hook(lambda *_: seen.append(True))
        unfused = _value_and_grad(model, x)
        handle.remove()
    assert seen == [True]  # the hook ran: a hooked layer is called, not fused
    for got, want in zip(fused, unfused, strict=True):
        assert_close_rel(got, want, 1e-5)


def test_padding_as_an_int_and_refused_when_not_numeric():
    x, weight, bias = _frozen(8)
    as_pair = _value_and_grad(lambda t: ops.conv_max_pool2x2(t, weight, bias, (1, 1), relu=True), x)
    as_int = _value_and_grad(lambda t: ops.conv_max_pool2x2(t, weight, bias, 1, relu=True), x)
    for got, want in zip(as_int, as_pair, strict=True):
        assert torch.equal(got, want)
    for bad in ("same", (1, 1, 1), (1.0, 1)):
        with pytest.raises(ValueError, match=r"padding must be an int or a pair of ints \(pad_h, pad_w\), got"):
            ops.conv_max_pool2x2(x, weight, bias, bad)
