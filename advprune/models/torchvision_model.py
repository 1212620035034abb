"""Any torchvision classification model by name (`torchvision:resnet50`), with the dataset's
normalisation put in front, as advprune's own models carry it, so that inputs stay in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from advprune._deps import require
from advprune.models.normalize import CIFAR10_MEAN, CIFAR10_STD, Normalize

PREFIX = "torchvision:"


class TorchvisionModel(nn.Module):
    """torchvision.models.get_model(name, num_classes=...) (random weights) behind Normalize; one-channel
    images are repeated to the three channels torchvision's models take."""

    def __init__(
        self,
        name: str,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        torchvision = require("torchvision", extra="torchvision", purpose="--model torchvision:NAME")

        available = torchvision.models.list_models(module=torchvision.models)
        if name not in available:
            raise ValueError(
                f"unknown torchvision classification model {name!r} (e.g. {', '.join(available[:6])}, ...)"
            )
        if in_channels not in (1, 3):
            raise ValueError(f"torchvision models take 1- or 3-channel images, got {in_channels} channels")
        self.in_channels = in_channels
        self.normalize = Normalize(mean, std)
        self.net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        return self.net(x.expand(-1, 3, -1, -1) if self.in_channels == 1 else x)
