"""Real CIFAR-10: the reader, a .beton served through FFCV, class-stratified selection, and a short pruned
training run, on the JPEG copy that `make test` decodes once into a cache (scripts/cifar10_cache.sh), or on a
user's official python version. They read ADVPRUNE_CIFAR10_DIR (the folder holding cifar-10-batches-py),
which CI sets, and skip only where it is unset."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from advprune.cli import main
from advprune.data import make_loader, read_cifar, write_beton
from advprune.models.normalize import CIFAR10_MEAN, CIFAR10_STD
from advprune.pruning import load_indices, select
from advprune.scores import load_scores

CIFAR10_DIR = os.environ.get("ADVPRUNE_CIFAR10_DIR", "")
pytestmark = pytest.mark.skipif(not CIFAR10_DIR, reason="ADVPRUNE_CIFAR10_DIR is unset (make test sets it)")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="module")
def train_set():
    return read_cifar(CIFAR10_DIR, train=True)


@pytest.fixture(scope="module")
def test_set():
    return read_cifar(CIFAR10_DIR, train=False)


def test_the_reader_sees_the_whole_balanced_set(train_set, test_set):
    for data, n in ((train_set, 50_000), (test_set, 10_000)):
        assert data.images.shape == (n, 32, 32, 3) and data.images.dtype == np.uint8
        assert data.classes == CLASSES
        assert np.bincount(data.labels, minlength=10).tolist() == [n // 10] * 10


def test_the_models_normalisation_matches_the_data(train_set):
    """The mean and std every CIFAR model puts in front are the training set's own, per channel (a few
    thousandths off on the JPEG copy): a wrong channel order or scale would show here."""
    pixels = train_set.images[::5].reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(pixels.mean(0), CIFAR10_MEAN, atol=0.005)
    np.testing.assert_allclose(pixels.std(0), CIFAR10_STD, atol=0.005)


def test_a_beton_of_the_test_set_serves_its_pixels_labels_and_ids(tmp_path, test_set):
    pytest.importorskip("ffcv")
    beton = write_beton(tmp_path / "test.beton", test_set.images[:2_000], test_set.labels[:2_000])
    wanted = torch.tensor([3, 17, 1_024, 1_999])
    loader = make_loader(beton, backend="ffcv", batch_size=8, augment=False, order="sequential", indices=wanted)
    (x, y, ids), *rest = list(loader)
    assert not rest and ids.tolist() == wanted.tolist()
    back = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.equal(back, torch.from_numpy(test_set.images[wanted.numpy()]))
    assert y.tolist() == test_set.labels[wanted.numpy()].tolist()


def test_stratified_both_ends_keeps_each_classes_share_and_extremes(train_set):
    labels = torch.from_numpy(train_set.labels)
    scores = torch.rand(len(labels), generator=torch.Generator().manual_seed(0))
    kept = select(scores, 0.2, "both-ends", labels=labels)
    assert torch.bincount(labels[kept], minlength=10).tolist() == [1_000] * 10
    for c in range(10):
        members = torch.nonzero(labels == c).squeeze(1)
        ranked = members[scores[members].argsort()]
        assert set(ranked[:500].tolist()) | set(ranked[-500:].tolist()) == set(kept[labels[kept] == c].tolist())


def test_a_pruned_low_high_run_on_real_images(tmp_path, train_set):
    """The paper's recipe in small: the small residual network, FGSM-RS at 8/255, one warm-up epoch on the
    pool, then low+high by the adversarial loss inside each class keeps half of it."""
    out = tmp_path / "run"
    args = ["train", "--dataset", "cifar10", "--data-dir", CIFAR10_DIR, "--model", "small-resnet",
            "--attack", "fgsm_rs", "--eps", "8/255", "--batch-size", "100", "--lr", "0.05", "--limit", "600",
            "--val-n", "100", "--epochs", "2", "--prune", "low+high:0.5", "--class-balanced",
            "--score-epochs", "1", "--eval-n", "200", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in records if "samples" in r and "epoch" in r] == [500, 250]
    held_out = load_indices(out / "val_ids.npy", 600)
    pool = torch.tensor(sorted(set(range(600)) - set(held_out.tolist())))
    kept = load_indices(out / "kept.npy", 600)
    labels = torch.from_numpy(train_set.labels[:600])
    expected = torch.bincount(labels[pool], minlength=10) // 2
    assert (torch.bincount(labels[kept], minlength=10) - expected).abs().max() <= 1 and len(kept) == 250
    loss = load_scores(out / "scores.npz")[0]["adv_loss"]
    for c in range(10):
        members = pool[labels[pool] == c]
        assert {int(members[loss[members].argmax()]), int(members[loss[members].argmin()])} <= set(kept.tolist())
    result = json.loads((out / "eval.json").read_text())
    assert result["n"] == 200 and 0 <= result["robust_acc"] <= result["clean_acc"] <= 1
