"""advprune dropped into another codebase: contiguous batches by default, user models left as they are,
make_loader choosing its backend, torch datasets through with_ids, clear errors for batches it cannot
use, and models fitted to any dataset's channels, size and statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from advprune import models
from advprune.cli import main
from advprune.data import from_arrays, make_loader, read_dataset, with_ids
from advprune.data.readers import FASHION_MNIST_DIR
from advprune.models import channel_stats, data_kwargs
from advprune.pruning import KeepHardPruner, PrunedSampler
from advprune.train import AttackConfig, RunConfig, Trainer
from tests.test_train import fashion  # noqa: F401 (a fixture)

needs_fashion = pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist is missing")


class ViewNet(torch.nn.Module):
    """A model as fast_adversarial's MNIST script writes it: it flattens with .view."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.size(0), -1))


def quiet_run(**kw) -> RunConfig:
    return RunConfig(device="cpu", amp=None, quiet=True, **kw)


def test_a_model_that_flattens_with_view_trains_and_stays_contiguous(fashion):  # noqa: F811
    """1-channel batches were channels_last and the Trainer converted the caller's model to channels_last:
    .view raised "view size is not compatible"."""
    train, _ = fashion
    x, _, _ = next(iter(make_loader(train, batch_size=8)))
    assert x.is_contiguous() and x.view(8, -1).shape == (8, 784)
    torch.manual_seed(0)
    model = ViewNet()
    Trainer(model, AttackConfig("pgd", eps=0.1, steps=1), epochs=1, run=quiet_run()).fit(
        make_loader(train, batch_size=64)
    )
    assert model.conv.weight.is_contiguous()  # the caller's model is left as it was
    own = models.create("small-cnn")
    Trainer(own, AttackConfig("pgd", eps=0.1, steps=1), epochs=1, run=quiet_run())
    assert own.body[0].weight.is_contiguous(memory_format=torch.channels_last)  # advprune's own: converted


def test_make_loader_picks_the_backend_from_the_source(fashion):  # noqa: F811
    train, _ = fashion
    loader = make_loader(train, batch_size=16)  # a Dataset: in memory (it defaulted to ffcv and refused)
    assert type(loader).__name__ == "MemoryLoader"
    with pytest.raises(TypeError, match=r"for a torch dataset use DataLoader\(advprune\.data\.with_ids\(dataset\)"):
        make_loader(Subset(TensorDataset(torch.rand(4, 1, 2, 2), torch.zeros(4)), [0, 1]), batch_size=2)


def test_a_torch_dataset_with_ids_trains_with_a_pruner(tmp_path, fashion):  # noqa: F811
    """A torchvision-style dataset of (x, y) pairs (here a Subset of one) works with PrunedSampler and the Trainer."""
    train, _ = fashion
    x = torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(train.labels)
    dataset = Subset(TensorDataset(x, y), list(range(256)))
    sampler = PrunedSampler(range(256), num_samples=256)
    data = DataLoader(with_ids(dataset), batch_size=32, sampler=sampler)
    xb, yb, ids = next(iter(data))
    assert torch.equal(yb, y[ids])
    assert ids.dtype == torch.int64 and torch.equal(xb, x[ids])
    t = Trainer(
        models.create("small-cnn"),
        AttackConfig("pgd", eps=0.1, steps=1),
        epochs=1,
        run=quiet_run(out_dir=tmp_path),
        pruner=KeepHardPruner(256, 1, keep=0.5),
    )
    t.fit(data)
    assert '"samples": 128' in (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(TypeError, match="with_ids expects the dataset to yield \\(x, y\\) pairs"):
        with_ids(TensorDataset(x[:2], y[:2], y[:2]))[0]


@pytest.mark.parametrize(
    "batches,message",
    [
        ("pairs", "must yield \\(images, labels, sample ids\\) batches, got a list of 2 items: wrap a dataset"),
        ("uint8", "images must be a floating-point tensor in \\[0, 1\\], got torch.uint8"),
        ("int32", "labels must be an int64 tensor of class indices, got torch.int32"),
    ],
)
def test_batches_the_trainer_cannot_use_are_refused_clearly(batches, message):
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    data = {
        "pairs": DataLoader(TensorDataset(x, y), batch_size=8),
        "uint8": [((x * 255).to(torch.uint8), y, torch.arange(16))],
        "int32": [(x, y.int(), torch.arange(16))],
    }[batches]
    t = Trainer(models.create("small-cnn"), AttackConfig("pgd", eps=0.1, steps=1), epochs=1, run=quiet_run())
    with pytest.raises(TypeError, match=message):
        t.fit(data)


def test_models_fit_any_datasets_channels_size_and_statistics():
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    small = models.create("small-cnn", 10, **data_kwargs("small-cnn", colour, "cifar10"))  # hard-coded 28x28 before
    assert small(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    gray = rng.integers(0, 256, (50, 28, 28, 1), dtype=np.uint8)
    resnet = models.create("preact-resnet18", 10, **data_kwargs("preact-resnet18", gray, "fashion-mnist"))
    assert resnet.eval()(torch.rand(2, 1, 28, 28)).shape == (2, 10)  # grayscale through RGB statistics before
    assert data_kwargs("small-cnn", gray, "mnist")["mean"] == [0.1307]  # not Fashion-MNIST's
    assert data_kwargs("preact-resnet18", colour, "cifar100")["std"] == [0.2673, 0.2564, 0.2762]  # not CIFAR-10's
    measured = data_kwargs("preact-resnet18", colour, "folder")  # no published statistics: measured
    exact = colour.astype(np.float64).reshape(-1, 3) / 255
    assert np.allclose(measured["mean"], exact.mean(0), atol=1e-9) and np.allclose(measured["std"], exact.std(0))
    with pytest.raises(ValueError, match="this model takes images \\[N, 3, H, W\\] but got shape \\[2, 1, 28, 28\\]"):
        models.create("preact-resnet18")(torch.rand(2, 1, 28, 28))


def test_channel_stats_of_a_large_set_in_chunks():
    images = np.random.default_rng(1).integers(0, 256, (5000, 32, 32, 1), dtype=np.uint8)  # over one chunk
    mean, std = channel_stats(images)
    exact = images.astype(np.float64) / 255
    assert mean[0] == pytest.approx(exact.mean(), abs=1e-9) and std[0] == pytest.approx(exact.std(), abs=1e-6)


@needs_fashion
def test_preact_resnet_on_fashion_mnist_trains_and_evaluates_from_the_command(tmp_path, capsys):
    """It died with a conv shape traceback (grayscale input through RGB statistics)."""
    out = tmp_path / "run"
    argv = [
        "train",
        "--model",
        "preact-resnet18",
        "--limit",
        "96",
        "--val-n",
        "32",
        "--epochs",
        "1",
        "--steps",
        "1",
        "--eval-n",
        "16",
        "--batch-size",
        "32",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--n", "16", "--steps", "2", "--quiet"]) == 0
    assert "PGD-2" in capsys.readouterr().out


def test_image_folder_labels_follow_the_training_classes(tmp_path):
    """A class missing from test/ shifted every later label; a class that train/ lacks is refused."""
    from PIL import Image

    rng = np.random.default_rng(3)
    for split, classes in (("train", ("ant", "bee", "cat")), ("test", ("ant", "cat"))):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / split / name / "a.png")
    test = read_dataset("folder", tmp_path, train=False)
    assert test.labels.tolist() == [0, 2] and test.classes == ("ant", "bee", "cat")
    (tmp_path / "test" / "dog").mkdir()
    with pytest.raises(ValueError, match="class folders \\['dog'\\] that the training split does not have"):
        read_dataset("folder", tmp_path, train=False)
    assert from_arrays(np.zeros((1, 2, 2, 1), np.uint8), np.zeros(1)).labels.dtype == np.int64
