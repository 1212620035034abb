"""advprune's fused ops: Python wrappers over torch.ops.advprune, their fake
kernels (torch.compile, meta tensors) and autograd, and the extension loading.

When the compiled extension cannot be loaded the pure-PyTorch reference serves,
with one warning; build_info() says which one is in use.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from advprune import _checks, reference
from advprune._types import SampleScores

__all__ = [
    "SampleScores",
    "build_info",
    "conv_max_pool2x2",
    "extension_loaded",
    "kl_rows",
    "max_pool2x2",
    "one_channel_conv2d",
    "one_channel_conv_max_pool2x2",
    "pgd_step_",
    "project_",
    "sample_scores",
]


def _cpu_has_avx2() -> bool:
    probe = getattr(torch.cpu, "_is_avx2_supported", None)
    if probe is not None:
        return bool(probe())
    try:
        with open("/proc/cpuinfo") as f:
            return "avx2" in f.read().split()
    except OSError:
        return False


# the ops of csrc/advprune.cpp that this module calls: a library built from older sources lacks some
_OPS = (
    "pgd_step_",
    "project_",
    "sample_scores",
    "kl_rows",
    "kl_rows_backward",
    "max_pool2x2",
    "max_pool2x2_backward",
    "one_channel_conv_input_grad",
    "one_channel_conv_max_pool2x2",
    "one_channel_conv_max_pool2x2_input_grad",
    "conv3x3_max_pool2x2_input_grad",
)


def _load_extension() -> str | None:
    """Imports advprune._C (which registers the kernels) and checks that it has every op this module calls;
    returns why not, or None."""
    try:
        config = importlib.import_module("advprune._build_config")
    except ImportError:
        return "advprune was not built (no advprune/_build_config.py): pip install --no-build-isolation ."
    if config.CPU_ISA == "avx2" and not _cpu_has_avx2():
        return "the extension was built for AVX2 and this CPU lacks it: rebuild with ADVPRUNE_CPU_ISA=default"
    try:
        importlib.import_module("advprune._C")
    except ImportError as exc:
        return f"importing advprune._C failed: {exc}"
    missing = [name for name in _OPS if not hasattr(torch.ops.advprune, name)]
    if missing:
        return (
            f"the compiled library lacks the ops {', '.join(missing)}: it was built from older sources; rebuild it "
            "(pip install --no-build-isolation -e . in the checkout)"
        )
    return None


_LOAD_ERROR = _load_extension()
_EXT = _LOAD_ERROR is None
if not _EXT:
    warnings.warn(
        f"advprune: compiled kernels not loaded ({_LOAD_ERROR}); the slower pure-PyTorch reference serves",
        RuntimeWarning,
        stacklevel=2,
    )


def extension_loaded() -> bool:
    """Whether the compiled kernels are in use (else the reference serves)."""
    return _EXT


def build_info() -> dict[str, Any]:
    """What this installation is: versions, whether the compiled kernels are loaded, CUDA arches."""
    from advprune import __version__

    try:
        config = importlib.import_module("advprune._build_config")
    except ImportError:
        config = None
    has_cuda_kernels = _EXT and torch._C._dispatch_has_kernel_for_dispatch_key("advprune::pgd_step_", "CUDA")
    archs = getattr(config, "CUDA_ARCHS", "") or ""
    return {
        "version": __version__,
        "torch_runtime": torch.__version__,
        "torch_built_against": getattr(config, "TORCH_VERSION", None),
        "extension_loaded": _EXT,
        "extension_error": _LOAD_ERROR,
        "cpu_isa": getattr(config, "CPU_ISA", None),
        "cuda_compiled": bool(has_cuda_kernels),
        "cuda_version": getattr(config, "CUDA_VERSION", None) if has_cuda_kernels else None,
        "cuda_archs": [a for a in archs.replace(",", ";").split(";") if a] if has_cuda_kernels else [],
        "cuda_available": torch.cuda.is_available(),
    }


# ------------------------------------------------------------------ wrappers


def pgd_step_(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_nat: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    norm: str = "linf",
    clip_min: float = 0.0,
    clip_max: float = 1.0,
) -> torch.Tensor:
    """One projected-gradient ascent step on x_adv, in place; returns x_adv.

    linf: x_adv = clamp(clamp(x_adv + step_size * sign(grad), x_nat - eps, x_nat + eps), clip_min, clip_max).
    l2, per sample along dim 0: a step of length step_size along grad, the delta from
    x_nat scaled back into the eps-ball, then the clip. NaN entries of grad count as 0:
    no step there, and no NaN in the l2 norm. Bad arguments raise before anything is written.
    """
    op = "advprune.pgd_step_"
    eps = _checks.check_number(op, "eps", eps)
    step_size = _checks.check_number(op, "step_size", step_size)
    clip_min = _checks.check_number(op, "clip_min", clip_min)
    clip_max = _checks.check_number(op, "clip_max", clip_max)
    _checks.check_norm(op, norm)
    _checks.check_pgd_scalars(op, eps, step_size, clip_min, clip_max)
    _checks.check_tensor_args(op, x_adv=x_adv, grad=grad, x_nat=x_nat)
    if not _EXT:
        return reference.pgd_step_(
            x_adv, grad, x_nat, eps=eps, step_size=step_size, norm=norm, clip_min=clip_min, clip_max=clip_max
        )
    torch.ops.advprune.pgd_step_(
        x_adv, grad, x_nat, eps=eps, step_size=step_size, norm=norm, clip_min=clip_min, clip_max=clip_max
    )
    return x_adv


def project_(
    x_adv: torch.Tensor,
    x_nat: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    clip_min: float = 0.0,
    clip_max: float = 1.0,
) -> torch.Tensor:
    """Projects x_adv in place onto the eps-ball (linf or l2) around x_nat and [clip_min, clip_max]."""
    op = "advprune.project_"
    eps = _checks.check_number(op, "eps", eps)
    clip_min = _checks.check_number(op, "clip_min", clip_min)
    clip_max = _checks.check_number(op, "clip_max", clip_max)
    _checks.check_norm(op, norm)
    _checks.check_pgd_scalars(op, eps, None, clip_min, clip_max)
    _checks.check_tensor_args(op, x_adv=x_adv, x_nat=x_nat)
    if not _EXT:
        return reference.project_(x_adv, x_nat, eps=eps, norm=norm, clip_min=clip_min, clip_max=clip_max)
    torch.ops.advprune.project_(x_adv, x_nat, eps=eps, norm=norm, clip_min=clip_min, clip_max=clip_max)
    return x_adv


def sample_scores(logits: torch.Tensor, labels: torch.Tensor, *, check_labels: bool = True) -> SampleScores:
    """Per-sample loss, margin, EL2N, entropy, confidence (float32) and correct (bool) of [N, C] logits.

    One fused pass per row, max-subtracted, accumulated in float32 (float64 for
    float64 logits). Not differentiable: these are scores, not a training loss.
    check_labels=False skips the label range check, a device sync on a GPU, for callers whose labels
    are known to lie in [0, C) (the Trainer's, which its loss has checked); an out-of-range label then
    scores as no class (loss inf, correct False) and is never read past its row.
    """
    _checks.check_tensor_args("advprune.sample_scores", logits=logits, labels=labels)
    if not _EXT:
        return reference.sample_scores(logits, labels)
    return SampleScores(*torch.ops.advprune.sample_scores(logits, labels, check_labels=check_labels))


def kl_rows(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Per-row KL(softmax(p) || softmax(q)) of two [N, C] logit tensors, differentiable in both."""
    _checks.check_tensor_args("advprune.kl_rows", logits_p=logits_p, logits_q=logits_q)
    if not _EXT:
        return reference.kl_rows(logits_p, logits_q)
    return torch.ops.advprune.kl_rows(logits_p, logits_q)


def max_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """F.max_pool2d(x, 2): the same values and gradients, faster for a channels_last batch on the CPU.

    The compiled kernel keeps each output's window position in one byte (not an int64 index) and its
    backward writes each input gradient once; it serves channels_last CPU tensors of 4 dims, and
    max_pool2d everything else (other layouts, other devices, no compiled extension). Double backward
    works as through max_pool2d.
    """
    if _EXT and x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return _MaxPool2x2.apply(x)
    return torch.nn.functional.max_pool2d(x, 2)


class _MaxPool2x2(torch.autograd.Function):
    """The compiled pooling's autograd: saves the byte-sized window positions, not the input. (An
    autograd.Function: torch.library.register_autograd's wrapper cost more than the kernel saves.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out, argmax = torch.ops.advprune.max_pool2x2(x)
        ctx.save_for_backward(argmax)
        ctx.input_size = tuple(x.shape[2:])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (argmax,) = ctx.saved_tensors
        return _MaxPool2x2Backward.apply(grad, argmax, ctx.input_size)


class _MaxPool2x2Backward(torch.autograd.Function):
    """The pooling's backward (each output gradient to its window's winner, 0 elsewhere; nothing for a window
    position of 4, where the fused first block's ReLU passes no gradient), itself differentiable for double
    backward (gradient penalties): linear in grad, so its own backward takes each window's winner from the
    incoming gradient."""

    @staticmethod
    def forward(ctx, grad: torch.Tensor, argmax: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(argmax)
        return torch.ops.advprune.max_pool2x2_backward(grad, argmax, *input_size)

    @staticmethod
    def backward(ctx, grad_grad_in: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (argmax,) = ctx.saved_tensors
        n, c, oh, ow = argmax.shape
        windows = grad_grad_in[:, :, : 2 * oh, : 2 * ow].reshape(n, c, oh, 2, ow, 2).transpose(3, 4)
        positions = torch.nn.functional.pad(windows.reshape(n, c, oh, ow, 4), (0, 1))  # position 4: zero
        winners = positions.gather(-1, argmax.long().unsqueeze(-1)).squeeze(-1)
        return winners, None, None


def _frozen_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the compiled convolution kernels may serve: the extension, frozen weights (as the attacks run them)
    and a 4-D batch and weight with x on the CPU."""
    frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
    return _EXT and frozen and x.device.type == "cpu" and x.dim() == 4 and weight.dim() == 4


def _frozen_one_channel_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the compiled kernels of a one-channel first layer serve: _frozen_cpu, one input channel."""
    return _frozen_cpu(x, weight, bias) and x.shape[1] == 1


def _pair(padding: int | tuple[int, int]) -> tuple[int, int]:
    """(pad_h, pad_w) from an int or a pair of ints, as conv2d takes numeric padding; anything else is refused."""
    pair = (padding, padding) if isinstance(padding, int) else tuple(padding) if isinstance(padding, Sequence) else ()
    if len(pair) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) for p in pair):
        raise ValueError(f"padding must be an int or a pair of ints (pad_h, pad_w), got {padding!r}")
    return pair


def _autocast_operands(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The operands as CPU autocast casts conv2d's (floating ones to its dtype, float64 kept), for an op that then
    runs with autocast off."""
    if not torch.is_autocast_enabled("cpu"):
        return tensors
    dtype = torch.get_autocast_dtype("cpu")
    return tuple(
        t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t for t in tensors
    )


def one_channel_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: int | tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=padding) (stride 1) of a one-channel batch. With the weights frozen (as
    the attacks run: attacks.weights_frozen) its input gradient on the CPU comes from advprune's kernel, where
    oneDNN's takes up to 4-13x the forward's time for one input channel; the same values and gradients (to
    rounding), autocast casting as for F.conv2d, double backward as through it. Anything else (weights that
    require gradients, more channels, other devices, no extension) is F.conv2d itself."""
    if not _frozen_one_channel_cpu(x, weight, bias):
        return torch.nn.functional.conv2d(x, weight, bias, padding=padding)
    x, weight, bias = _autocast_operands(x, weight, bias)
    with torch.autocast("cpu", enabled=False):
        return _FrozenOneChannelConv2d.apply(x, weight, bias, _pair(padding))


def one_channel_conv_max_pool2x2(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    padding: int | tuple[int, int] = (0, 0),
    relu: bool = False,
) -> torch.Tensor:
    """max_pool2x2(one_channel_conv2d(x, weight, bias, padding)), then ReLU if relu: the small CNN's first block.
    With the weights frozen and a channels_last convolution (channels_last weights, as advprune's models have)
    on the CPU, one kernel computes all, and one their input gradient, without the convolution's output (25 MB
    at batch 250) ever leaving the cache: the same values and gradients to rounding (a window's winner may
    differ where two of its values are within rounding), autocast and double backward as through the ops in
    turn. Anything else is the ops in turn (the ReLU in place)."""
    fused = _frozen_one_channel_cpu(x, weight, bias) and (weight.stride(1) == 1 or x.stride(1) == 1)
    if not fused:  # (the stride test: conv2d's output would be channels_last, as the kernel's is)
        out = max_pool2x2(one_channel_conv2d(x, weight, bias, padding))
        return torch.relu_(out) if relu else out
    x, weight, bias = _autocast_operands(x, weight, bias)
    with torch.autocast("cpu", enabled=False):
        return _FrozenOneChannelConvPool.apply(x, weight, bias, _pair(padding), relu)


def conv_max_pool2x2(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    padding: int | tuple[int, int] = (0, 0),
    relu: bool = False,
) -> torch.Tensor:
    """max_pool2x2(F.conv2d(x, weight, bias, padding=padding)) (stride 1), then ReLU if relu: the small CNN's
    second block. With the weights frozen (as the attacks run), 3x3 and a channels_last convolution on the CPU,
    its input gradient comes from one kernel that reads the pooled gradient and each window's winner: a quarter
    or less of the dense product oneDNN's input gradient computes, and no pooling backward. The same values and
    gradients to rounding, autocast and double backward as through the ops in turn, which serve everything else
    (the ReLU in place)."""
    fused = _frozen_cpu(x, weight, bias) and tuple(weight.shape[1:]) == (x.shape[1], 3, 3)
    fused = fused and (weight.stride(1) == 1 or x.stride(1) == 1)
    if not fused:  # (the stride test: conv2d's output is channels_last, which max_pool2x2's kernel serves)
        out = max_pool2x2(torch.nn.functional.conv2d(x, weight, bias, padding=padding))
        return torch.relu_(out) if relu else out
    x, weight, bias = _autocast_operands(x, weight, bias)
    with torch.autocast("cpu", enabled=False):
        return _FrozenConvPool.apply(x, weight, bias, _pair(padding), relu)


class _FrozenConvPool(torch.autograd.Function):
    """conv2d (oneDNN's), max_pool2x2's kernel and ReLU with frozen weights: saves the byte-sized window positions
    (4 where the ReLU passes no gradient, as nn.ReLU's backward: where its output is <= 0); the input gradient
    from the compiled kernel (under create_graph: the pooling's differentiable backward, then aten's)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, relu):
        out, argmax = torch.ops.advprune.max_pool2x2(torch.nn.functional.conv2d(x, weight, bias, padding=padding))
        if relu:
            argmax.masked_fill_(out <= 0, 4)
            out.relu_()
        ctx.save_for_backward(x, weight, argmax)
        ctx.padding = padding
        return out

    @staticmethod
    def backward(ctx, grad):
        kernel = torch.ops.advprune.conv3x3_max_pool2x2_input_grad
        return _pooled_conv_input_grad(ctx, grad, kernel), None, None, None, None


def _pooled_conv_input_grad(ctx, grad: torch.Tensor, kernel) -> torch.Tensor:
    """The input gradient of a frozen convolution and max_pool2x2 (ReLU in the window positions) from what its
    autograd.Function saved (x, weight, window positions; ctx.padding): the compiled `kernel`, or under
    create_graph the pooling's differentiable backward and then aten's convolution backward."""
    x, weight, argmax = ctx.saved_tensors
    height, width = x.shape[2:]
    if not torch.is_grad_enabled():
        return kernel(grad, argmax, weight, *ctx.padding, height, width)
    (pad_h, pad_w), (kh, kw) = ctx.padding, weight.shape[2:]
    conv_size = (height + 2 * pad_h - kh + 1, width + 2 * pad_w - kw + 1)
    return _conv_input_grad(_MaxPool2x2Backward.apply(grad, argmax, conv_size), x, weight, ctx.padding)


class _FrozenOneChannelConv2d(torch.autograd.Function):
    """conv2d with frozen weights whose input gradient comes from the compiled kernel (under create_graph from
    aten's convolution_backward, which is differentiable)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return torch.nn.functional.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        if not torch.is_grad_enabled():
            return torch.ops.advprune.one_channel_conv_input_grad(grad, weight, *ctx.padding), None, None, None
        return _conv_input_grad(grad, x, weight, ctx.padding), None, None, None


def _conv_input_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding) -> torch.Tensor:
    """conv2d's input gradient through aten (differentiable: double backward)."""
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, [1, 1], list(padding), [1, 1], False, [0, 0], 1, [True, False, False]
    )[0]


class _FrozenOneChannelConvPool(torch.autograd.Function):
    """The fused convolution, pooling and ReLU with frozen weights: saves the byte-sized window positions (4 where
    the ReLU passes no gradient); the input gradient from the compiled kernel (under create_graph: the pooling's
    differentiable backward, then aten's)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, relu):
        out, argmax = torch.ops.advprune.one_channel_conv_max_pool2x2(x, weight, bias, *padding, relu)
        ctx.save_for_backward(x, weight, argmax)
        ctx.padding = padding
        return out

    @staticmethod
    def backward(ctx, grad):
        kernel = torch.ops.advprune.one_channel_conv_max_pool2x2_input_grad
        return _pooled_conv_input_grad(ctx, grad, kernel), None, None, None, None


# ------------------------------------------------- fake kernels and autograd

if _EXT:

    @torch.library.register_fake("advprune::pgd_step_")
    def _pgd_step_fake(x_adv, grad, x_nat, *, eps, step_size, norm="linf", clip_min=0.0, clip_max=1.0):
        _checks.check_pgd("advprune.pgd_step_", x_adv, grad, x_nat, eps, step_size, norm, clip_min, clip_max)

    @torch.library.register_fake("advprune::project_")
    def _project_fake(x_adv, x_nat, *, eps, norm="linf", clip_min=0.0, clip_max=1.0):
        _checks.check_pgd("advprune.project_", x_adv, None, x_nat, eps, None, norm, clip_min, clip_max)

    @torch.library.register_fake("advprune::sample_scores")
    def _sample_scores_fake(logits, labels, *, check_labels=True):
        _checks.check_scores(logits, labels, check_values=False)
        n = logits.shape[0]
        floats = [logits.new_empty((n,), dtype=torch.float32) for _ in range(5)]
        return (*floats, logits.new_empty((n,), dtype=torch.bool))

    @torch.library.register_fake("advprune::kl_rows")
    def _kl_rows_fake(logits_p, logits_q):
        _checks.check_kl("advprune.kl_rows", logits_p, logits_q)
        return logits_p.new_empty((logits_p.shape[0],))

    @torch.library.register_fake("advprune::kl_rows_backward")
    def _kl_rows_backward_fake(grad, logits_p, logits_q):
        _checks.check_kl("advprune.kl_rows_backward", logits_p, logits_q)
        return torch.empty_like(logits_p), torch.empty_like(logits_q)

    def _kl_rows_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _kl_rows_backward(ctx, grad):
        logits_p, logits_q = ctx.saved_tensors
        grad_p, grad_q = torch.ops.advprune.kl_rows_backward(grad, logits_p, logits_q)
        return (
            grad_p if ctx.needs_input_grad[0] else None,
            grad_q if ctx.needs_input_grad[1] else None,
        )

    torch.library.register_autograd("advprune::kl_rows", _kl_rows_backward, setup_context=_kl_rows_setup)

    @torch.library.register_fake("advprune::max_pool2x2")
    def _max_pool2x2_fake(x):
        n, c, h, w = x.shape
        out = torch.empty((n, c, h // 2, w // 2), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        return out, torch.empty_like(out, dtype=torch.uint8)

    @torch.library.register_fake("advprune::one_channel_conv_input_grad")
    def _one_channel_conv_input_grad_fake(grad, weight, pad_h, pad_w):
        n, _, oh, ow = grad.shape
        height, width = oh - 2 * pad_h + weight.shape[2] - 1, ow - 2 * pad_w + weight.shape[3] - 1
        return grad.new_empty((n, 1, height, width))

    @torch.library.register_fake("advprune::one_channel_conv_max_pool2x2")
    def _one_channel_conv_max_pool2x2_fake(x, weight, bias, pad_h, pad_w, relu=False):
        n, _, height, width = x.shape
        out_h, out_w = height + 2 * pad_h - weight.shape[2] + 1, width + 2 * pad_w - weight.shape[3] + 1
        shape = (n, weight.shape[0], out_h // 2, out_w // 2)
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        return out, torch.empty(shape, dtype=torch.uint8, device=x.device, memory_format=torch.channels_last)

    @torch.library.register_fake("advprune::one_channel_conv_max_pool2x2_input_grad")
    def _one_channel_conv_max_pool2x2_input_grad_fake(grad, argmax, weight, pad_h, pad_w, height, width):
        return grad.new_empty((grad.shape[0], 1, height, width))

    @torch.library.register_fake("advprune::conv3x3_max_pool2x2_input_grad")
    def _conv3x3_max_pool2x2_input_grad_fake(grad, argmax, weight, pad_h, pad_w, height, width):
        shape = (grad.shape[0], weight.shape[1], height, width)
        return torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=torch.channels_last)

    @torch.library.register_fake("advprune::max_pool2x2_backward")
    def _max_pool2x2_backward_fake(grad, argmax, height, width):
        n, c = grad.shape[:2]
        return torch.empty(
            (n, c, height, width), dtype=grad.dtype, device=grad.device, memory_format=torch.channels_last
        )
