"""Models with their input normalisation inside (inputs in [0, 1]): create(name, num_classes)."""

from __future__ import annotations

from torch import nn

from advprune.models.preact_resnet import PreActResNet18
from advprune.models.small_cnn import SmallCNN
from advprune.models.wide_resnet import WideResNet

MODELS = {
    "preact-resnet18": lambda num_classes, **kw: PreActResNet18(num_classes, **kw),
    "wrn-34-10": lambda num_classes, **kw: WideResNet(34, 10, num_classes, **kw),
    "wrn-28-10": lambda num_classes, **kw: WideResNet(28, 10, num_classes, **kw),
    "small-cnn": lambda num_classes, **kw: SmallCNN(num_classes, **kw),
}


def create(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """A model by name: preact-resnet18, wrn-34-10, wrn-28-10 (32x32 RGB), small-cnn (28x28 grayscale).

    kwargs reach the constructor (in_channels, mean, std; depth and width through WideResNet itself).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return MODELS[name](num_classes, **kwargs)


__all__ = ["MODELS", "PreActResNet18", "SmallCNN", "WideResNet", "create"]
