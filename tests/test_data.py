"""Readers, the .beton writer, and both loaders serving changing subsets of ids."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from advprune.data import (
    from_arrays,
    make_loader,
    read_cifar,
    read_fashion_mnist,
    read_idx,
    read_image_folder,
    write_beton,
)
from advprune.data.readers import FASHION_MNIST_DIR

BACKENDS = ["memory", "ffcv"]


@pytest.fixture(scope="module")
def colour_data():
    rng = np.random.default_rng(0)
    return rng.integers(1, 255, (300, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 300)


@pytest.fixture(scope="module")
def beton(colour_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("beton") / "colour.beton"
    return write_beton(path, *colour_data)


def loader_for(backend, colour_data, beton, **kw):
    source = from_arrays(*colour_data) if backend == "memory" else beton
    return make_loader(source, backend=backend, **kw)


def served(loader):
    """One epoch: the ids in order, and the batches."""
    batches = list(loader)
    return torch.cat([ids for _, _, ids in batches]).tolist(), batches


# ------------------------------------------------------------------ loaders


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_round_trip_pixels_labels_ids(backend, channels_last, colour_data, beton):
    images, labels = colour_data
    loader = loader_for(
        backend, colour_data, beton, batch_size=64, augment=False, order="sequential", channels_last=channels_last
    )
    ids, batches = served(loader)
    assert ids == list(range(300))
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for x, y, i in batches:
        assert x.dtype == torch.float32 and x.is_contiguous(memory_format=layout)
        assert x.min() >= 0 and x.max() <= 1
        back = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        assert torch.equal(back, torch.from_numpy(images[i.numpy()]))
        assert torch.equal(y, torch.from_numpy(labels[i.numpy()]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("order", ["random", "sequential"])
def test_epoch_serves_each_kept_id_once_and_follows_set_indices(backend, order, colour_data, beton):
    kept = np.random.default_rng(1).choice(300, 77, replace=False)
    loader = loader_for(backend, colour_data, beton, indices=kept, batch_size=16, augment=False, order=order)
    assert len(loader) == 5  # 77 ids, the last batch partial: every kept id is served
    ids, _ = served(loader)
    assert sorted(ids) == sorted(kept.tolist()) and len(ids) == 77
    if order == "sequential":
        assert ids == kept.tolist()
    new = np.arange(150, 300)
    loader.set_indices(new)
    assert len(loader) == 10
    ids, _ = served(loader)
    assert sorted(ids) == new.tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_order_changes_per_epoch_and_repeats_for_a_seed(backend, colour_data, beton):
    def two_epochs(seed):
        loader = loader_for(backend, colour_data, beton, batch_size=50, augment=False, seed=seed)
        return served(loader)[0], served(loader)[0]

    first, second = two_epochs(3)
    assert first != second and sorted(first) == sorted(second)
    assert two_epochs(3) == (first, second)
    assert two_epochs(4)[0] != first


def test_both_backends_serve_the_same_order(colour_data, beton):
    orders = [served(loader_for(b, colour_data, beton, batch_size=32, augment=False, seed=7))[0] for b in BACKENDS]
    assert orders[0] == orders[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_augmentation_translates_within_padding_and_flips(backend, colour_data, beton):
    images, _ = colour_data
    loader = loader_for(
        backend, colour_data, beton, batch_size=20, augment=True, order="sequential", indices=np.arange(20)
    )
    x, _, ids = next(iter(loader))
    got = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    moved = 0
    for k, i in enumerate(ids.tolist()):
        padded = np.pad(images[i], ((4, 4), (4, 4), (0, 0)))
        candidates = [
            img[dy : dy + 32, dx : dx + 32] for img in (padded, padded[:, ::-1]) for dy in range(9) for dx in range(9)
        ]
        assert any(np.array_equal(got[k], c) for c in candidates), f"sample {i} is no shift/flip of itself"
        moved += not np.array_equal(got[k], images[i])
    assert moved >= 10  # augmentation really happens


def test_augmentation_by_default_for_colour_only(tmp_path, colour_data, beton):
    gray = from_arrays(colour_data[0][..., :1].copy(), colour_data[1])
    gray_beton = write_beton(tmp_path / "gray.beton", gray.images, gray.labels)
    assert make_loader(from_arrays(*colour_data), backend="memory", batch_size=8).augment
    assert not make_loader(gray, backend="memory", batch_size=8).augment
    assert make_loader(beton, backend="memory", batch_size=8).augment
    assert not make_loader(gray_beton, backend="memory", batch_size=8).augment


def test_memory_loader_half_precision(colour_data):
    loader = make_loader(from_arrays(*colour_data), backend="memory", batch_size=8, dtype=torch.bfloat16)
    x, _, _ = next(iter(loader))
    assert x.dtype == torch.bfloat16 and x.is_contiguous()


def test_bad_indices_are_refused(colour_data):
    data = from_arrays(*colour_data)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 300\), got values from 0 to 300"):
        make_loader(data, backend="memory", batch_size=4, indices=[0, 300])
    with pytest.raises(ValueError, match="indices must be distinct: 1 repeat"):
        make_loader(data, backend="memory", batch_size=4, indices=[1, 1, 2])
    with pytest.raises(TypeError, match=r"indices must be integer sample ids, got torch\.float32"):
        make_loader(data, backend="memory", batch_size=4, indices=torch.tensor([1.0]))
    empty = make_loader(data, backend="memory", batch_size=4, indices=[])  # [] arrives as float64: still ids
    assert len(empty) == 0 and list(empty) == []
    with pytest.raises(ValueError, match="backend must be one of"):
        make_loader(data, backend="dali", batch_size=4)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        make_loader(data, backend="memory", batch_size=0)


# -------------------------------------------------------------- .beton files


def test_beton_refuses_overwrite_and_bad_arrays(tmp_path, colour_data):
    images, labels = colour_data
    path = write_beton(tmp_path / "a.beton", images[:10], labels[:10])
    size = path.stat().st_size
    with pytest.raises(FileExistsError, match="exists: pass force=True"):
        write_beton(path, images, labels)
    assert path.stat().st_size == size
    with pytest.raises(ValueError, match=r"is a folder: name the \.beton file to write"):
        write_beton(tmp_path, images, labels, force=True)  # force never aims the writer at a folder
    with pytest.raises(TypeError, match="images must be a uint8 numpy array"):
        write_beton(tmp_path / "b.beton", images.astype(np.float32), labels)
    with pytest.raises(ValueError, match=r"images must have shape \[N, H, W, C\] with C 1 or 3, got \[300, 32, 96\]"):
        write_beton(tmp_path / "b.beton", images.reshape(300, 32, 96), labels)
    with pytest.raises(ValueError, match=r"labels must have shape \[300\]"):
        write_beton(tmp_path / "b.beton", images, labels[:5])
    assert not (tmp_path / "b.beton").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.beton"]  # no temporary file left behind


def test_truncated_or_foreign_beton_is_a_clear_error(tmp_path, beton):
    truncated = tmp_path / "t.beton"
    truncated.write_bytes(beton.read_bytes()[: beton.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"is truncated|is not a valid \.beton"):
        make_loader(truncated, batch_size=8)
    garbage = tmp_path / "g.beton"
    garbage.write_bytes(os.urandom(5000))
    with pytest.raises(ValueError, match=r"is not a valid \.beton"):
        make_loader(garbage, batch_size=8)
    with pytest.raises(FileNotFoundError, match=r"no \.beton at"):
        make_loader(tmp_path / "missing.beton", batch_size=8)


# ------------------------------------------------------------------ readers


def write_cifar(root: Path, n_per_batch=20, cifar100=False):
    """Files in the official python format (pickled dicts with bytes keys)."""
    rng = np.random.default_rng(5)
    folder = root / ("cifar-100-python" if cifar100 else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    names = ["train", "test"] if cifar100 else [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    written = {}
    for name in names:
        data = rng.integers(0, 255, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 100 if cifar100 else 10, n_per_batch).tolist()
        key = b"fine_labels" if cifar100 else b"labels"
        batch = {
            b"batch_label": name.encode(),
            b"data": data,
            key: labels,
            b"filenames": [f"{k}.png".encode() for k in range(n_per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = (data, labels)
    meta = {b"label_names": [f"class{k}".encode() for k in range(10)]}
    with open(folder / ("meta" if cifar100 else "batches.meta"), "wb") as f:
        pickle.dump({b"fine_label_names": [b"x"] * 100} if cifar100 else meta, f, protocol=2)
    return written


def test_cifar10_reader(tmp_path):
    written = write_cifar(tmp_path)
    train = read_cifar(tmp_path, train=True)
    assert train.images.shape == (100, 32, 32, 3) and train.labels.dtype == np.int64
    first = written["data_batch_1"][0][3].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(train.images[3], first)
    assert train.labels[20:40].tolist() == written["data_batch_2"][1]
    test = read_cifar(tmp_path / "cifar-10-batches-py", train=False)
    assert len(test) == 20 and test.classes[:2] == ("class0", "class1")


def test_cifar100_reader(tmp_path):
    written = write_cifar(tmp_path, cifar100=True)
    train = read_cifar(tmp_path, cifar100=True)
    assert train.labels.tolist() == written["train"][1] and train.num_classes == 100


def test_malicious_cifar_pickle_is_refused_without_running(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Exploit()}, f, protocol=2)
    with pytest.raises(ValueError, match=r"refusing to load posix\.system"):
        read_cifar(tmp_path)
    assert not marker.exists()


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no cifar-10-batches-py folder"):
        read_cifar(tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        read_fashion_mnist(tmp_path / "nowhere")


def test_idx_files_gzip_or_not_and_bad_ones(tmp_path):
    array = np.random.default_rng(2).integers(0, 255, (7, 5, 3), dtype=np.uint8)
    raw = struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">III", 7, 5, 3) + array.tobytes()
    (tmp_path / "a.idx").write_bytes(raw)
    with gzip.open(tmp_path / "a.idx.gz", "wb") as f:
        f.write(raw)
    assert np.array_equal(read_idx(tmp_path / "a.idx"), array)
    assert np.array_equal(read_idx(tmp_path / "a.idx.gz"), array)
    (tmp_path / "short.idx").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match=r"idx header says \[7, 5, 3\] \(105 bytes\) but the file holds 95"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "bad.idx")


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_package():
    train, test = read_fashion_mnist(), read_fashion_mnist(train=False)
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert train.classes[0] == "T-shirt/top"


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for k in range(3):
            Image.fromarray(rng.integers(0, 255, (8, 6, 3), dtype=np.uint8)).save(tmp_path / label / f"{k}.png")
    data = read_image_folder(tmp_path)
    assert data.images.shape == (6, 8, 6, 3) and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.classes == ("cat", "dog")
    Image.fromarray(np.zeros((9, 6, 3), dtype=np.uint8)).save(tmp_path / "dog" / "odd.png")
    with pytest.raises(ValueError, match="resize them to one size first"):
        read_image_folder(tmp_path)
