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
    attack_forward = torch.compile(model) if run.compile else model
    train_forward = attack_forward
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        train_forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Placement(model, device, memory_format, attack_forward, train_forward)
