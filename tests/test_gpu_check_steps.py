"""The GPU check's --only: the steps a short lease asks for, in the check's order, and a clear refusal of a
name it does not know (a typo must not cost a device call)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_picks_the_named_steps_in_the_checks_order():
    check = gpu_check()
    assert check.steps_list("op, cuda") == ["cuda tests", "op benchmark"]
    assert check.chosen_steps(check.steps_list("cifar-10")) == ["environment", "build", "cifar-10 runs"]


def test_without_only_every_step_runs_in_order():
    check = gpu_check()
    assert check.chosen_steps(None) == list(check.STEPS)


@pytest.mark.parametrize("text", ["opp", "op,build", ","])
def test_only_refuses_a_name_it_does_not_know(text):
    with pytest.raises(
        argparse.ArgumentTypeError, match="choose from fashion-mnist, cuda, error, op, attack, cifar-10"
    ):
        gpu_check().steps_list(text)
