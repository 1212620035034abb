"""make_loader: one interface over the FFCV and in-memory loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from advprune.data.ffcv_loader import FfcvLoader, image_shape, open_beton
from advprune.data.memory import MemoryLoader
from advprune.data.readers import Dataset

BACKENDS = ("ffcv", "memory")


def read_beton(path: str | Path) -> Dataset:
    """All images, labels of a .beton as arrays, in sample-id order (for the in-memory backend)."""
    loader = FfcvLoader(path, batch_size=1024, augment=False, order="sequential")
    images, labels = [], []
    for x, y, _ in loader:
        images.append((x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
        labels.append(y.numpy())
    return Dataset(np.concatenate(images), np.concatenate(labels))


def make_loader(
    source: str | Path | Dataset,
    *,
    indices=None,
    batch_size: int,
    backend: str | None = None,
    augment: bool | None = None,
    order: str = "random",
    device: str | torch.device = "cpu",
    seed: int = 0,
    drop_last: bool = False,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> FfcvLoader | MemoryLoader:
    """A loader of (x, y, ids) over the sample ids `indices` (all when None) of a .beton or a Dataset.

    backend: "memory" (the whole set on the device, no workers) or "ffcv"; None picks from the source:
    memory for a Dataset, ffcv for a .beton path. x is float in [0, 1] on `device` (contiguous; channels_last
    when asked; dtype float16/bfloat16 when asked), y and ids int64. loader.set_indices(new) changes the
    subset for the next epoch; len(loader) follows it. Augmentation: random translation within 4 pixels of
    zero padding and horizontal flip; by default (augment=None) for colour images only, none for grayscale
    ones such as Fashion-MNIST.
    """
    if not isinstance(source, (str, Path, Dataset)):
        raise TypeError(
            f"make_loader reads an advprune Dataset (advprune.data.read_dataset, from_arrays) or a .beton path, "
            f"got {type(source).__name__}: for a torch dataset use DataLoader(advprune.data.with_ids(dataset), "
            "sampler=advprune.pruning.PrunedSampler(...))"
        )
    if backend is None:
        backend = "memory" if isinstance(source, Dataset) else "ffcv"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if augment is None:
        channels = source.images.shape[3] if isinstance(source, Dataset) else image_shape(source)[2]
        augment = channels == 3
    kw = dict(
        indices=indices,
        batch_size=batch_size,
        augment=augment,
        order=order,
        device=device,
        seed=seed,
        drop_last=drop_last,
        dtype=dtype,
        channels_last=channels_last,
    )
    if backend == "ffcv":
        if isinstance(source, Dataset):
            raise TypeError("the ffcv backend reads a .beton path; write one with advprune.data.write_beton")
        return FfcvLoader(source, **kw)
    data = source if isinstance(source, Dataset) else read_beton(source)
    return MemoryLoader(data.images, data.labels, **kw)


__all__ = ["BACKENDS", "image_shape", "make_loader", "open_beton", "read_beton"]
