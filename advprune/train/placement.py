"""Where the model runs and in what form: its device (this rank's GPU under torch.distributed), its
memory format (channels_last for advprune's own models by default), torch.compile, SyncBatchNorm, and
the DistributedDataParallel wrapper that only the update's forward goes through."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from advprune.distributed import World
from advprune.train.config import RunConfig


@dataclass
class Placement:
    model: nn.Module
    device: torch.device
    memory_format: torch.memory_format | None  # None: the model and its inputs stay as they are
    attack_forward: Callable  # the bare (or compiled) model: no DDP hooks in the attack
    train_forward: Callable  # the DDP wrapper under torch.distributed, else attack_forward


class InputGradientOnly(nn.Module):
    """The model with its parameters detached: what the attack compiles. Eager autograd skips the weight
    gradients that torch.autograd.grad(loss, x) does not ask for, but a compiled backward computes every
    gradient its graph was traced with, which doubles the cost of each attack step unless the parameters
    enter the graph as constants (BatchNorm's running statistics still update in train mode)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        detached = {name: p.detach() for name, p in self.model.named_parameters()}
        return torch.func.functional_call(self.model, detached, (x,))


def place(model: nn.Module, run: RunConfig, world: World) -> Placement:
    if run.device is not None:
        device = torch.device(run.device)
    else:
        device = world.device() if world.distributed else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if world.distributed and run.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    own_model = type(model).__module__.startswith("advprune.models")
    channels_last = own_model if run.channels_last is None else run.channels_last
    memory_format = torch.channels_last if channels_last else None
    model = model.to(device, memory_format=memory_format) if channels_last else model.to(device)
    attack_forward = torch.compile(InputGradientOnly(model)) if run.compile else model
    train_forward = torch.compile(model) if run.compile else model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        train_forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Placement(model, device, memory_format, attack_forward, train_forward)
