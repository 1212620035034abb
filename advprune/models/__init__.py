"""Models with their input normalisation inside (inputs in [0, 1]): create(name, num_classes),
and data_kwargs() for the channels, size and statistics of a dataset."""

from __future__ import annotations

import numpy as np
from torch import nn

from advprune.models.normalize import DATASET_STATS, Normalize, channel_stats
from advprune.models.preact_resnet import PreActResNet18, SmallResNet
from advprune.models.small_cnn import SmallCNN
from advprune.models.torchvision_model import PREFIX as TORCHVISION_PREFIX
from advprune.models.torchvision_model import TorchvisionModel
from advprune.models.wide_resnet import WideResNet

MODELS = {
    "preact-resnet18": lambda num_classes, **kw: PreActResNet18(num_classes, **kw),
    "small-resnet": lambda num_classes, **kw: SmallResNet(num_classes, **kw),
    "wrn-34-10": lambda num_classes, **kw: WideResNet(34, 10, num_classes, **kw),
    "wrn-28-10": lambda num_classes, **kw: WideResNet(28, 10, num_classes, **kw),
    "small-cnn": lambda num_classes, **kw: SmallCNN(num_classes, **kw),
}


def create(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """A model by name: preact-resnet18, small-resnet, wrn-34-10, wrn-28-10 (32x32 RGB by default), small-cnn
    (28x28 grayscale by default), or any torchvision classification model as torchvision:NAME (random
    weights, the dataset's normalisation in front).

    kwargs reach the constructor (in_channels, mean, std; image_size for small-cnn); data_kwargs() gives
    them for a dataset.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if name.startswith(TORCHVISION_PREFIX):
        return TorchvisionModel(name.removeprefix(TORCHVISION_PREFIX), num_classes, **kwargs)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)} or torchvision:NAME")
    return MODELS[name](num_classes, **kwargs)


def data_kwargs(name: str, images: np.ndarray, dataset: str | None = None) -> dict:
    """The constructor options that fit a model to uint8 images [N, H, W, C]: in_channels, the
    normalisation statistics (the dataset's published ones, else measured on `images`) and, for the
    small CNN, the image size. JSON-friendly, so that a checkpoint can record them."""
    height, width, channels = (int(d) for d in images.shape[1:])
    mean, std = DATASET_STATS[dataset] if dataset in DATASET_STATS else channel_stats(images)
    kwargs = {"in_channels": channels, "mean": list(mean), "std": list(std)}
    if name == "small-cnn":
        kwargs["image_size"] = [height, width]
    return kwargs


__all__ = [
    "DATASET_STATS",
    "MODELS",
    "Normalize",
    "PreActResNet18",
    "SmallCNN",
    "SmallResNet",
    "TorchvisionModel",
    "WideResNet",
    "channel_stats",
    "create",
    "data_kwargs",
]
