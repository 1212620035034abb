"""with_ids: any map-style dataset that yields (x, y) made to yield (x, y, sample id), so that a
torchvision dataset (or a Subset of one) works with the Trainer, PrunedSampler and the pruners."""

from __future__ import annotations

from torch.utils.data import Dataset


class WithIds(Dataset):
    """dataset[i] = (x, y) becomes (x, y, i): the sample id is the index in `dataset`."""

    def __init__(self, dataset: Dataset) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"with_ids needs a map-style dataset (with __getitem__ and __len__), got {type(dataset)}")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            got = f"a {type(item).__name__} of {len(item)} items" if isinstance(item, (tuple, list)) else repr(item)
            raise TypeError(f"with_ids expects the dataset to yield (x, y) pairs, got {got} at index {index}")
        return item[0], item[1], index


def with_ids(dataset: Dataset) -> WithIds:
    """The dataset, yielding (x, y, sample id) where it yielded (x, y)."""
    return WithIds(dataset)
