"""The FFCV loader behind advprune's loader interface.

ffcv 1.0.2 recompiles its pipeline whenever a Loader is created (5-9 s with
augmentation), so one Loader lives for the whole run and each epoch's order of
the current subset is handed to it here, in one place: the Loader runs in
SEQUENTIAL order over `indices`, which this wrapper sets before every epoch
(together with the two copies of it ffcv keeps, or it would silently serve the
old length). The order itself comes from the same SubsetSchedule as the
in-memory loader, so both backends serve the same ids in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from advprune._deps import require
from advprune.data.beton import FIELDS
from advprune.data.subset import SubsetLoader, SubsetSchedule


@contextmanager
def keep_torch_threads() -> Iterator[None]:
    """ffcv sets torch's intra-op threads to 1 when imported, and to its worker count when a
    Loader is made or iterated: this puts back the caller's setting afterwards."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def open_beton(path: str | Path):
    """ffcv's Reader of a .beton, with a clear error for a missing, truncated or foreign file."""
    with keep_torch_threads():
        Reader = require("ffcv.reader", extra="ffcv", purpose="reading a .beton file").Reader

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no .beton at {path}: write one with `advprune prepare`")
    try:
        reader = Reader(str(path))
    except Exception as exc:  # ffcv raises assorted errors on bad files
        raise ValueError(f"{path} is not a valid .beton file ({type(exc).__name__}: {exc})") from exc
    names = tuple(reader.handlers)
    if set(FIELDS) - set(names):
        raise ValueError(f"{path} has fields {names}; advprune needs {FIELDS} (write it with advprune prepare)")
    end = (
        max(int(reader.alloc_table["ptr"].max() + reader.alloc_table["size"].max()), 0)
        if len(reader.alloc_table)
        else 0
    )
    if end > path.stat().st_size:
        raise ValueError(f"{path} is truncated: its data run to byte {end} but the file has {path.stat().st_size}")
    return reader


def image_shape(path: str | Path) -> tuple[int, int, int]:
    """(H, W, C) of the images in a .beton."""
    return tuple(int(d) for d in open_beton(path).handlers["image"].shape)


class FfcvLoader(SubsetLoader):
    """Yields (x, y, ids) from a .beton: x float in [0, 1] [B, C, H, W] on the device (contiguous, or
    channels_last when asked)."""

    def __init__(
        self,
        path: str | Path,
        *,
        indices=None,
        batch_size: int,
        augment: bool = True,
        order: str = "random",
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool = False,
        dtype: torch.dtype = torch.float32,
        num_workers: int = 0,
        padding: int = 4,
        channels_last: bool = False,
    ) -> None:
        threads = torch.get_num_threads()
        with keep_torch_threads():
            require("ffcv", extra="ffcv", purpose="the ffcv loader")
            from ffcv.fields.decoders import IntDecoder, NDArrayDecoder
            from ffcv.loader import Loader, OrderOption
            from ffcv.transforms import RandomHorizontalFlip, RandomTranslate, Squeeze, ToTensor

        reader = open_beton(path)
        self.num_samples = reader.num_samples
        self.schedule = SubsetSchedule(
            self.num_samples, indices, batch_size=batch_size, order=order, seed=seed, drop_last=drop_last
        )
        self.device = torch.device(device)
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        image = [NDArrayDecoder()]
        if augment:
            image += [RandomHorizontalFlip(), RandomTranslate(padding=padding)]
        image.append(ToTensor())
        ints = [IntDecoder(), ToTensor(), Squeeze()]
        with keep_torch_threads():
            self._loader = Loader(
                str(path),
                batch_size=batch_size,
                num_workers=num_workers or threads,
                order=OrderOption.SEQUENTIAL,
                indices=self.schedule.indices.numpy(),
                drop_last=drop_last,
                pipelines={"image": image, "label": list(ints), "id": list(ints)},
                seed=seed,
            )

    def _serve(self, order: torch.Tensor) -> None:
        """Points the ffcv Loader at this epoch's ids, in this order."""
        ids = order.numpy().astype(np.uint64)
        self._loader.indices = ids
        self._loader.traversal_order.indices = ids
        self._loader.first_traversal_order = self._loader.traversal_order.sample_order(self._loader.next_epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order, _ = self.schedule.next_epoch()
        self._serve(order)
        # ffcv reuses its output buffers for later batches: everything yielded is a copy
        with keep_torch_threads():
            for images, labels, ids in self._loader:
                x = images.to(self.device).permute(0, 3, 1, 2)
                x = x.to(self.dtype, memory_format=self.memory_format).div_(255)
                yield x, labels.to(self.device, torch.int64, copy=True), ids.to(self.device, torch.int64, copy=True)
