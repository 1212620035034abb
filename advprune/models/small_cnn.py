"""A small CNN for small images (28x28 grayscale by default: Fashion-MNIST, MNIST): about 4M
multiply-adds a 28x28 image, fast enough for adversarial training on a CPU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from advprune.models.normalize import FASHION_MEAN, FASHION_STD, Normalize


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
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (height // 4) * (width // 4), 128),
            nn.ReLU(inplace=True),
        )
        self.linear = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))
