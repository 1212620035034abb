"""What the Trainer needs of its training data: batches of (images, labels, sample ids), checked
with errors that say what to do, and, for pruning, a way to change the subset each epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from advprune._checks import check_images_and_labels


@dataclass
class SubsetControl:
    """The part of the training data that serves a changing subset: set_indices for the next epoch,
    set_epoch for its order, set_shard(rank, world, batch_size) for a rank's share under
    torch.distributed, and the size of the id space (None when unknown)."""

    set_indices: Callable[[object], None]
    set_epoch: Callable[[int], None]
    set_shard: Callable[[int, int, int], None]
    num_samples: int | None


def subset_control(train: Iterable) -> SubsetControl | None:
    """An advprune loader, or a DataLoader over a PrunedSampler; None for other iterables."""
    schedule = getattr(train, "schedule", None)
    if hasattr(train, "set_indices") and schedule is not None:
        return SubsetControl(
            train.set_indices,
            lambda e: setattr(schedule, "epoch", e),
            lambda r, w, _b: train.set_shard(r, w),
            schedule.n,
        )
    sampler = getattr(train, "sampler", None)
    if hasattr(sampler, "set_indices") and hasattr(sampler, "set_epoch"):
        return SubsetControl(
            sampler.set_indices, sampler.set_epoch, sampler.set_shard, getattr(sampler, "num_samples", None)
        )
    return None


def _cannot_shard(sampler) -> Callable[[int, int, int], None]:
    def refuse(rank: int, world: int, batch_size: int) -> None:
        raise TypeError(f"{type(sampler).__name__} has no set_shard: under torch.distributed use PrunedSampler")

    return refuse


def loader_batch_size(train: Iterable) -> int | None:
    """The batch size the data was built with (an advprune loader's or a DataLoader's), if it says."""
    schedule = getattr(train, "schedule", None)
    return getattr(schedule, "batch_size", None) or getattr(train, "batch_size", None)


def unpack_batch(batch: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, ids) of a batch; TypeError naming what came instead and what to do."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        got = f"a {type(batch).__name__} of {len(batch)} items" if isinstance(batch, (tuple, list)) else type(batch)
        raise TypeError(
            f"the training data must yield (images, labels, sample ids) batches, got {got}: wrap a dataset of "
            "(x, y) pairs with advprune.data.with_ids(dataset), or use advprune.data.make_loader"
        )
    x, y, ids = batch
    check_images_and_labels("Trainer", x, y)
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32) or ids.shape != y.shape:
        got = f"{ids.dtype} {list(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"Trainer: sample ids must be an integer tensor [{len(y)}], got {got}")
    return x, y, ids


def check_batch_values(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """An epoch's first batch checked by value (a few host reads an epoch): images in [0, 1], as advprune's
    attacks and models (which normalise inside) take them, and labels below the model's number of outputs
    (asked of one image, in eval mode: no batch-norm statistics move). Either mistake would otherwise train
    silently wrong or fail deep inside a kernel (on a GPU, as a device-side assert)."""
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        raise ValueError(
            f"Trainer: images must be raw pixels in [0, 1], got values in [{low:.4g}, {high:.4g}]: divide 0-255 "
            "images by 255 and leave normalisation to the model (advprune's models and loaders do both)"
        )
    from advprune.attacks import model_mode

    with torch.no_grad(), model_mode(model, "eval"):
        classes = model(x[:1]).shape[1]
    lowest, highest = int(y.min()), int(y.max())
    if lowest < 0 or highest >= classes:
        raise ValueError(
            f"Trainer: labels must be class indices in [0, {classes}) (the model's outputs), got labels in "
            f"[{lowest}, {highest}]"
        )
