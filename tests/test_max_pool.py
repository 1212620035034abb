"""advprune.ops.max_pool2x2 (the small CNN's pooling) against a float64 reference and F.max_pool2d: the
same values and gradients bit for bit, ties and NaN included, for every float dtype and odd sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from advprune import models, ops
from tests.helpers import FLOAT_DTYPES

pytestmark = pytest.mark.skipif(not ops.extension_loaded(), reason="the compiled kernels are not loaded")

SHAPES = [(4, 32, 28, 28), (3, 37, 7, 9), (2, 1, 6, 5), (2, 8, 2, 2), (5, 3, 3, 8)]


def _batch(shape, dtype, seed):
    """Random values with ties inside windows (a tenth of the entries copy a neighbour), a few NaN and
    -inf, in channels_last."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    flat = x.view(-1)
    copies = torch.randint(1, flat.numel(), (flat.numel() // 10,), generator=gen)
    flat[copies] = flat[copies - 1]
    flat[torch.randint(0, flat.numel(), (max(1, flat.numel() // 97),), generator=gen)] = float("nan")
    flat[torch.randint(0, flat.numel(), (max(1, flat.numel() // 89),), generator=gen)] = float("-inf")
    x[0, 0, 0, 1] = float("nan")  # one inside a window for certain
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


def _reference(x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled values and input gradient in float64, window by window: the first position holding the
    maximum wins, a NaN wins over any number (the last NaN among several, as max_pool2d's scan)."""
    x64, g64 = x.double(), grad.double()
    n, c, h, w = x.shape
    out = torch.empty(n, c, h // 2, w // 2, dtype=torch.float64)
    grad_in = torch.zeros(n, c, h, w, dtype=torch.float64)
    windows = x64[:, :, : h // 2 * 2, : w // 2 * 2].unfold(2, 2, 2).unfold(3, 2, 2).reshape(n, c, h // 2, w // 2, 4)
    best = windows[..., 0].clone()
    position = torch.zeros(best.shape, dtype=torch.long)
    for k in range(1, 4):
        take = (windows[..., k] > best) | windows[..., k].isnan()
        best = torch.where(take, windows[..., k], best)
        position = torch.where(take, k, position)
    out.copy_(best)
    rows = torch.arange(h // 2).view(1, 1, -1, 1) * 2 + position // 2
    cols = torch.arange(w // 2).view(1, 1, 1, -1) * 2 + position % 2
    grad_in.view(n, c, h * w).scatter_(2, (rows * w + cols).view(n, c, -1), g64.reshape(n, c, -1))
    return out, grad_in


def _pool_and_grad(pool, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_(True)
    out = pool(leaf)
    (grad_in,) = torch.autograd.grad(out, leaf, grad)
    return out, grad_in


def _poison(shape, dtype) -> None:
    """Frees blocks of the outputs' sizes filled with 7777, so that an unwritten element likely shows."""
    blocks = [torch.full(shape, 7777.0, dtype=dtype) for _ in range(3)]
    del blocks


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_pooled_values_and_gradients_equal_the_float64_reference(dtype, shape):
    x = _batch(shape, dtype, seed=sum(shape))
    grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2).to(dtype)
    _poison(shape, dtype)
    out, grad_in = _pool_and_grad(ops.max_pool2x2, x, grad)
    want_out, want_grad = _reference(x, grad)
    assert out.dtype == dtype and grad_in.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert grad_in.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), want_out, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(grad_in.double(), want_grad, rtol=0, atol=0)
    assert out.isnan().any() and (grad_in != 0).any()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_values_and_gradients_are_max_pool2d_bit_for_bit(dtype):
    x = _batch((6, 16, 11, 10), dtype, seed=5)
    grad = torch.randn(6, 16, 5, 5).to(dtype)
    out, grad_in = _pool_and_grad(ops.max_pool2x2, x, grad)
    want_out, want_grad = _pool_and_grad(lambda t: F.max_pool2d(t, 2), x, grad)
    assert torch.equal(out.isnan(), want_out.isnan())
    assert torch.equal(out.nan_to_num(), want_out.nan_to_num())
    assert torch.equal(grad_in, want_grad)


def test_other_layouts_fall_back_to_max_pool2d():
    x = torch.randn(3, 4, 8, 8)  # contiguous, not channels_last
    out = ops.max_pool2x2(x)
    assert out.is_contiguous() and torch.equal(out, F.max_pool2d(x, 2))


def test_the_kernel_refuses_what_it_cannot_pool_with_the_received_shape():
    with pytest.raises(ValueError, match=r"x must be 4-D \[N, C, H, W\], got shape \[2, 3, 5\]"):
        torch.ops.advprune.max_pool2x2(torch.rand(2, 3, 5))
    with pytest.raises(ValueError, match=r"at least 2x2 to pool, got shape \[2, 3, 1, 5\]"):
        ops.max_pool2x2(torch.rand(2, 3, 1, 5).contiguous(memory_format=torch.channels_last))
    with pytest.raises(TypeError, match=r"x must be float32, float64, float16 or bfloat16, got torch\.int64"):
        torch.ops.advprune.max_pool2x2(torch.ones(2, 3, 4, 4, dtype=torch.long))
    codes = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    with pytest.raises(
        ValueError, match=r"grad has shape \[2, 3, 2, 2\], which is not the pooled shape of an input of 6x4"
    ):
        torch.ops.advprune.max_pool2x2_backward(torch.rand(2, 3, 2, 2), codes, 6, 4)
    with pytest.raises(TypeError, match="argmax must be uint8"):
        torch.ops.advprune.max_pool2x2_backward(torch.rand(2, 3, 2, 2), codes.long(), 4, 4)


def test_the_small_cnn_trains_the_same_with_either_pooling():
    """The kernel only changes the time: a PGD-style step in bfloat16 gives the same input gradient
    and the same weight gradients as with nn.MaxPool2d."""
    torch.manual_seed(0)
    ours = models.create("small-cnn").to(memory_format=torch.channels_last)
    theirs = models.create("small-cnn").to(memory_format=torch.channels_last)
    theirs.load_state_dict(ours.state_dict())  # the pooling has no parameters: same keys
    theirs.body[1], theirs.body[4] = torch.nn.MaxPool2d(2), torch.nn.MaxPool2d(2)
    assert type(ours.body[1]).__name__ == "MaxPool2x2"
    x = torch.rand(32, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32,))
    grads = []
    for model in (ours, theirs):
        leaf = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(leaf).float(), y)
        grads.append(torch.autograd.grad(loss, [leaf, *model.parameters()]))
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)
    assert grads[0][0].abs().sum() > 0


def test_the_ops_pass_opcheck_and_compile_in_one_graph():
    x = _batch((2, 8, 6, 7), torch.float32, seed=11)
    x = x.nan_to_num(0.0, 0.0, 0.0).contiguous(memory_format=torch.channels_last)  # opcheck compares without NaN
    out, argmax = torch.ops.advprune.max_pool2x2(x)
    torch.library.opcheck(torch.ops.advprune.max_pool2x2.default, (x,))
    torch.library.opcheck(torch.ops.advprune.max_pool2x2_backward.default, (torch.randn_like(out), argmax, 6, 7))

    grad = torch.randn_like(out)
    compiled = torch.compile(lambda t: ops.max_pool2x2(t) * 2, fullgraph=True)
    got = _pool_and_grad(compiled, x, grad)
    want = _pool_and_grad(lambda t: ops.max_pool2x2(t) * 2, x, grad)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_double_backward_equals_max_pool2d_s():
    """A gradient penalty differentiates the pooling's backward: gradcheck and gradgradcheck in float64, and
    the penalty's gradient against max_pool2d's."""
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    leaf = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(ops.max_pool2x2, (leaf,))
    assert torch.autograd.gradgradcheck(ops.max_pool2x2, (leaf,))
    weights = torch.randn(2, 3, 3, 2, dtype=torch.float64)
    penalties = []
    for pool in (ops.max_pool2x2, lambda t: F.max_pool2d(t, 2)):
        inner = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad((pool(inner) ** 2 * weights).sum(), inner, create_graph=True)
        penalties.append(torch.autograd.grad((grad**2).sum(), inner)[0])
    assert torch.equal(penalties[0], penalties[1]) and penalties[0].abs().sum() > 0
