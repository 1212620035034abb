"""Dataset readers: CIFAR-10/100 (official python format), MNIST and Fashion-MNIST
idx files, an image folder, and plain arrays. Each returns a Dataset of uint8
images [N, H, W, C] and int64 labels [N], whose row i is sample id i.

The CIFAR batches are pickles: they are read with an unpickler that admits only
what those files hold (dicts, lists, strings, bytes, numpy arrays), so a crafted
file cannot run code.
"""

from __future__ import annotations

import codecs
import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from advprune._deps import require

try:  # numpy 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class Dataset:
    """uint8 images [N, H, W, C], int64 labels [N], and the class names when known."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_arrays(self.images, self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.labels.max()) + 1


def check_arrays(images: object, labels: object) -> None:
    """uint8 images [N, H, W, C] (C 1 or 3) and integer labels [N] >= 0; ValueError/TypeError otherwise."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        got = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise TypeError(f"images must be a uint8 numpy array [N, H, W, C], got {got}")
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise ValueError(f"images must have shape [N, H, W, C] with C 1 or 3, got {list(images.shape)}")
    if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
        got = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise TypeError(f"labels must be an integer numpy array [N], got {got}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape [{images.shape[0]}] to match the images, got {list(labels.shape)}")
    if len(labels) and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(labels.min())}")


def from_arrays(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...] = ()) -> Dataset:
    """A Dataset from arrays: [N, H, W] images get a channel axis; labels become int64."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    return Dataset(np.ascontiguousarray(images), np.asarray(labels).astype(np.int64), classes)


# ------------------------------------------------------------------- CIFAR


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits numpy array reconstruction (and the latin-1 encoding that protocol-2 pickles
    written by Python 3 use for bytes) and nothing else: no other module, no callable."""

    ALLOWED: ClassVar[dict[tuple[str, str], object]] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a CIFAR batch holds only dicts, lists, strings, bytes and arrays"
        )


def load_cifar_batch(path: str | Path) -> dict:
    """One CIFAR pickle file as a dict with str keys, read without running any code."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = _RestrictedUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a CIFAR batch: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not a CIFAR batch: it holds a {type(raw).__name__}, not a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _cifar_images(batch: dict, path: Path) -> np.ndarray:
    data = np.asarray(batch.get("data"))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def read_cifar(root: str | Path, *, train: bool = True, cifar100: bool = False) -> Dataset:
    """CIFAR-10 (cifar-10-batches-py) or CIFAR-100 (cifar-100-python) in the official python format.

    root is the extracted folder itself or the folder that holds it.
    """
    name = "cifar-100-python" if cifar100 else "cifar-10-batches-py"
    root = Path(root)
    folder = root if (root / ("train" if cifar100 else "data_batch_1")).exists() else root / name
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no {name} folder at {root}: download and extract the official python version of "
            f"{'CIFAR-100' if cifar100 else 'CIFAR-10'} there"
        )
    if cifar100:
        files = [folder / ("train" if train else "test")]
        label_key = "fine_labels"
        meta_file, meta_key = folder / "meta", "fine_label_names"
    else:
        files = [folder / f"data_batch_{i}" for i in range(1, 6)] if train else [folder / "test_batch"]
        label_key = "labels"
        meta_file, meta_key = folder / "batches.meta", "label_names"
    images, labels = [], []
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"missing {file}: the {name} folder is incomplete")
        batch = load_cifar_batch(file)
        if label_key not in batch:
            raise ValueError(f"{file}: no '{label_key}' entry; is this the right dataset?")
        images.append(_cifar_images(batch, file))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    classes: tuple[str, ...] = ()
    if meta_file.is_file():
        names = load_cifar_batch(meta_file).get(meta_key, [])
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return Dataset(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), classes)


# --------------------------------------------------------------------- idx


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (MNIST format), gzip-compressed or not, as a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"cannot read idx file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown idx element type 0x{data[2]:02x}")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(dtypes[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise ValueError(f"{path}: idx header says {list(shape)} ({expected} bytes) but the file holds {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"missing {folder / stem}(.gz)")


FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def read_mnist_like(root: str | Path = FASHION_MNIST_DIR, *, train: bool = True, classes=()) -> Dataset:
    """MNIST or Fashion-MNIST idx files (train-images-idx3-ubyte[.gz], ... t10k-...)."""
    folder = Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no dataset folder at {folder}: on Debian, apt-get install dataset-fashion-mnist puts "
            f"Fashion-MNIST in {FASHION_MNIST_DIR}"
        )
    prefix = "train" if train else "t10k"
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{folder}: images {list(images.shape)} and labels {list(labels.shape)} do not match")
    return from_arrays(images, labels, tuple(classes))


def read_fashion_mnist(root: str | Path = FASHION_MNIST_DIR, *, train: bool = True) -> Dataset:
    return read_mnist_like(root, train=train, classes=FASHION_CLASSES)


# ------------------------------------------------------------ image folder

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm"}


def folder_classes(root: str | Path) -> tuple[str, ...]:
    """The class names of an image folder: its subfolders, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no image folder at {root}")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not classes:
        raise ValueError(f"{root} has no class subfolders: expected one folder of images per class")
    return classes


def read_image_folder(root: str | Path, *, grayscale: bool = False, classes: tuple[str, ...] | None = None) -> Dataset:
    """One subfolder per class; all images must share a size. The label of a subfolder is its
    position in `classes` (default: the sorted subfolder names). Give the training split's classes
    when reading a test split, so that a class missing there shifts no label."""
    root = Path(root)
    present = folder_classes(root)
    classes = present if classes is None else tuple(classes)
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise ValueError(f"{root} has class folders {unknown} that the training split does not have: {classes}")
    images, labels = [], []
    for name in present:
        label = classes.index(name)
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            array = _read_image(file, grayscale)
            if images and array.shape != images[0].shape:
                raise ValueError(
                    f"{file} is {array.shape[1]}x{array.shape[0]} but {root} holds "
                    f"{images[0].shape[1]}x{images[0].shape[0]} images: resize them to one size first"
                )
            images.append(array)
            labels.append(label)
    if not images:
        raise ValueError(f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return from_arrays(np.stack(images), np.asarray(labels), classes)


def _read_image(file: Path, grayscale: bool) -> np.ndarray:
    Image = require("PIL.Image", extra="images", purpose="reading an image folder")

    try:
        with Image.open(file) as img:
            return np.asarray(img.convert("L" if grayscale else "RGB"))
    except OSError as exc:
        raise ValueError(f"cannot read image {file}: {exc}") from exc


DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "folder")


def read_dataset(name: str, data_dir: str | Path | None = None, *, train: bool = True) -> Dataset:
    """A dataset by name: fashion-mnist, mnist, cifar10, cifar100, or folder (one subfolder per class)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    if name == "fashion-mnist":
        return read_fashion_mnist(data_dir or FASHION_MNIST_DIR, train=train)
    if data_dir is None:
        raise ValueError(f"dataset {name} needs a data folder (--data-dir)")
    if name == "mnist":
        return read_mnist_like(data_dir, train=train, classes=tuple(str(d) for d in range(10)))
    if name in ("cifar10", "cifar100"):
        return read_cifar(data_dir, train=train, cifar100=name == "cifar100")
    classes = folder_classes(Path(data_dir) / "train")  # the labels follow the training split's classes
    return read_image_folder(Path(data_dir) / ("train" if train else "test"), classes=classes)
