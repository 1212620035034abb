"""A small CNN for small images (28x28 grayscale by default: Fashion-MNIST, MNIST): about 4M
multiply-adds a 28x28 image, fast enough for adversarial training on a CPU.

Each block pools before its ReLU: max-pooling and ReLU commute exactly (ReLU is monotone), values and
gradients alike, and the ReLU then runs on a quarter of the elements. The flatten keeps channels_last
in its backward, so that the pooling's backward needs no layout copies (together about 15% of a PGD
training step on an AVX2 CPU in float32). The pooling is advprune's kernel (MaxPool2x2), which takes a
bfloat16 PGD-3 epoch on one Zen 4 core from 4.30 s to 3.69 s per 5,120 images with identical weights. With
the weights frozen (in the attacks) the first convolution, pooling and ReLU run as one CPU kernel
(ops.one_channel_conv_max_pool2x2), and the second block's input gradient comes from the pooled gradient in one
kernel (ops.conv_max_pool2x2), unless a layer of the block is hooked."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from advprune import ops
from advprune.models.normalize import FASHION_MEAN, FASHION_STD, Normalize


class _FlattenKeepingLayout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        ctx.channels_last = channels_last and not x.is_contiguous()
        return x.flatten(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.reshape(ctx.shape)
        return grad.contiguous(memory_format=torch.channels_last) if ctx.channels_last else grad


class LayoutKeepingFlatten(nn.Module):
    """nn.Flatten (from dim 1) whose backward returns the gradient in its input's memory format: for a
    channels_last input nn.Flatten's gradient comes back contiguous, and every layer below then converts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FlattenKeepingLayout.apply(x)


class MaxPool2x2(nn.Module):
    """nn.MaxPool2d(2) through advprune.ops.max_pool2x2: the same values and gradients, and for channels_last
    bfloat16 batches on the CPU a quarter of max_pool2d's time (bench/ops.py), as the index it keeps is a byte."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.max_pool2x2(x)


class FirstConv2d(nn.Conv2d):
    """nn.Conv2d (stride 1, zero padding) whose one-channel input gets its gradient through
    advprune.ops.one_channel_conv2d while the weights are frozen (in the attacks): on the CPU oneDNN's input
    gradient for one channel takes up to 4-13x its forward, and each attack step needs it. The same parameters
    and state dict as nn.Conv2d; in every other case (training's update, more input channels) it is conv2d."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not _plain(self):
            raise ValueError(
                "FirstConv2d takes stride 1, dilation 1, groups 1 and numeric zero padding, got "
                f"stride={self.stride}, dilation={self.dilation}, groups={self.groups}, padding={self.padding!r}, "
                f"padding_mode={self.padding_mode!r}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.one_channel_conv2d(x, self.weight, self.bias, self.padding)

    def as_conv2d(self) -> nn.Conv2d:
        """The same layer as a plain nn.Conv2d (weights copied), whose input gradient is always oneDNN's."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, padding=self.padding)
        conv.load_state_dict(self.state_dict())
        return conv.to(self.weight.device, self.weight.dtype)


def _plain(conv: nn.Conv2d) -> bool:
    """Stride 1, dilation 1, groups 1 and numeric zero padding: what advprune's convolution kernels take."""
    plain = conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
    return plain and not isinstance(conv.padding, str)


def _run_block(layers: Sequence[nn.Module], conv_type: type, fused_op, x: torch.Tensor) -> torch.Tensor:
    """A convolution, MaxPool2x2 and nn.ReLU as fused_op (advprune's kernels where they serve) when the layers are of
    those types, the convolution of conv_type and plain, and none hooked (a fused call would skip the hook);
    otherwise the layers in turn."""
    conv, pool, relu = layers
    fusable = (type(conv), type(pool), type(relu)) == (conv_type, MaxPool2x2, nn.ReLU) and _plain(conv)
    if fusable and not any(_hooked(layer) for layer in layers):
        return fused_op(x, conv.weight, conv.bias, conv.padding, relu=True)
    for layer in layers:
        x = layer(x)
    return x


def _hooked(module: nn.Module) -> bool:
    """Whether a module has forward or backward hooks (which a fused call of it would skip)."""
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(module, name, None) for name in hooks)


class SmallCNN(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        mean: Sequence[float] = FASHION_MEAN,
        std: Sequence[float] = FASHION_STD,
        image_size: Sequence[int] = (28, 28),
    ) -> None:
        super().__init__()
        height, width = image_size
        if height < 4 or width < 4:
            raise ValueError(f"SmallCNN needs images of at least 4x4 (two 2x2 poolings), got {height}x{width}")
        self.normalize = Normalize(mean, std)
        self.body = nn.Sequential(
            FirstConv2d(in_channels, 32, 3, padding=1),
            MaxPool2x2(),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1),
            MaxPool2x2(),
            nn.ReLU(inplace=True),
            LayoutKeepingFlatten(),
            nn.Linear(64 * (height // 4) * (width // 4), 128),
            nn.ReLU(inplace=True),
        )
        self.linear = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        layers = list(self.body)
        x = _run_block(layers[0:3], FirstConv2d, ops.one_channel_conv_max_pool2x2, self.normalize(x))
        x = _run_block(layers[3:6], nn.Conv2d, ops.conv_max_pool2x2, x)
        for layer in layers[6:]:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))
