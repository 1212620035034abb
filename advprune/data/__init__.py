"""advprune.data: dataset readers, the .beton writer, and the loaders of (x, y, ids)."""

from advprune.data.beton import write_beton
from advprune.data.loaders import make_loader, read_beton
from advprune.data.readers import (
    Dataset,
    from_arrays,
    read_cifar,
    read_dataset,
    read_fashion_mnist,
    read_idx,
    read_image_folder,
    read_mnist_like,
)
from advprune.data.with_ids import WithIds, with_ids

__all__ = [
    "Dataset",
    "WithIds",
    "from_arrays",
    "make_loader",
    "read_beton",
    "read_cifar",
    "read_dataset",
    "read_fashion_mnist",
    "read_idx",
    "read_image_folder",
    "read_mnist_like",
    "with_ids",
    "write_beton",
]
