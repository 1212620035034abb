"""Shared fixtures: the devices to test, a small trained model, and the refusal to run
on the reference fallback."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import advprune
from advprune import models, ops
from advprune.data import read_fashion_mnist
from advprune.data.readers import FASHION_MNIST_DIR
from tests.helpers import DEVICES


def pytest_sessionstart(session: pytest.Session) -> None:
    """The suite must test the compiled kernels, never pass on the reference fallback alone."""
    if not ops.extension_loaded():
        info = advprune.build_info()
        pytest.exit(
            f"advprune's compiled extension is not loaded ({info['extension_error']}); "
            "build it first: make build (or pip install --no-build-isolation -e .)",
            returncode=3,
        )


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def trained():
    """A small CNN trained for a few hundred steps on real Fashion-MNIST (or random data without it)."""
    torch.manual_seed(0)
    try:
        data = read_fashion_mnist(FASHION_MNIST_DIR)
        x = torch.from_numpy(data.images[:1024].copy()).permute(0, 3, 1, 2).float() / 255
        y = torch.from_numpy(data.labels[:1024].copy())
    except FileNotFoundError:
        x, y = torch.rand(1024, 1, 28, 28), torch.randint(0, 10, (1024,))
    model = models.create("small-cnn")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(4):
        for i in range(0, 1024, 128):
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + 128]), y[i : i + 128]).backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), x[:128], y[:128]
