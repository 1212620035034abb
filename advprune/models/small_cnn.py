"""A small CNN for 28x28 grayscale images (Fashion-MNIST, MNIST): about 4M multiply-adds
an image, fast enough for adversarial training on a CPU."""

from __future__ import annotations

import torch
from torch import nn

from advprune.models.normalize import FASHION_MEAN, FASHION_STD, Normalize


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, mean=FASHION_MEAN, std=FASHION_STD) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # 7x7
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.linear = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))
