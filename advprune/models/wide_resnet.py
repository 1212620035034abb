"""WideResNet-depth-width for 32x32 inputs (Zagoruyko and Komodakis 2016): 34-10 and 28-10."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advprune.models.normalize import CIFAR10_MEAN, CIFAR10_STD, Normalize
from advprune.models.preact_resnet import PreActBlock  # the same pre-activation block, wider


class WideResNet(nn.Module):
    def __init__(
        self,
        depth: int = 34,
        width: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4 (28, 34, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, in_planes = [], widths[0]
        for stage, stride in zip(widths[1:], (1, 2, 2), strict=True):
            for i in range(n):
                blocks.append(PreActBlock(in_planes, stage, stride if i == 0 else 1))
                in_planes = stage
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.conv1(self.normalize(x)))
        return F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))
