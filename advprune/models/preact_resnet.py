"""Pre-activation ResNets for 32x32 inputs (He et al. 2016): PreActResNet-18, the model of Rice et al. and
Wong et al., and a small one for CPU-scale CIFAR experiments."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advprune.models.normalize import CIFAR10_MEAN, CIFAR10_STD, Normalize


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride, bias=False) if stride != 1 or in_planes != planes else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet for 32x32 inputs: a 3x3 stem, then one stage per width (the first at stride 1,
    the others at stride 2) of `blocks` pre-activation blocks each."""

    def __init__(
        self,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        blocks: int = 2,
        num_classes: int = 10,
        in_channels: int = 3,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, in_planes = [], widths[0]
        for i, planes in enumerate(widths):
            for b in range(blocks):
                layers.append(PreActBlock(in_planes, planes, 2 if i > 0 and b == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features h (for the GraNd proxy)."""
        out = self.layers(self.conv1(self.normalize(x)))
        return F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


class PreActResNet18(PreActResNet):
    """The model of Rice et al. and Wong et al.: widths 64-512, two blocks a stage."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> None:
        super().__init__((64, 128, 256, 512), 2, num_classes, in_channels, mean, std)


class SmallResNet(PreActResNet):
    """A small pre-activation ResNet for CPU-scale CIFAR experiments: widths 16-32-64, two blocks a stage
    (about 1/20 of PreActResNet-18's multiply-adds; an FGSM-RS epoch over CIFAR-10 takes about 60 s on a
    2-core AVX-512 CPU in bfloat16)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> None:
        super().__init__((16, 32, 64), 2, num_classes, in_channels, mean, std)
