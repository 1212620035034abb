"""The in-memory loader: the whole dataset resident on the device as uint8, the
current subset of sample ids shuffled there, augmentation done on the device in
one gather per batch (as airbench does for CIFAR-10), no worker processes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from advprune.data.augmentation import Augmentation
from advprune.data.subset import SubsetLoader, SubsetSchedule


class MemoryLoader(SubsetLoader):
    """Yields (x, y, ids): x float in [0, 1] [B, C, H, W] (contiguous, or channels_last when asked),
    y and ids int64.

    `set_indices` changes the served subset from the next epoch on; `len()` follows it. After each batch is
    yielded, `last_augmentation` says how it was cut from its source images (perturbation memory maps each
    sample's stored perturbation through it).
    """

    reports_augmentation = True

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        *,
        indices: torch.Tensor | np.ndarray | None = None,
        batch_size: int,
        augment: bool = True,
        order: str = "random",
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool = False,
        dtype: torch.dtype = torch.float32,
        padding: int = 4,
        channels_last: bool = False,
    ) -> None:
        if isinstance(images, np.ndarray) and not images.flags.writeable:
            images = images.copy()  # torch wants writable memory (e.g. arrays read from a buffer)
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {list(images.shape)}")
        self.device = torch.device(device)
        self.images = images.to(self.device)  # NHWC: a batch permuted to NCHW is channels_last
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must have shape [{len(self.images)}], got {list(self.labels.shape)}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.augment = augment
        self.padding = padding
        self.schedule = SubsetSchedule(
            len(self.images), indices, batch_size=batch_size, order=order, seed=seed, drop_last=drop_last
        )

    # -- iteration ----------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order, generator = self.schedule.next_epoch()
        order = order.to(self.device)
        for start, end in self.schedule.batch_bounds(len(order)):
            ids = order[start:end]
            raw = self.images.index_select(0, ids)
            if self.augment:
                raw, self.last_augmentation = self._crop_and_flip(raw, generator)
            else:
                self.last_augmentation = Augmentation.identity(len(ids), self.device)
            x = raw.permute(0, 3, 1, 2).to(self.dtype, memory_format=self.memory_format).div_(255)
            yield x, self.labels.index_select(0, ids), ids

    def _crop_and_flip(self, batch: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Augmentation]:
        """Random translation within a zero padding, and horizontal flip: one gather from
        a strided view of every window of the padded batch, then the flipped half flipped.
        Returns the batch and what was done to it (each sample's window and flip)."""
        b, h, w, c = batch.shape
        p = self.padding
        rows, cols = torch.randint(0, 2 * p + 1, (2, b), generator=generator).to(self.device)
        flips = (torch.rand(b, generator=generator) < 0.5).to(self.device)
        padded = torch.nn.functional.pad(batch, (0, 0, p, p, p, p)).contiguous()
        hp, wp = h + 2 * p, w + 2 * p
        windows = padded.as_strided((b, 2 * p + 1, 2 * p + 1, h, w, c), (hp * wp * c, wp * c, c, wp * c, c, 1))
        out = windows[torch.arange(b, device=self.device), rows, cols]
        flipped = flips.nonzero().squeeze(1)
        out[flipped] = out[flipped].flip(2)
        return out, Augmentation(rows, cols, flips, p)
