"""Input normalisation inside the model (callers pass images in [0, 1]), and the per-channel
statistics of the datasets advprune reads, so that every model normalises with its data's own."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)

# the statistics of each dataset's training set, as the literature uses them
DATASET_STATS = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "fashion-mnist": (FASHION_MEAN, FASHION_STD),
    "mnist": (MNIST_MEAN, MNIST_STD),
}


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation, in [0, 1] units, of uint8 images [N, H, W, C]."""
    flat = images.reshape(-1, images.shape[-1])
    mean = np.zeros(flat.shape[1])
    square = np.zeros(flat.shape[1])
    for start in range(0, len(flat), 1 << 22):  # in chunks: no float copy of the whole set
        chunk = flat[start : start + (1 << 22)].astype(np.float64) / 255
        mean += chunk.sum(0)
        square += (chunk * chunk).sum(0)
    mean /= len(flat)
    std = np.sqrt(np.maximum(square / len(flat) - mean * mean, 0.0))
    return tuple(float(m) for m in mean), tuple(max(float(s), 1e-3) for s in std)


class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean and std as buffers (they follow .to())."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not len(mean):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"this model takes images [N, {self.mean.shape[1]}, H, W] but got shape {list(x.shape)}: create it "
                "with in_channels, mean and std of your data (advprune.models.create(name, in_channels=C, ...))"
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
