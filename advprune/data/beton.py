"""The FFCV .beton writer: image (uint8 [H, W, C]), label and sample-id fields,
written to a temporary file and renamed, so no half-written .beton ever exists."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from advprune._deps import require, require_installed
from advprune._files import disk_full, write_atomic
from advprune._process_group import run_in_group
from advprune.data.readers import check_arrays

FIELDS = ("image", "label", "id")


class _Samples:
    """The indexed dataset FFCV's writer walks: (image, label, id) per row."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i]), int(i)


def _write_file(tmp: Path, images: np.ndarray, labels: np.ndarray, num_workers: int) -> None:
    """The ffcv writer, run in its own process group (advprune._process_group)."""
    from advprune.data.ffcv_loader import keep_torch_threads

    with keep_torch_threads():
        require("ffcv", extra="ffcv", purpose="writing a .beton file")
        from ffcv.fields import IntField, NDArrayField
        from ffcv.writer import DatasetWriter

    fields = {"image": NDArrayField(np.dtype("uint8"), tuple(images.shape[1:])), "label": IntField(), "id": IntField()}
    DatasetWriter(str(tmp), fields, num_workers=num_workers).from_indexed_dataset(_Samples(images, labels))


def write_beton(
    path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    force: bool = False,
    num_workers: int = 1,
) -> Path:
    """Writes images (uint8 [N, H, W, C]) and labels as an FFCV .beton; row i gets sample id i.

    Refuses to overwrite an existing file unless force=True. FFCV shows a progress bar. The writer and
    its worker processes run in a process group that ends with this process, however it ends (no
    orphaned worker, no leaked shared memory, no partial temporary file); a full disk raises DiskFull.
    """
    check_arrays(images, labels)
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: name the .beton file to write (e.g. {path / 'train.beton'})")
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists: pass force=True (--force) to overwrite it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder {path.parent} does not exist")
    require_installed("ffcv", extra="ffcv", purpose="writing a .beton file")  # imported in the writer's process
    images = np.ascontiguousarray(images)
    labels = labels.astype(np.int64)
    size = images.nbytes + 64 * len(labels)  # the pixels and a page-aligned allocation table, about
    if shutil.disk_usage(path.parent).free < size:
        raise disk_full(path, size)

    def write(tmp: Path) -> None:
        run_in_group(_write_file, tmp, images, labels, num_workers, cleanup=tmp)

    return write_atomic(path, write, size=size)
