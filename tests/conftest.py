"""Shared fixtures: the devices to test, and the refusal to run on the fallback."""

from __future__ import annotations

import pytest

import advprune
from advprune import ops
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
